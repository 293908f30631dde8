"""Convert a Medical Segmentation Decathlon task folder into a samunet (nnU-Net v2) raw dataset.

``Task05_Prostate/{dataset.json, imagesTr, labelsTr, imagesTs}`` becomes
``SAMUNET_raw/Dataset005_Prostate``: 4D images are split into one 3D file per channel
(``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ...), ``modality`` becomes ``channel_names``
and ``labels`` is inverted to ``{name: value}``::

    samunet_convert_msd -i Task05_Prostate [-d 505]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
from pathlib import Path

import SimpleITK as sitk

from samunet.dataset_conversion.common import (
    ConversionError,
    assign_case_ids,
    run_cli,
    staged_dataset_folder,
    target_dataset_folder,
)
from samunet.dataset_conversion.dataset_json import generate_dataset_json
from samunet.imageio.sitk_io import read_sitk
from samunet.utilities.file_io import atomic_path
from samunet.utilities.progress import progress

logger = logging.getLogger(__name__)

_TASK = re.compile(r"^Task(\d{1,3})_([A-Za-z0-9_\-]+)$")


def _nifti_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {
        p.name[: -len(".nii.gz")]: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name.endswith(".nii.gz") and not p.name.startswith(".")  # skips macOS ._ files
    }


def _write_channels(src: Path, out_folder: Path, case_id: str, n_channels: int) -> None:
    """Write ``case_id_XXXX.nii.gz`` for each channel of ``src`` (3D: copy, 4D: split)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(src))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        read_sitk(src)  # clear ImageReadError for missing/empty/corrupt files
        raise
    dim = reader.GetDimension()
    if dim == 3:
        if n_channels != 1:
            raise ConversionError(
                f"{src}: is 3D (one channel) but dataset.json 'modality' lists {n_channels} channels."
            )
        with atomic_path(out_folder / f"{case_id}_0000.nii.gz", suffix=".nii.gz") as tmp:
            shutil.copyfile(src, tmp)
        return
    if dim != 4:
        raise ConversionError(f"{src}: has {dim} dimensions; MSD images are 3D or 4D.")
    img = read_sitk(src)
    size = list(img.GetSize())
    if size[3] != n_channels:
        raise ConversionError(
            f"{src}: holds {size[3]} channels but dataset.json 'modality' lists {n_channels}. Fix dataset.json."
        )
    for c in range(size[3]):
        vol = sitk.Extract(img, size[:3] + [0], [0, 0, 0, c])  # collapses the 4th axis, keeps 3D geometry
        with atomic_path(out_folder / f"{case_id}_{c:04d}.nii.gz", suffix=".nii.gz") as tmp:
            sitk.WriteImage(vol, str(tmp), useCompression=True)


def convert_msd(task_folder: str | Path, dataset_id: int | None = None, overwrite: bool = False) -> Path:
    """Convert an MSD ``TaskXX_Name`` folder; the dataset ID defaults to the task number."""
    task_folder = Path(task_folder)
    m = _TASK.match(task_folder.name)
    if not m:
        raise ConversionError(
            f"{task_folder}: folder name must look like Task05_Prostate (TaskXX_Name) so the name can be derived."
        )
    name = m.group(2)
    if dataset_id is None:
        dataset_id = int(m.group(1))
    json_path = task_folder / "dataset.json"
    if not json_path.is_file():
        raise ConversionError(f"{json_path}: not found; an MSD task folder holds dataset.json, imagesTr, labelsTr.")
    try:
        with open(json_path, encoding="utf-8") as f:
            msd = json.load(f)
    except json.JSONDecodeError as e:
        raise ConversionError(f"{json_path}: is not valid JSON ({e}).") from None
    for key in ("modality", "labels"):
        if not isinstance(msd.get(key), dict) or not msd[key]:
            raise ConversionError(f'{json_path}: key "{key}" missing or empty; is this an MSD dataset.json?')
    try:
        modality = {int(k): str(v) for k, v in msd["modality"].items()}
        labels_by_value = {int(k): str(v) for k, v in msd["labels"].items()}
    except (TypeError, ValueError):
        raise ConversionError(f'{json_path}: "modality" and "labels" keys must be integers ("0", "1", ...).') from None
    if sorted(modality) != list(range(len(modality))):
        raise ConversionError(f'{json_path}: "modality" keys must be 0, 1, ... consecutively, found {sorted(modality)}.')
    if sorted(labels_by_value) != list(range(len(labels_by_value))):
        raise ConversionError(f'{json_path}: "labels" keys must be 0, 1, ... consecutively, found {sorted(labels_by_value)}.')
    labels: dict[str, int] = {}
    for v, n in sorted(labels_by_value.items()):
        if n in labels:
            n = f"{n}_{v}"
        labels[n] = v
    n_channels = len(modality)

    images = _nifti_files(task_folder / "imagesTr")
    label_files = _nifti_files(task_folder / "labelsTr")
    if not images:
        raise ConversionError(f"{task_folder / 'imagesTr'}: no .nii.gz images found.")
    no_label = sorted(s for s in images if s not in label_files)
    no_image = sorted(s for s in label_files if s not in images)
    if no_label or no_image:
        raise ConversionError(
            f"{task_folder}: "
            + "; ".join(x for x in (
                f"images without a label in labelsTr: {', '.join(no_label)}" if no_label else "",
                f"labels without an image in imagesTr: {', '.join(no_image)}" if no_image else "",
            ) if x)
            + ". Add or remove files so imagesTr and labelsTr match."
        )
    test_images = _nifti_files(task_folder / "imagesTs")
    ids = assign_case_ids(images, what=lambda s: str(images[s]))
    test_ids = assign_case_ids(test_images, what=lambda s: str(test_images[s])) if test_images else {}

    target = target_dataset_folder(dataset_id, name, overwrite)
    with staged_dataset_folder(target, overwrite) as out:
        for sub in ("imagesTr", "labelsTr"):
            (out / sub).mkdir()
        for stem in progress(sorted(images), desc="training cases", unit="case", disable=len(images) < 10):
            _write_channels(images[stem], out / "imagesTr", ids[stem], n_channels)
            with atomic_path(out / "labelsTr" / f"{ids[stem]}.nii.gz", suffix=".nii.gz") as tmp:
                shutil.copyfile(label_files[stem], tmp)
        if test_images:
            (out / "imagesTs").mkdir()
            for stem in progress(sorted(test_images), desc="test cases", unit="case", disable=len(test_images) < 10):
                _write_channels(test_images[stem], out / "imagesTs", test_ids[stem], n_channels)
        generate_dataset_json(
            out,
            channel_names={str(k): v for k, v in sorted(modality.items())},
            labels=labels,
            num_training_cases=len(images),
            file_ending=".nii.gz",
            dataset_name=target.name,
            description=msd.get("description") or None,
            reference=msd.get("reference") or None,
            licence=msd.get("licence") or msd.get("license") or None,
        )
    logger.info("wrote %d training and %d test cases to %s", len(images), len(test_images), target)
    return target


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="samunet_convert_msd",
        description="Convert a Medical Segmentation Decathlon TaskXX_Name folder into SAMUNET_raw/DatasetXXX_Name.",
    )
    p.add_argument("-i", "--input", required=True, help="MSD task folder, e.g. Task05_Prostate")
    p.add_argument("-d", "--dataset_id", type=int, default=None, help="dataset ID (default: the task number)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder of this name")
    a = p.parse_args(argv)
    run_cli(lambda: convert_msd(a.input, a.dataset_id, overwrite=a.overwrite))


if __name__ == "__main__":
    main()
