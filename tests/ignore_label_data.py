"""A synthetic raw dataset with nnU-Net v2's ``ignore`` label (shared by planning and training tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from conftest import make_synthetic_raw

IGNORE = 2


def make_ignore_raw(raw_root: Path, dataset_id: int = 651, n_cases: int = 6, shape=(6, 64, 64),
                    domains: bool = False) -> Path:
    """:func:`make_synthetic_raw` (bright blob = label 1) plus unannotated pixels (label 2 =
    ``ignore``): a 3-row band through the blob's centre across the whole slice, and a bright
    blob-like square in a corner that nobody annotated. Trained as a class, or as background,
    the ignore pixels would teach the network something false."""
    folder = make_synthetic_raw(raw_root, dataset_id, n_cases=n_cases, shape=shape, domains=domains)
    for lab_file in sorted((folder / "labelsTr").glob("*.nii.gz")):
        case = lab_file.name[: -len(".nii.gz")]
        img_file = folder / "imagesTr" / f"{case}_0000.nii.gz"
        lab_img, img_img = sitk.ReadImage(str(lab_file)), sitk.ReadImage(str(img_file))
        lab, img = sitk.GetArrayFromImage(lab_img), sitk.GetArrayFromImage(img_img)
        ys = np.nonzero(lab.any(axis=(0, 2)))[0]
        cy = int(ys.mean())
        lab[:, cy - 1:cy + 2, :] = IGNORE
        lab[:, 2:10, 54:62] = IGNORE
        img[:, 2:10, 54:62] += 80  # looks like the blob
        for arr, ref, f in ((lab, lab_img, lab_file), (img.astype(np.float32), img_img, img_file)):
            out = sitk.GetImageFromArray(arr)
            out.CopyInformation(ref)
            sitk.WriteImage(out, str(f))
    dj = json.loads((folder / "dataset.json").read_text())
    dj["labels"] = {"background": 0, "blob": 1, "ignore": IGNORE}
    (folder / "dataset.json").write_text(json.dumps(dj))
    return folder
