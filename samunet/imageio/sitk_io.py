"""NIfTI / NRRD / MHA through SimpleITK, keeping spacing, origin and direction."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from samunet.imageio.base import (
    SPACING_2D_SLICE_AXIS,
    ImageIO,
    ImageReadError,
    as_label_array,
    check_finite,
    check_memory_budget,
)
from samunet.utilities.file_io import atomic_path


def _suffix(file: str | os.PathLike) -> str:
    name = Path(file).name.lower()
    for ending in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".gipl.gz", ".gipl"):
        if name.endswith(ending):
            return ending
    return Path(file).suffix


def check_nifti_gz_complete(path: Path) -> None:
    """Refuse a truncated ``.nii.gz``: SimpleITK reads it silently and fills the rest with zeros.

    Cheap first test: the gzip trailer stores the uncompressed size (mod 2**32), which should
    equal the header's data offset plus the voxel data size. Only when it does not (or the
    header cannot be parsed) is the whole stream decompressed (CRC-checked) to decide, so
    valid files are never refused.
    """
    import gzip
    import zlib

    import nibabel as nib

    try:
        header = nib.load(str(path)).header
        offset = int(header["vox_offset"])
        offset = max(offset, int(header["sizeof_hdr"]) + 4)  # vox_offset 0 means "right after the header"
        expected = offset + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    except Exception:  # header unreadable (e.g. cut inside it): decide from the gzip stream alone
        expected = None
    if expected is not None and path.stat().st_size >= 4:
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            isize = int.from_bytes(f.read(4), "little")
        if isize == expected % 2**32:
            return
    try:
        n = 0
        with gzip.open(path, "rb") as g:
            while chunk := g.read(1 << 22):
                n += len(chunk)
    except (OSError, EOFError, zlib.error) as e:
        raise ImageReadError(
            f"{path}: the file is truncated or corrupt (its gzip stream is damaged: {e}). Re-export or re-copy it."
        ) from None
    if expected is not None and n < expected:
        raise ImageReadError(
            f"{path}: the file is truncated or corrupt (its compressed stream does not hold the "
            f"{expected} bytes its header announces). Re-export or re-copy it."
        )


def check_nifti_complete(path: Path) -> None:
    """Refuse an uncompressed ``.nii`` shorter than its header announces (SimpleITK zero-fills it)."""
    import nibabel as nib

    try:
        header = nib.load(str(path)).header
        offset = max(int(header["vox_offset"]), int(header["sizeof_hdr"]) + 4)
        expected = offset + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    except Exception:  # not parseable: SimpleITK's own error is clearer
        return
    size = path.stat().st_size
    if size < expected:
        raise ImageReadError(
            f"{path}: the file is truncated ({size} bytes, its header announces {expected}). Re-export or re-copy it."
        )


def read_sitk(file: str | os.PathLike) -> sitk.Image:
    path = Path(file)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found.")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes). Re-export or re-copy it.")
    if path.name.lower().endswith(".nii.gz"):
        sibling = path.with_name(path.name[: -len(".gz")])
        if sibling.exists():
            # ITK's NIfTI reader, asked for X.nii.gz, reads the voxels of X.nii when that exists
            raise ImageReadError(
                f"{path}: {sibling.name} lies beside it, and SimpleITK would silently read that file's voxels "
                f"instead. Remove or rename {sibling.name}."
            )
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()  # the header only
        check_memory_budget(path, reader.GetSize()[::-1], reader.GetNumberOfComponents())
        if path.name.lower().endswith(".nii.gz"):
            check_nifti_gz_complete(path)
        elif path.name.lower().endswith(".nii"):
            check_nifti_complete(path)
        return reader.Execute()
    except RuntimeError as e:
        if isinstance(e, ImageReadError):
            raise
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown error"
        raise ImageReadError(
            f"{path}: could not be read ({first}). The file is corrupt or truncated: re-export or re-copy it."
        ) from None


def geometry_of(img: sitk.Image) -> dict:
    return {
        "spacing": list(img.GetSpacing()),
        "origin": list(img.GetOrigin()),
        "direction": list(img.GetDirection()),
        "dimension": img.GetDimension(),
    }


class SimpleITKIO(ImageIO):
    supported_file_endings = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")

    def _read_one(self, file: str | os.PathLike) -> tuple[np.ndarray, dict]:
        img = read_sitk(file)
        dim = img.GetDimension()
        ncomp = img.GetNumberOfComponentsPerPixel()
        arr = sitk.GetArrayFromImage(img)
        if dim == 4:
            raise ImageReadError(
                f"{file}: is a 4D image {tuple(img.GetSize())}. samunet wants one file per channel "
                "(CASE_0000, CASE_0001, ...): split it, e.g. with samunet_convert_msd."
            )
        if dim not in (2, 3):
            raise ImageReadError(f"{file}: has {dim} dimensions; only 2D and 3D images are supported.")
        if ncomp > 1:
            # vector pixels (e.g. an RGB .nii / .mha): channels last -> separate channels
            arr = np.moveaxis(arr, -1, 0)
        else:
            arr = arr[None]
        if dim == 2:
            arr = arr[:, None]  # (C, 1, Y, X)
            sp = img.GetSpacing()
            spacing = [SPACING_2D_SLICE_AXIS, float(sp[1]), float(sp[0])]
        else:
            spacing = [float(s) for s in img.GetSpacing()[::-1]]
        return arr, {"spacing": spacing, "sitk_geometry": geometry_of(img)}

    def read_images(self, files: Sequence[str | os.PathLike]) -> tuple[np.ndarray, dict]:
        arrays, props = [], None
        for f in files:
            arr, p = self._read_one(f)
            if props is None:
                props = p
            else:
                if arr.shape[1:] != arrays[0].shape[1:]:
                    raise ImageReadError(
                        f"{f}: shape {arr.shape[1:]} differs from {files[0]} {arrays[0].shape[1:]}. "
                        "All channel files of a case must have the same shape."
                    )
                if not np.allclose(p["spacing"], props["spacing"], rtol=1e-3, atol=1e-5):
                    raise ImageReadError(
                        f"{f}: spacing {p['spacing']} differs from {files[0]} {props['spacing']}. "
                        "Resample the channels onto one grid."
                    )
            arrays.append(arr.astype(np.float32, copy=False))
        data = np.concatenate(arrays, 0)
        for f, a in zip(files, arrays):
            check_finite(a, f)
        props["io"] = self.name()
        return data, props

    def read_seg(self, file: str | os.PathLike) -> tuple[np.ndarray, dict]:
        arr, props = self._read_one(file)
        if arr.shape[0] != 1:
            raise ImageReadError(f"{file}: label map has {arr.shape[0]} components per voxel; expected one.")
        props["io"] = self.name()
        return as_label_array(arr, file), props

    def write_seg(self, seg: np.ndarray, file: str | os.PathLike, properties: dict) -> None:
        geo = properties["sitk_geometry"]
        seg = np.asarray(seg)
        if geo["dimension"] == 2:
            if seg.ndim == 3:
                assert seg.shape[0] == 1, f"2D geometry but seg has shape {seg.shape}"
                seg = seg[0]
        dtype = np.uint8 if seg.size == 0 or (seg.min() >= 0 and seg.max() < 256) else np.int16
        img = sitk.GetImageFromArray(seg.astype(dtype, copy=False))
        img.SetSpacing(geo["spacing"])
        img.SetOrigin(geo["origin"])
        img.SetDirection(geo["direction"])
        with atomic_path(file, suffix=_suffix(file)) as tmp:
            sitk.WriteImage(img, str(tmp), useCompression=True)
