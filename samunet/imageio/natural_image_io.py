"""PNG / JPEG / BMP / TIFF 2D images through Pillow.

Grey images give one channel, RGB three (one file holds all three, as in nnU-Net's
natural-image datasets). Spacing is 1 in-plane and 999 on the absent slice axis.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from samunet.imageio.base import SPACING_2D_SLICE_AXIS, ImageIO, ImageReadError, as_label_array, check_memory_budget
from samunet.utilities.file_io import atomic_path


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"  # the last chunk's type and CRC


def _check_png(path: Path) -> None:
    """Refuse what Pillow would read wrongly without a word.

    * a PNG cut after its image data but before the closing IEND chunk (Pillow reads it);
    * a 16-bit RGB(A) or grey+alpha PNG, which Pillow reads as 8 bits per channel.
    """
    with open(path, "rb") as f:
        head = f.read(26)
        if head[:8] != _PNG_SIGNATURE:
            return
        f.seek(max(0, path.stat().st_size - 64))
        tail = f.read()
    if _PNG_IEND not in tail:
        raise ImageReadError(f"{path}: the PNG is truncated (it has no closing IEND chunk). Re-export or re-copy it.")
    if len(head) < 26 or head[12:16] != b"IHDR":
        return  # Pillow reports the damage
    bit_depth, colour_type = head[24], head[25]
    if bit_depth == 16 and colour_type in (2, 4, 6):  # RGB, grey+alpha, RGBA
        raise ImageReadError(
            f"{path}: is a 16-bit {'grey+alpha' if colour_type == 4 else 'colour'} PNG, which Pillow can only read as "
            "8 bits per channel (the low bits would be silently lost). Save it as 8-bit RGB or 16-bit grey without "
            "alpha, or save each channel as a 16-bit grey PNG "
            "(CASE_0000.png, CASE_0001.png, ...)."
        )


def read_natural_image(file: str | os.PathLike) -> np.ndarray:
    """Return ``(H, W)`` or ``(H, W, 3)``; RGBA with a constant alpha drops the alpha."""
    path = Path(file)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found.")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes). Re-export or re-copy it.")
    _check_png(path)
    try:
        with Image.open(path) as im:
            check_memory_budget(path, im.size[::-1], len(im.getbands()))
            im.load()
            mode = im.mode
            if mode == "P":
                im = im.convert("RGB")
                mode = "RGB"
            elif mode in ("LA",):
                im = im.convert("RGBA")
                mode = "RGBA"
            arr = np.array(im)
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{path}: refused, the image is too big ({e}). Crop or downsample it first.") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImageReadError(f"{path}: could not be read as an image ({e}). The file is corrupt or truncated.") from None
    if arr.ndim == 3 and arr.shape[2] == 4:
        if np.all(arr[..., 3] == arr[..., 3].flat[0]):
            arr = arr[..., :3]
        else:
            raise ImageReadError(f"{path}: has a non-constant alpha channel. Save it as RGB or grey without alpha.")
    if arr.ndim == 3 and arr.shape[2] == 2:
        arr = arr[..., 0]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr


class NaturalImage2DIO(ImageIO):
    supported_file_endings = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

    def read_images(self, files: Sequence[str | os.PathLike]) -> tuple[np.ndarray, dict]:
        chans = []
        for f in files:
            arr = read_natural_image(f)
            if arr.ndim == 2:
                arr = arr[None]
            else:
                arr = np.moveaxis(arr, -1, 0)
            if chans and arr.shape[1:] != chans[0].shape[1:]:
                raise ImageReadError(f"{f}: size {arr.shape[1:]} differs from {files[0]} {chans[0].shape[1:]}.")
            chans.append(arr)
        data = np.concatenate(chans, 0)[:, None].astype(np.float32)  # (C, 1, H, W)
        props = {
            "spacing": [SPACING_2D_SLICE_AXIS, 1.0, 1.0],
            "io": self.name(),
            "natural_dtype": str(chans[0].dtype),
        }
        return data, props

    def read_seg(self, file: str | os.PathLike) -> tuple[np.ndarray, dict]:
        arr = read_natural_image(file)
        if arr.ndim == 3:
            if np.all(arr == arr[..., :1]):
                arr = arr[..., 0]
            else:
                raise ImageReadError(
                    f"{file}: label map is a colour (RGB) image with differing channels. Labels must be one "
                    "integer per pixel: convert it with samunet_convert_2d_folder --label_map, or save it as grey."
                )
        props = {"spacing": [SPACING_2D_SLICE_AXIS, 1.0, 1.0], "io": self.name()}
        return as_label_array(arr[None, None], file), props

    def write_seg(self, seg: np.ndarray, file: str | os.PathLike, properties: dict) -> None:
        seg = np.asarray(seg)
        seg2d = seg.reshape(seg.shape[-2:])
        if seg2d.min() < 0 or seg2d.max() > 65535:
            raise ValueError(f"cannot write labels outside 0..65535 to {file}")
        dtype = np.uint8 if seg2d.max() < 256 else np.uint16
        suffix = Path(file).suffix.lower()
        if suffix in (".jpg", ".jpeg"):
            raise ValueError(f"{file}: label maps cannot be written as JPEG (lossy); use .png")
        with atomic_path(file, suffix=suffix) as tmp:
            Image.fromarray(seg2d.astype(dtype)).save(tmp)
