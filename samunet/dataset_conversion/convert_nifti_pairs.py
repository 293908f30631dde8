r"""Convert a folder of 3D images and a folder of masks into a samunet raw dataset.

``images/CASE.nii.gz`` is paired with ``masks/CASE<suffix>.nii.gz``; the suffix is
detected when not given (``""``, ``_Segmentation``, ``_mask``, ...). Inputs may be
``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha`` or ``.mhd``; outputs are always ``.nii.gz``::

    samunet_convert_nifti_pairs -i images/ -m masks/ -d 501 -n Prostate [--domains sites.csv] [--groups patients.csv]

``--groups`` (rows ``case,group``) or ``--group_pattern`` (regex on the image stem, e.g.
``'^(P\d+)_'`` for ``P07_baseline``/``P07_followup``) records which scans share a patient,
so the splits keep them together.

Result: ``SAMUNET_raw/Dataset501_Prostate/{imagesTr/CASE_0000.nii.gz, labelsTr/CASE.nii.gz, dataset.json}``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from samunet.dataset_conversion.common import (
    ConversionError,
    assign_case_ids,
    case_name_lookup,
    compile_group_pattern,
    group_from_pattern,
    list_files,
    read_domains_csv,
    read_groups_csv,
    run_cli,
    staged_dataset_folder,
    strip_ending,
    target_dataset_folder,
)
from samunet.dataset_conversion.dataset_json import generate_dataset_json
from samunet.imageio.base import as_label_array
from samunet.imageio.sitk_io import read_sitk
from samunet.utilities.file_io import atomic_path
from samunet.utilities.progress import progress

logger = logging.getLogger(__name__)

ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
KNOWN_SUFFIXES = (
    "_Segmentation", "_segmentation", "_seg", "_Seg", "_SEG", "_mask", "_Mask", "-mask", "_masks",
    "_label", "_labels", "_gt", "_GT", "_msk", "-seg", "-label",
)
# geometry differences up to this are float noise from different writers
SPACING_RTOL = 1e-4
ORIGIN_ATOL = 1e-3  # mm
DIRECTION_ATOL = 1e-4


def _scan(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise ConversionError(f"{folder}: {what} folder not found.")
    files = list_files(folder, ENDINGS)
    by_stem: dict[str, list[Path]] = {}
    for f in files:
        by_stem.setdefault(strip_ending(f, ENDINGS), []).append(f)
    dup = {s: fs for s, fs in by_stem.items() if len(fs) > 1}
    if dup:
        raise ConversionError(
            f"{folder}: several {what} files share a name: "
            + "; ".join(", ".join(p.name for p in fs) for fs in dup.values())
            + ". Keep one file per case."
        )
    if not by_stem:
        raise ConversionError(f"{folder}: no {what} files ending in {', '.join(ENDINGS)} found.")
    others = [p.name for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".") and p not in files]
    if others:
        logger.warning("%s: ignoring %d file(s) that are not images: %s", folder, len(others), ", ".join(others[:5]))
    return {s: fs[0] for s, fs in by_stem.items()}


def detect_mask_suffix(image_stems: set[str], mask_stems: set[str]) -> str:
    """The suffix ``s`` such that ``image_stem + s`` names the most masks (``""`` preferred on ties)."""
    if mask_stems <= image_stems or image_stems <= mask_stems:
        return ""
    counts: Counter[str] = Counter()
    for m in mask_stems:
        for i in image_stems:
            if m.startswith(i):
                counts[m[len(i):]] += 1
    if not counts:
        return ""
    return max(counts, key=lambda s: (counts[s], s == "", s in KNOWN_SUFFIXES, -len(s)))


def pair_files(images_dir: Path, masks_dir: Path, mask_suffix: str | None) -> tuple[dict[str, tuple[Path, Path]], str]:
    """``{stem: (image, mask)}`` and the suffix used; errors list every unpaired file."""
    images = _scan(images_dir, "image")
    masks = _scan(masks_dir, "mask")
    if mask_suffix is None:
        mask_suffix = detect_mask_suffix(set(images), set(masks))
        logger.info("mask suffix detected: %r", mask_suffix)
    pairs, no_mask = {}, []
    for stem, img in images.items():
        m = masks.get(stem + mask_suffix)
        if m is None:
            no_mask.append(img.name)
        else:
            pairs[stem] = (img, m)
    used = {p[1] for p in pairs.values()}
    no_image = [m.name for m in masks.values() if m not in used]
    if no_mask or no_image:
        msg = []
        if no_mask:
            msg.append(f"images without a mask named <case>{mask_suffix}<ending> in {masks_dir}: {', '.join(no_mask)}")
        if no_image:
            msg.append(f"masks without an image in {images_dir}: {', '.join(no_image)}")
        raise ConversionError(
            "; ".join(msg) + ". Add the missing files, remove the extra ones, or give the right --mask_suffix."
        )
    return pairs, mask_suffix


def _check_geometry(img: sitk.Image, msk: sitk.Image, img_file: Path, msk_file: Path) -> None:
    problems = []
    if img.GetDimension() != msk.GetDimension():
        problems.append(f"dimension {msk.GetDimension()} vs {img.GetDimension()}")
    elif tuple(img.GetSize()) != tuple(msk.GetSize()):
        problems.append(f"size {msk.GetSize()} vs {img.GetSize()}")
    else:
        if not np.allclose(msk.GetSpacing(), img.GetSpacing(), rtol=SPACING_RTOL, atol=1e-6):
            problems.append(f"spacing {msk.GetSpacing()} vs {img.GetSpacing()}")
        if not np.allclose(msk.GetOrigin(), img.GetOrigin(), rtol=0, atol=ORIGIN_ATOL):
            problems.append(f"origin {msk.GetOrigin()} vs {img.GetOrigin()}")
        if not np.allclose(msk.GetDirection(), img.GetDirection(), rtol=0, atol=DIRECTION_ATOL):
            problems.append(f"direction {msk.GetDirection()} vs {img.GetDirection()}")
    if problems:
        raise ConversionError(
            f"mask {msk_file} does not match image {img_file}: " + "; ".join(problems)
            + ". Resample the mask onto the image grid (nearest neighbour) or fix its header."
        )


def _read_header(file: Path) -> "_HeaderOnly":
    """The geometry of ``file`` without decoding its pixels."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(file))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        read_sitk(file)  # raises a clear ImageReadError (missing, empty, corrupt)
        raise
    return _HeaderOnly(reader)


