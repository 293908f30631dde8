r"""Convert folders of 2D images and masks (PNG, JPEG, BMP, TIFF) into a samunet raw dataset.

Layout: every immediate subfolder of the input is one domain (site); below it, every
folder named ``image``/``images`` with a sibling ``mask``/``masks`` holds pairs::

    ProstateSlice/BIDMC/train/image/00_00.png   ProstateSlice/BIDMC/train/mask/00_00.png

If the input itself holds ``image(s)``/``mask(s)`` it is one domain named after the folder.
Pairs match by stem, else by stem + a suffix such as ``-mask``/``_seg``, else (one file in
each folder) by folder. Case id = ``domain_<relative folders>_<image stem>``, e.g.
``BIDMC_train_00_00``. Images are written losslessly as PNG (``CASE_0000.png``, RGB in one
file), masks as ``labelsTr/CASE.png``.

Slices of one patient (or frames of one video) must stay on one side of a split, so the
converter can record ``groups`` in dataset.json: ``--group_pattern`` takes the patient part
of each image's stem (first capture group, or the whole match) and prefixes it with the
case's folders (``BIDMC/train/image/00_07.png`` with ``'^(\d+)_'`` -> group
``BIDMC_train_00``); ``--groups`` reads ``case,group`` rows from a CSV::

    samunet_convert_2d_folder -i ProstateSlice/ -d 502 -n ProstateSites --invert_masks --group_pattern '^(\d+)_'
    samunet_convert_2d_folder -i Fundus/ -d 503 -n Fundus --label_map 255:0,128:1,0:2 --label_names disc,cup
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from samunet.dataset_conversion.common import (
    ConversionError,
    assign_case_ids,
    case_name_lookup,
    compile_group_pattern,
    group_from_pattern,
    list_files,
    read_groups_csv,
    run_cli,
    staged_dataset_folder,
    strip_ending,
    target_dataset_folder,
)
from samunet.dataset_conversion.dataset_json import generate_dataset_json
from samunet.dataset_conversion.mask_values import (_grey_mask, _n_clusters,
                                                      _suggest_label_map, map_labels, parse_label_map)
from samunet.imageio.natural_image_io import read_natural_image
from samunet.utilities.file_io import atomic_path
from samunet.utilities.progress import progress

logger = logging.getLogger(__name__)

ENDINGS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IMAGE_DIR_NAMES = ("image", "images")
MASK_DIR_NAMES = ("mask", "masks")
MASK_SUFFIX_WORDS = (
    "mask", "masks", "seg", "segmentation", "label", "labels", "gt", "annotation", "anno", "manual", "msk",
)
_SEPARATORS = "-_. "


# ----------------------------------------------------------------------------- discovery

def _is_named(p: Path, names: tuple[str, ...]) -> bool:
    return p.is_dir() and p.name.lower() in names


def _sibling_mask_dir(image_dir: Path) -> Path | None:
    found = [p for p in sorted(image_dir.parent.iterdir()) if _is_named(p, MASK_DIR_NAMES)]
    if len(found) > 1:
        raise ConversionError(f"{image_dir.parent}: has several mask folders ({', '.join(p.name for p in found)}); keep one.")
    return found[0] if found else None


def find_folder_pairs(input_dir: Path) -> list[tuple[str, Path, Path, Path]]:
    """``[(domain, domain_root, image_dir, mask_dir)]`` in sorted order."""
    if not input_dir.is_dir():
        raise ConversionError(f"{input_dir}: input folder not found.")
    if any(_is_named(p, IMAGE_DIR_NAMES) for p in input_dir.iterdir()):
        domains = [(input_dir.name, input_dir)]
    else:
        domains = [(p.name, p) for p in sorted(input_dir.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    out, orphans = [], []
    for domain, root in domains:
        image_dirs = sorted(
            p for p in [root, *root.rglob("*")]
            if _is_named(p, IMAGE_DIR_NAMES) and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        if not image_dirs:
            logger.warning("%s: no 'image' or 'images' folder found; skipping this folder (domain %r)", root, domain)
            continue
        for img_dir in image_dirs:
            mask_dir = _sibling_mask_dir(img_dir)
            if mask_dir is None:
                orphans.append(str(img_dir))
            else:
                out.append((domain, root, img_dir, mask_dir))
    if orphans:
        raise ConversionError(
            "image folders without a sibling 'mask' or 'masks' folder: " + ", ".join(orphans)
            + ". Add the masks or move those images out of the input folder."
        )
    if not out:
        raise ConversionError(
            f"{input_dir}: found no image/mask folder pairs. Expected <domain>/.../image(s)/ + mask(s)/ "
            "or image(s)/ + mask(s)/ directly in the input folder."
        )
    return out


def _files_by_stem(folder: Path) -> dict[str, Path]:
    files = list_files(folder, ENDINGS)
    by_stem: dict[str, list[Path]] = {}
    for f in files:
        by_stem.setdefault(strip_ending(f, ENDINGS), []).append(f)
    dup = [fs for fs in by_stem.values() if len(fs) > 1]
    if dup:
        raise ConversionError(
            f"{folder}: several files share a name: " + "; ".join(", ".join(p.name for p in fs) for fs in dup)
            + ". Keep one file per case."
        )
    return {s: fs[0] for s, fs in by_stem.items()}


def _mask_suffix_match(image_stem: str, mask_stem: str) -> bool:
    if not mask_stem.startswith(image_stem) or len(mask_stem) <= len(image_stem) + 1:
        return False
    rest = mask_stem[len(image_stem):]
    return rest[0] in _SEPARATORS and rest[1:].lower() in MASK_SUFFIX_WORDS


def pair_folder(image_dir: Path, mask_dir: Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Pair files of one image/mask folder pair; returns pairs and descriptions of unpaired files."""
    images = _files_by_stem(image_dir)
    masks = _files_by_stem(mask_dir)
    pairs: dict[str, Path] = {}
    free_masks = dict(masks)
    for stem in images:  # 1. same stem
        if stem in free_masks:
            pairs[stem] = free_masks.pop(stem)
    for stem in images:  # 2. stem + separator + mask word
        if stem in pairs:
            continue
        cands = [m for m in free_masks if _mask_suffix_match(stem, m)]
        if len(cands) > 1:
            raise ConversionError(
                f"{images[stem]}: several possible masks: {', '.join(free_masks[c].name for c in cands)}. Keep one."
            )
        if cands:
            pairs[stem] = free_masks.pop(cands[0])
    left_images = [s for s in images if s not in pairs]
    if len(images) == 1 and len(masks) == 1 and len(left_images) == 1 and len(free_masks) == 1:
        (stem,), (mstem,) = left_images, list(free_masks)
        logger.warning(
            "%s and %s have different names but are the only files in their folders: pairing them by folder",
            images[stem], masks[mstem],
        )
        pairs[stem] = free_masks.pop(mstem)
        left_images = []
    unpaired = [f"image {images[s]} (no mask)" for s in left_images]
    unpaired += [f"mask {m} (no image)" for m in free_masks.values()]
    return [(images[s], pairs[s]) for s in sorted(pairs)], unpaired


