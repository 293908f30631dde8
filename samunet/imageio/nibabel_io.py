"""NIfTI through nibabel (the alternative reader; select it with
``"overwrite_image_reader_writer": "NibabelIO"`` in dataset.json).

Arrays are transposed to SimpleITK's array order ``(Z, Y, X)`` so that both readers
give the same arrays; the affine is kept to write predictions back unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from samunet.imageio.base import (
    SPACING_2D_SLICE_AXIS,
    ImageIO,
    ImageReadError,
    as_label_array,
    check_finite,
    check_memory_budget,
)
from samunet.utilities.file_io import atomic_path


class NibabelIO(ImageIO):
    supported_file_endings = (".nii.gz", ".nii")

    def _read_one(self, file: str | os.PathLike) -> tuple[np.ndarray, dict]:
        path = Path(file)
        if not path.is_file():
            raise ImageReadError(f"{path}: file not found.")
        if path.stat().st_size == 0:
            raise ImageReadError(f"{path}: file is empty (0 bytes). Re-export or re-copy it.")
        try:
            img = nib.load(str(path))
            check_memory_budget(path, img.header.get_data_shape()[::-1])
            arr = np.asanyarray(img.dataobj)
            if path.name.endswith(".gz"):
                # nibabel reads only the bytes it needs: a stream cut inside its gzip trailer reads
                # "fine"; the trailer/CRC check refuses it as the SimpleITK reader does
                from samunet.imageio.sitk_io import check_nifti_gz_complete

                check_nifti_gz_complete(path)
        except ImageReadError:
            raise
        except Exception as e:  # nibabel raises many types for corrupt files
            raise ImageReadError(
                f"{path}: could not be read ({type(e).__name__}: {e}). The file is corrupt or truncated."
            ) from None
        zooms = [float(z) for z in img.header.get_zooms()]
        if arr.ndim == 4:
            raise ImageReadError(
                f"{path}: is a 4D image {arr.shape}. Split it into one file per channel (CASE_0000, CASE_0001, ...)."
            )
        if arr.ndim == 2:
            arr = arr.T[None, None]
            spacing = [SPACING_2D_SLICE_AXIS, zooms[1], zooms[0]]
        elif arr.ndim == 3:
            arr = arr.transpose(2, 1, 0)[None]
            spacing = zooms[:3][::-1]
        else:
            raise ImageReadError(f"{path}: has {arr.ndim} dimensions; only 2D and 3D images are supported.")
        props = {
            "spacing": spacing,
            "nibabel_affine": np.asarray(img.affine).tolist(),
            "nibabel_ndim": int(img.ndim),
        }
        return arr, props

    def read_images(self, files: Sequence[str | os.PathLike]) -> tuple[np.ndarray, dict]:
        arrays, props = [], None
        for f in files:
            arr, p = self._read_one(f)
            if props is None:
                props = p
            elif arr.shape[1:] != arrays[0].shape[1:]:
                raise ImageReadError(f"{f}: shape {arr.shape[1:]} differs from {files[0]} {arrays[0].shape[1:]}.")
            check_finite(arr, f)
            arrays.append(arr.astype(np.float32))
        props["io"] = self.name()
        return np.concatenate(arrays, 0), props

    def read_seg(self, file: str | os.PathLike) -> tuple[np.ndarray, dict]:
        arr, props = self._read_one(file)
        props["io"] = self.name()
        return as_label_array(arr, file), props

    def write_seg(self, seg: np.ndarray, file: str | os.PathLike, properties: dict) -> None:
        seg = np.asarray(seg)
        if properties["nibabel_ndim"] == 2:
            out = seg.reshape(seg.shape[-2:]).T
        else:
            out = seg.transpose(2, 1, 0)
        dtype = np.uint8 if out.size == 0 or (out.min() >= 0 and out.max() < 256) else np.int16
        img = nib.Nifti1Image(out.astype(dtype), np.asarray(properties["nibabel_affine"]))
        name = Path(file).name
        suffix = ".nii.gz" if name.endswith(".nii.gz") else ".nii"
        with atomic_path(file, suffix=suffix) as tmp:
            nib.save(img, str(tmp))