class _HeaderOnly:
    """Duck-typed geometry view of an ImageFileReader (avoids decoding the pixels)."""

    def __init__(self, reader: sitk.ImageFileReader):
        self._r = reader

    def GetDimension(self):
        return self._r.GetDimension()

    def GetSize(self):
        return self._r.GetSize()

    def GetSpacing(self):
        return self._r.GetSpacing()

    def GetOrigin(self):
        return self._r.GetOrigin()

    def GetDirection(self):
        return self._r.GetDirection()

    def GetNumberOfComponentsPerPixel(self):
        return self._r.GetNumberOfComponents()


def convert_nifti_pairs(
    images_dir: str | Path,
    masks_dir: str | Path,
    dataset_id: int,
    name: str,
    mask_suffix: str | None = None,
    domains_csv: str | Path | None = None,
    overwrite: bool = False,
    modality: str = "MRI",
    label_names: list[str] | None = None,
    groups_csv: str | Path | None = None,
    group_pattern: str | None = None,
) -> Path:
    """Convert image/mask pairs into ``SAMUNET_raw/DatasetXXX_Name`` and return that folder.

    ``groups_csv`` (rows ``case,group``) or ``group_pattern`` (regex on the image stem; first
    capture group or whole match) fill dataset.json's ``groups`` (several scans of one patient)."""
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    if groups_csv is not None and group_pattern is not None:
        raise ConversionError("give either --groups CSV or --group_pattern REGEX, not both.")
    group_regex = compile_group_pattern(group_pattern) if group_pattern is not None else None
    if images_dir.resolve() == masks_dir.resolve():
        raise ConversionError(
            f"images and masks are both in {images_dir}: put them in two folders (-i images/ -m masks/)."
        )
    target = target_dataset_folder(dataset_id, name, overwrite)
    pairs, suffix = pair_files(images_dir, masks_dir, mask_suffix)
    ids = assign_case_ids(pairs, what=lambda s: str(pairs[s][0]))

    domains = None
    if domains_csv is not None:
        lookup = {**{s: c for s, c in ids.items()}, **{c: c for c in ids.values()}}
        domains = read_domains_csv(domains_csv, lookup)
    groups = None
    if group_regex is not None:
        groups = {ids[s]: group_from_pattern(group_regex, s, pairs[s][0]) for s in sorted(pairs)}
    elif groups_csv is not None:
        names = [(key, ids[s]) for s in pairs for key in (s, ids[s], pairs[s][0].name)]
        groups = read_groups_csv(groups_csv, case_name_lookup(names))

    label_values: set[int] = set()
    with staged_dataset_folder(target, overwrite) as out:
        (out / "imagesTr").mkdir()
        (out / "labelsTr").mkdir()
        for stem in progress(sorted(pairs), desc="cases", unit="case", disable=len(pairs) < 10):
            img_file, msk_file = pairs[stem]
            cid = ids[stem]
            img_hdr = _read_header(img_file)
            if img_hdr.GetDimension() == 4:
                raise ConversionError(
                    f"{img_file}: is a 4D image {tuple(img_hdr.GetSize())}. Split it into one 3D file per channel "
                    "(samunet_convert_msd does this for Medical Segmentation Decathlon folders)."
                )
            if img_hdr.GetDimension() not in (2, 3):
                raise ConversionError(f"{img_file}: has {img_hdr.GetDimension()} dimensions; expected 3D (or 2D).")
            msk = read_sitk(msk_file)
            _check_geometry(img_hdr, msk, img_file, msk_file)
            if msk.GetNumberOfComponentsPerPixel() != 1:
                raise ConversionError(f"{msk_file}: mask has {msk.GetNumberOfComponentsPerPixel()} components per voxel; expected 1.")
            arr = as_label_array(sitk.GetArrayFromImage(msk), msk_file)
            values = set(np.unique(arr).tolist())
            label_values |= values

            out_img = out / "imagesTr" / f"{cid}_0000.nii.gz"
            if img_file.name.lower().endswith(".nii.gz"):
                with atomic_path(out_img, suffix=".nii.gz") as tmp:
                    shutil.copyfile(img_file, tmp)
            else:
                img = read_sitk(img_file)
                with atomic_path(out_img, suffix=".nii.gz") as tmp:
                    sitk.WriteImage(img, str(tmp), useCompression=True)

            out_seg = out / "labelsTr" / f"{cid}.nii.gz"
            exact = (
                msk.GetSpacing() == img_hdr.GetSpacing()
                and msk.GetOrigin() == img_hdr.GetOrigin()
                and msk.GetDirection() == img_hdr.GetDirection()
            )
            if exact and msk_file.name.lower().endswith(".nii.gz") and np.issubdtype(
                sitk.GetArrayViewFromImage(msk).dtype, np.integer
            ):
                with atomic_path(out_seg, suffix=".nii.gz") as tmp:
                    shutil.copyfile(msk_file, tmp)
                continue
            # rewrite the label with the image's geometry (removes float noise in the mask header)
            dtype = np.uint8 if arr.max(initial=0) < 256 else np.int16
            lab = sitk.GetImageFromArray(arr.astype(dtype))
            lab.SetSpacing(img_hdr.GetSpacing())
            lab.SetOrigin(img_hdr.GetOrigin())
            lab.SetDirection(img_hdr.GetDirection())
            with atomic_path(out_seg, suffix=".nii.gz") as tmp:
                sitk.WriteImage(lab, str(tmp), useCompression=True)

        values = sorted(label_values)
        if values != list(range(len(values))) or len(values) < 2:
            raise ConversionError(
                f"mask values across {masks_dir} are {values}; they must be consecutive integers 0, 1, ..., K "
                "with 0 = background and at least one foreground label. Renumber the masks."
            )
        if label_names is not None and len(label_names) != len(values) - 1:
            raise ConversionError(
                f"--label_names gives {len(label_names)} names but the masks hold {len(values) - 1} foreground "
                f"labels {values[1:]}."
            )
        names = label_names or [f"label_{k}" for k in values[1:]]
        labels = {"background": 0, **{n: k for n, k in zip(names, values[1:])}}
        generate_dataset_json(
            out,
            channel_names={"0": modality},
            labels=labels,
            num_training_cases=len(pairs),
            file_ending=".nii.gz",
            dataset_name=target.name,
            domains=domains,
            groups=groups,
        )
    logger.info("wrote %d cases to %s (mask suffix %r, labels %s)", len(pairs), target, suffix, labels)
    return target


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="samunet_convert_nifti_pairs",
        description="Convert images/CASE.nii.gz + masks/CASE<suffix>.nii.gz into SAMUNET_raw/DatasetXXX_Name.",
    )
    p.add_argument("-i", "--images", required=True, help="folder of images (.nii.gz, .nii, .nrrd, .mha)")
    p.add_argument("-m", "--masks", required=True, help="folder of masks")
    p.add_argument("-d", "--dataset_id", required=True, type=int, help="dataset ID, 0-999")
    p.add_argument("-n", "--name", required=True, help="dataset name, e.g. Prostate")
    p.add_argument("--mask_suffix", default=None,
                   help="mask name = case + suffix (e.g. _Segmentation); detected when omitted")
    p.add_argument("--domains", default=None, help="CSV with rows case,domain (header optional)")
    p.add_argument("--groups", default=None, metavar="CSV",
                   help="CSV with rows case,group (group = patient; scans of one patient stay on one side of a split)")
    p.add_argument("--group_pattern", default=None, metavar="REGEX",
                   help="group = first capture group (or match) of this regex on the image stem, e.g. '^(P\\d+)_'")
    p.add_argument("--modality", default="MRI", help="channel name for dataset.json, e.g. CT or MRI (default MRI)")
    p.add_argument("--label_names", default=None,
                   help="comma-separated names of labels 1..K, e.g. PZ,CG (default label_1, label_2, ...)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder of this name")
    a = p.parse_args(argv)
    run_cli(lambda: convert_nifti_pairs(
        a.images, a.masks, a.dataset_id, a.name, mask_suffix=a.mask_suffix, domains_csv=a.domains,
        groups_csv=a.groups, group_pattern=a.group_pattern,
        overwrite=a.overwrite, modality=a.modality,
        label_names=a.label_names.split(",") if a.label_names else None,
    ))


if __name__ == "__main__":
    main()