# ----------------------------------------------------------------------------- images

def _image_for_png(arr: np.ndarray, file: Path) -> np.ndarray:
    if arr.dtype == np.uint8 or (arr.dtype == np.uint16 and arr.ndim == 2):
        return arr
    if np.issubdtype(arr.dtype, np.integer) and arr.size and arr.min() >= 0:
        if arr.max() < 256:
            return arr.astype(np.uint8)
        if arr.ndim == 2 and arr.max() <= 65535:
            return arr.astype(np.uint16)
    raise ConversionError(
        f"{file}: pixel type {arr.dtype} (range {arr.min()}..{arr.max()}) cannot be stored losslessly as PNG. "
        "Convert 3D/float data with samunet_convert_nifti_pairs instead."
    )


def _save_png(arr: np.ndarray, file: Path) -> None:
    with atomic_path(file, suffix=".png") as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


# ----------------------------------------------------------------------------- main

def convert_2d_folder(
    input_dir: str | Path,
    dataset_id: int,
    name: str,
    invert_masks: bool = False,
    mask_threshold: int = 127,
    label_map: str | dict | None = None,
    label_names: str | list[str] | None = None,
    overwrite: bool = False,
    groups_csv: str | Path | None = None,
    group_pattern: str | None = None,
) -> Path:
    """Convert 2D image/mask folders into ``SAMUNET_raw/DatasetXXX_Name`` and return that folder.

    ``groups_csv`` (rows ``case,group``; case = case id, image file name, stem or path relative
    to ``input_dir``) or ``group_pattern`` (regex on the image stem) fill dataset.json's ``groups``."""
    input_dir = Path(input_dir)
    if groups_csv is not None and group_pattern is not None:
        raise ConversionError("give either --groups CSV or --group_pattern REGEX, not both.")
    group_regex = compile_group_pattern(group_pattern) if group_pattern is not None else None
    target = target_dataset_folder(dataset_id, name, overwrite)
    lmap = parse_label_map(label_map)
    if isinstance(label_names, str):
        label_names = [s.strip() for s in label_names.split(",") if s.strip()]

    if lmap is not None:
        targets = sorted(set(lmap.values()))
        if targets != list(range(len(targets))) or len(targets) < 2:
            raise ConversionError(
                f"--label_map targets {targets} must be consecutive labels 0, 1, ..., K including 0 (background) "
                "and at least one foreground label."
            )
        fg_values = targets[1:]
    else:
        fg_values = [1]
    if label_names is not None:
        if len(label_names) != len(fg_values):
            raise ConversionError(
                f"--label_names gives {len(label_names)} name(s) {label_names} for {len(fg_values)} foreground "
                f"label(s) {fg_values}; give one name per foreground label in label order."
            )
        if len(set(label_names)) != len(label_names) or "background" in label_names:
            raise ConversionError(f"--label_names {label_names} must be distinct and must not include 'background'.")
        names = list(label_names)
    elif lmap is None:
        names = ["foreground"]
    else:
        names = [f"label_{k}" for k in fg_values]
    labels = {"background": 0, **dict(zip(names, fg_values))}

    # pair everything first so that all problems are reported before writing
    cases: dict[str, tuple[str, Path, Path]] = {}  # raw id -> (domain, image, mask)
    folder_prefix: dict[str, str] = {}  # raw id -> "domain_<relative folders>"
    unpaired: list[str] = []
    for domain, root, img_dir, mask_dir in find_folder_pairs(input_dir):
        pairs, bad = pair_folder(img_dir, mask_dir)
        unpaired += bad
        rel = list(img_dir.parent.relative_to(root).parts)
        for img, msk in pairs:
            raw_id = "_".join([domain, *rel, strip_ending(img, ENDINGS)])
            if raw_id in cases:
                raise ConversionError(f"{img} and {cases[raw_id][1]} give the same case id {raw_id!r}; rename one.")
            cases[raw_id] = (domain, img, msk)
            folder_prefix[raw_id] = "_".join([domain, *rel])
    if unpaired:
        raise ConversionError(
            "unpaired files (masks must have the image's name, optionally plus '-mask'/'_seg'/...):\n  "
            + "\n  ".join(unpaired)
        )
    ids = assign_case_ids(cases, what=lambda r: str(cases[r][1]))
    groups = None
    if group_regex is not None:
        groups = {
            ids[r]: f"{folder_prefix[r]}_{group_from_pattern(group_regex, strip_ending(cases[r][1], ENDINGS), cases[r][1])}"
            for r in sorted(cases)
        }
    elif groups_csv is not None:
        names = []
        for r, (_, img, _) in cases.items():
            for key in (r, ids[r], img.name, strip_ending(img, ENDINGS), img.relative_to(input_dir).as_posix()):
                names.append((key, ids[r]))
        groups = read_groups_csv(groups_csv, case_name_lookup(names))

    n_channels: dict[int, list[str]] = {}
    fg_pixels = total_pixels = 0
    hist = np.zeros(256, dtype=np.int64)
    present: set[int] = set()
    with staged_dataset_folder(target, overwrite) as out:
        (out / "imagesTr").mkdir()
        (out / "labelsTr").mkdir()
        for raw_id in progress(sorted(cases), desc="cases", unit="case", disable=len(cases) < 50):
            domain, img_file, msk_file = cases[raw_id]
            cid = ids[raw_id]
            img = _image_for_png(read_natural_image(img_file), img_file)
            nc = 1 if img.ndim == 2 else img.shape[2]
            n_channels.setdefault(nc, []).append(str(img_file))
            if len(n_channels) > 1:
                summary = "; ".join(f"{k} channel(s): {v[0]}" + (f" and {len(v) - 1} more" if len(v) > 1 else "")
                                    for k, v in sorted(n_channels.items()))
                raise ConversionError(
                    f"images in one dataset must all be grey or all RGB; found {summary}. "
                    "Convert them to one kind first."
                )
            msk = _grey_mask(read_natural_image(msk_file), msk_file)
            if msk.shape != img.shape[:2]:
                raise ConversionError(
                    f"mask {msk_file} has size {msk.shape[1]}x{msk.shape[0]} but image {img_file} has "
                    f"{img.shape[1]}x{img.shape[0]} (width x height). Masks must match their images pixel for pixel."
                )
            if lmap is not None:
                seg = map_labels(msk, lmap, msk_file)
            else:
                if msk.dtype == np.uint8:
                    hist += np.bincount(msk.ravel(), minlength=256)
                fg = msk <= mask_threshold if invert_masks else msk > mask_threshold
                fg_pixels += int(fg.sum())
                total_pixels += fg.size
                seg = fg
            present |= set(np.unique(seg).tolist())
            _save_png(img, out / "imagesTr" / f"{cid}_0000.png")
            _save_png(seg.astype(np.uint8 if max(fg_values) < 256 else np.uint16), out / "labelsTr" / f"{cid}.png")

        if lmap is None:
            frac = fg_pixels / max(total_pixels, 1)
            logger.info("foreground fraction over all masks: %.3f", frac)
            if not invert_masks and frac > 0.5:
                logger.warning(
                    "foreground (mask value > %d) covers %.0f%% of all mask pixels: the masks are probably "
                    "inverted (object = dark). If so, re-run with --invert_masks.", mask_threshold, 100 * frac,
                )
            clusters = _n_clusters(hist)
            if len(clusters) > 2:
                logger.warning(
                    "masks hold more than two distinct grey levels (about %s); they were binarised at %d. If they "
                    "encode several labels, re-run with --label_map, e.g. %s.", clusters, mask_threshold,
                    _suggest_label_map(clusters, hist),
                )
        missing = [f"{n} ({v})" for n, v in labels.items() if v not in present]
        if missing:
            logger.warning("labels never found in any mask: %s", ", ".join(missing))

        nc = next(iter(n_channels))
        channel_names = {"0": "grey"} if nc == 1 else {str(i): c for i, c in enumerate("RGBA"[:nc])}
        domains = {ids[r]: cases[r][0] for r in cases}
        generate_dataset_json(
            out,
            channel_names=channel_names,
            labels=labels,
            num_training_cases=len(cases),
            file_ending=".png",
            dataset_name=target.name,
            domains=domains,
            groups=groups,
        )
    logger.info("wrote %d cases from %d domain(s) to %s", len(cases), len(set(domains.values())), target)
    if groups:
        logger.info("groups: %d cases in %d groups (patients/sequences kept whole by the splits)",
                    len(groups), len(set(groups.values())))
    return target


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="samunet_convert_2d_folder",
        description="Convert <domain>/.../image(s)/ + mask(s)/ folders of 2D images into SAMUNET_raw/DatasetXXX_Name.",
    )
    p.add_argument("-i", "--input", required=True, help="folder of domains, or one folder holding image(s)/ and mask(s)/")
    p.add_argument("-d", "--dataset_id", required=True, type=int, help="dataset ID, 0-999")
    p.add_argument("-n", "--name", required=True, help="dataset name, e.g. ProstateSites")
    p.add_argument("--invert_masks", action="store_true",
                   help="foreground = mask value <= threshold (for masks where the object is dark)")
    p.add_argument("--mask_threshold", type=int, default=127, help="binary masks: foreground = value > this (127)")
    p.add_argument("--label_map", default=None,
                   help="map mask values to labels, e.g. 255:0,128:1,0:2 (overrides the threshold)")
    p.add_argument("--label_names", default=None, help="comma-separated names of the foreground labels, e.g. disc,cup")
    p.add_argument("--groups", default=None, metavar="CSV",
                   help="CSV with rows case,group (case id, image file name or path; group = patient or video "
                        "sequence) written to dataset.json groups")
    p.add_argument("--group_pattern", default=None, metavar="REGEX",
                   help="group = first capture group (or match) of this regex on the image stem, prefixed with "
                        "the case's folders, e.g. '^(\\d+)_' makes BIDMC/train/image/00_07.png group BIDMC_train_00")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder of this name")
    a = p.parse_args(argv)
    run_cli(lambda: convert_2d_folder(
        a.input, a.dataset_id, a.name, invert_masks=a.invert_masks, mask_threshold=a.mask_threshold,
        label_map=a.label_map, label_names=a.label_names, overwrite=a.overwrite,
        groups_csv=a.groups, group_pattern=a.group_pattern,
    ))


if __name__ == "__main__":
    main()
