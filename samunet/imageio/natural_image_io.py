"""PNG / JPEG / BMP 2D images through Pillow, TIFF through tifffile.

Grey images give one channel, RGB three (one file holds all three, as in nnU-Net's
natural-image datasets). Spacing is 1 in-plane and 999 on the absent slice axis.

Files are routed by their first bytes, not their name: a TIFF signature goes to tifffile
(Pillow refuses valid TIFFs such as CVC-ClinicDB's 3-sample greyscale-tagged frames and
reads 16-bit RGB TIFFs as 8 bits), anything else to Pillow. tifffile keeps 16-bit and float
samples as they are; TIFFs it cannot decode without the optional ``imagecodecs`` package
(LZW, JPEG, CCITT) are handed to Pillow when Pillow reads them without losing bits.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Sequence

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from samunet.imageio.base import (
    SPACING_2D_SLICE_AXIS,
    ImageIO,
    ImageReadError,
    as_label_array,
    check_finite,
    check_memory_budget,
)
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


# ----------------------------------------------------------------------------- format sniffing

_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
# enough of each signature to recognise a file whose header is damaged after it
_SIGNATURE_PREFIXES = (("PNG", b"\x89PNG"), ("JPEG", b"\xff\xd8"), ("BMP", b"BM"), ("GIF", b"GIF8"))
_TIFF_SUFFIXES = (".tif", ".tiff")


def _read_head(path: Path, n: int = 16) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise ImageReadError(f"{path}: could not be opened ({e.strerror or e}). Check that it is readable.") from None


def _is_tiff(path: Path, head: bytes) -> bool:
    """A TIFF signature, or the start of one in a ``.tif`` file cut within its first 4 bytes."""
    if head[:4] in _TIFF_MAGICS:
        return True
    return len(head) < 4 and path.suffix.lower() in _TIFF_SUFFIXES and any(m.startswith(head) for m in _TIFF_MAGICS)


def _looks_like(head: bytes) -> str | None:
    """The format whose signature the file starts with (possibly damaged after it), if any."""
    for fmt, prefix in _SIGNATURE_PREFIXES:
        if head.startswith(prefix):
            return fmt
    return None


def _looks_like_text(head: bytes) -> bool:
    return bool(head) and all(32 <= b < 127 or b in b"\t\r\n" for b in head)


# ----------------------------------------------------------------------------- Pillow (PNG, JPEG, BMP, ...)

def _unidentified_message(path: Path, head: bytes) -> str:
    """Why Pillow could not even identify the file: not an image, or a damaged header."""
    what = " (its content looks like text)" if _looks_like_text(head) else ""
    fmt = _looks_like(head)
    if fmt is not None:
        return (f"{path}: starts like a {fmt} file but its header is corrupt, so it cannot be decoded. "
                "Re-export or re-copy it.")
    if path.suffix.lower() in _TIFF_SUFFIXES:
        return (f"{path}: is not a TIFF file{what}: it does not start with a TIFF signature (II*\\0 or MM\\0*) and "
                "is no other image format Pillow reads either. Check that it really is an image and re-export it.")
    return (f"{path}: is not in a recognised image format: it is not PNG, JPEG, BMP or TIFF{what}. Check that it "
            "really is an image (not, e.g., a text or HTML page saved under an image name) and re-export it.")


def _damaged_message(path: Path, fmt: str, e: BaseException) -> str:
    """Pillow identified the file but could not decode it: cut short, or damaged inside."""
    if "truncat" in str(e).lower():
        return (f"{path}: the {fmt} file is truncated ({e}): it ends before its image data does, e.g. after an "
                "interrupted download or copy. Re-export or re-copy it.")
    return (f"{path}: the {fmt} file is corrupt: its image data could not be decoded ({type(e).__name__}: {e}). "
            "Re-export or re-copy it.")


def _pillow_array(im: Image.Image) -> np.ndarray:
    """Decode an opened Pillow image; palettes become RGB, grey+alpha RGBA."""
    im.load()
    if im.mode == "P":
        im = im.convert("RGB")
    elif im.mode == "LA":
        im = im.convert("RGBA")
    return np.array(im)


def _read_with_pillow(path: Path, head: bytes) -> np.ndarray:
    _check_png(path)
    fmt = _looks_like(head) or "image"
    try:
        with Image.open(path) as im:
            fmt = im.format or fmt
            check_memory_budget(path, im.size[::-1], len(im.getbands()))
            return _pillow_array(im)
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{path}: refused, the image is too big ({e}). Crop or downsample it first.") from None
    except UnidentifiedImageError:
        raise ImageReadError(_unidentified_message(path, head)) from None
    except (OSError, SyntaxError, EOFError) as e:
        raise ImageReadError(_damaged_message(path, fmt, e)) from None


# ----------------------------------------------------------------------------- TIFF (tifffile)

# bytes per value of each TIFF field type (BYTE, ASCII, SHORT, LONG, RATIONAL, ..., LONG8, SLONG8, IFD8)
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
                    16: 8, 17: 8, 18: 8}


def _truncated_tiff(path: Path, what: str, end: int, size: int) -> ImageReadError:
    return ImageReadError(f"{path}: the TIFF file is truncated: {what} runs to byte {end} but the file has only "
                          f"{size} bytes. Re-export or re-copy it.")


def _first_ifd_end(f, order: str, big: bool, offset: int, size: int) -> tuple[str, int]:
    """Where the first image directory (IFD) and the tag values it points to end."""
    count_fmt, entry_fmt, entry_size, inline = ("Q", "HHQQ", 20, 8) if big else ("H", "HHII", 12, 4)
    count_size = struct.calcsize(count_fmt)
    if offset + count_size > size:
        return "its image directory", offset + count_size
    f.seek(offset)
    n = struct.unpack(order + count_fmt, f.read(count_size))[0]
    end = offset + count_size + n * entry_size + inline  # entries and the next-directory offset
    if end > size:
        return "its image directory", end
    values_end = 0
    for _ in range(n):
        _, typ, count, value = struct.unpack(order + entry_fmt, f.read(entry_size))
        nbytes = _TIFF_TYPE_SIZES.get(typ, 0) * count
        if nbytes > inline:  # stored elsewhere in the file
            values_end = max(values_end, value + nbytes)
    return "the tag data of its image directory", values_end


def _check_tiff_header(path: Path, head: bytes, size: int) -> None:
    """Refuse, from the header alone, a TIFF cut before its first image directory and its tags end."""
    order = "<" if head[:2] == b"II" else ">"
    big = head[2:4] in (b"+\x00", b"\x00+")
    need = 16 if big else 8
    if size < need:
        raise _truncated_tiff(path, "the TIFF header", need, size)
    offset = struct.unpack(order + ("Q" if big else "I"), head[8:16] if big else head[4:8])[0]
    if offset < need:
        raise ImageReadError(f"{path}: the TIFF file is corrupt: its header points to an image directory at byte "
                             f"{offset}, inside the header. Re-export or re-copy it.")
    with open(path, "rb") as f:
        what, end = _first_ifd_end(f, order, big, offset, size)
    if end > size:
        raise _truncated_tiff(path, what, end, size)


def _single_tiff_page(tif: tifffile.TiffFile, path: Path):
    """The one full-resolution page of a TIFF; refuse stacks (several pages or a series of images)."""
    pages = [p for p in tif.pages if not (getattr(p, "subfiletype", 0) & 1)]  # skip thumbnails
    if not pages:
        raise ImageReadError(f"{path}: the TIFF file is corrupt: it holds no readable image. Re-export or re-copy it.")
    page = pages[0]
    n = len(pages)
    if n == 1 and tif.series and page.size and tif.series[0].size > page.size:
        n = tif.series[0].size // page.size  # e.g. an ImageJ stack stored as one contiguous block
    if n > 1 or page.shaped[1] > 1:
        what = f"{n} pages (images)" if n > 1 else f"a 3D volume of {page.shaped[1]} slices"
        raise ImageReadError(
            f"{path}: this TIFF has {what}, but samunet expects one 2D image per file. Save each page as a "
            "separate file (one case each), or save the stack as a 3D image (e.g. NIfTI, .nii.gz) and convert it "
            "with samunet_convert_nifti_pairs."
        )
    return page


def _check_tiff_data(page, path: Path, size: int) -> None:
    """Refuse a TIFF cut inside its image data (tifffile would fail or fill the rest)."""
    ends = [int(o) + int(n) for o, n in zip(page.dataoffsets, page.databytecounts) if n]
    if ends and max(ends) > size:
        raise _truncated_tiff(path, "its image data", max(ends), size)
    if not ends:
        raise ImageReadError(f"{path}: the TIFF file is corrupt: it names no image data. Re-export or re-copy it.")


def _tiff_codec_available(page) -> bool:
    predictor = int(getattr(page, "predictor", 1) or 1)
    return page.compression in tifffile.TIFF.DECOMPRESSORS and (
        predictor == 1 or predictor in tifffile.TIFF.UNPREDICTORS
    )


def _tiff_samples_last(page) -> np.ndarray:
    """Decode one page to ``(H, W)`` or ``(H, W, S)``: planar ``(S, H, W)`` becomes samples-last."""
    sep, _, h, w, contig = page.shaped
    arr = page.asarray().reshape(page.shaped)[:, 0]  # (sep, H, W, contig)
    arr = np.moveaxis(arr, 0, 2).reshape(h, w, sep * contig)
    return arr[..., 0] if arr.shape[2] == 1 else arr


def _apply_palette(idx: np.ndarray, page, path: Path) -> np.ndarray:
    cmap = page.colormap
    if cmap is None or idx.ndim != 2 or idx.max(initial=0) >= cmap.shape[-1]:
        raise ImageReadError(f"{path}: the TIFF file is corrupt: its colour palette is missing or too short. "
                             "Re-export or re-copy it.")
    cmap = np.asarray(cmap)
    if cmap.max(initial=0) <= 255:
        cmap = cmap.astype(np.uint8)
    elif np.all((cmap % 257 == 0) | (cmap % 256 == 0)):  # 8-bit colours stored as v*257 or v<<8
        cmap = (cmap >> 8).astype(np.uint8)
    return np.moveaxis(cmap[:, idx], 0, -1)


_PHOTOMETRIC_NAMES = {0: "white-is-zero grey", 5: "CMYK", 6: "YCbCr", 8: "CIE L*a*b*",
                      32803: "a raw colour filter array"}


def _tiff_colours(arr: np.ndarray, page, path: Path) -> np.ndarray:
    """Turn stored samples into grey or RGB values according to the photometric interpretation."""
    pm = tifffile.PHOTOMETRIC
    photometric = page.photometric
    if photometric == pm.PALETTE:
        return _apply_palette(arr, page, path)
    if photometric == pm.MINISWHITE:
        if arr.dtype == bool:
            return ~arr
        if arr.dtype.kind == "u":
            return (np.uint64(2 ** page.bitspersample - 1) - arr.astype(np.uint64)).astype(arr.dtype)
    elif photometric in (pm.MINISBLACK, pm.RGB):
        return arr
    name = _PHOTOMETRIC_NAMES.get(int(photometric), getattr(photometric, "name", str(photometric)))
    raise ImageReadError(
        f"{path}: the TIFF stores its pixels as {name} ({arr.dtype} samples), which samunet does not read. Save it "
        "as a grey or RGB TIFF (or PNG)."
    )


def _tiff_dtype(arr: np.ndarray, path: Path) -> np.ndarray:
    """Keep integer samples (16-bit stays 16-bit); float becomes float32 and must be finite."""
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float32, copy=False)
        check_finite(arr, path)
        return arr
    if arr.dtype.kind in "biu":
        return arr
    raise ImageReadError(f"{path}: the TIFF holds {arr.dtype} pixel values, which samunet does not read. Save it "
                         "with integer or real (float) samples.")


def _tiff_via_pillow(path: Path, page) -> np.ndarray:
    """Decode a TIFF whose compression tifffile cannot handle without ``imagecodecs``."""
    name = getattr(page.compression, "name", f"scheme {page.compression}")
    fix = (f"the TIFF is compressed with {name}, which tifffile decodes only with the optional imagecodecs "
           "package. Install it (pip install imagecodecs) or save the TIFF uncompressed or with deflate (zlib) "
           "compression.")
    try:
        with Image.open(path) as im:
            arr = _pillow_array(im)
    except (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{path}: {fix} (Pillow cannot read it either: {e}.)") from None
    if arr.shape[:2] != page.shaped[2:4] or (arr.dtype != bool and arr.dtype.itemsize < page.dtype.itemsize):
        raise ImageReadError(f"{path}: {fix} (Pillow would read it as {arr.dtype} {arr.shape} instead of "
                             f"{page.dtype} samples.)")
    return arr


def _tiff_failure(path: Path, e: Exception) -> ImageReadError:
    if "failed to read" in str(e):  # tifffile: fewer bytes on disk than the header announces
        return ImageReadError(f"{path}: the TIFF file is truncated ({e}). Re-export or re-copy it.")
    kind = type(e).__name__ if type(e).__module__ == "builtins" else f"{type(e).__module__}.{type(e).__name__}"
    return ImageReadError(f"{path}: the TIFF file is corrupt: tifffile cannot decode it ({kind}: {e}). "
                          "Re-export or re-copy it.")


def _read_tiff(path: Path, head: bytes) -> np.ndarray:
    size = path.stat().st_size
    _check_tiff_header(path, head, size)
    try:
        with tifffile.TiffFile(path) as tif:
            page = _single_tiff_page(tif, path)
            check_memory_budget(path, page.shaped[2:4], page.samplesperpixel)
            _check_tiff_data(page, path, size)
            if _tiff_codec_available(page):
                arr = _tiff_colours(_tiff_samples_last(page), page, path)
            else:
                arr = _tiff_via_pillow(path, page)
    except ImageReadError:
        raise
    except Exception as e:  # tifffile raises many types for damaged files (TiffFileError, struct.error, ...)
        raise _tiff_failure(path, e) from None
    return _tiff_dtype(arr, path)


# ----------------------------------------------------------------------------- public reader

def _drop_constant_alpha(arr: np.ndarray, path: Path) -> np.ndarray:
    """Drop a constant alpha (last of 2 or 4 channels); refuse a varying one and other channel counts."""
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        if not np.all(arr[..., -1] == arr[..., -1].flat[0]):
            raise ImageReadError(f"{path}: has a non-constant alpha channel. Save it as RGB or grey without alpha.")
        arr = arr[..., :-1]
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] != 3:
        raise ImageReadError(
            f"{path}: has {arr.shape[2]} channels per pixel; samunet reads grey, RGB or RGBA images. Save each "
            "channel as a separate grey image (CASE_0000.png, CASE_0001.png, ...)."
        )
    return arr


def read_natural_image(file: str | os.PathLike) -> np.ndarray:
    """Return ``(H, W)`` or ``(H, W, 3)``; RGBA with a constant alpha drops the alpha.

    TIFFs keep their sample type (uint16 stays uint16, float becomes float32).
    """
    path = Path(file)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found.")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes). Re-export or re-copy it.")
    head = _read_head(path)
    if _is_tiff(path, head):
        arr = _read_tiff(path, head)
    else:
        arr = _read_with_pillow(path, head)
        if arr.ndim == 3 and arr.shape[2] == 2:  # Pillow modes such as "PA": keep the first band, as before
            arr = arr[..., 0]
    arr = _drop_constant_alpha(arr, path)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr


class NaturalImage2DIO(ImageIO):
    supported_file_endings = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
    #: prediction inputs may be any of these formats, whatever the dataset's file ending
    #: (files are routed by content; one file holds all channels of an RGB image)
    accepts_any_natural_image = True

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
