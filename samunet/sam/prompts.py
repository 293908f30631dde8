"""Box prompts and SAMMed's 2×2 mosaic, in numpy.

Box convention (MedSAM): ``[x_min, y_min, x_max, y_max]`` in pixel indices of the frame the
array lives in, with **inclusive** maxima — a single pixel at (row 5, col 7) has the box
``[7, 5, 7, 5]`` and the full image of shape (H, W) is ``[0, 0, W - 1, H - 1]``. Boxes are
``np.int64`` arrays of shape (4,); "no object" is ``None``.

Mosaic convention (SAMMed §1.4): slice ``k = 2 i + j`` of a group of four goes to tile
row ``i``, column ``j`` of a ``2H × 2W`` canvas.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

Box = np.ndarray


def _as_box(x0, y0, x1, y1) -> Box:
    return np.array([x0, y0, x1, y1], dtype=np.int64)


def mask_box(mask: np.ndarray) -> Optional[Box]:
    """Tight box of the True pixels of a 2D mask ``(H, W)``; None if empty."""
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2D, got shape {m.shape}")
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    return _as_box(cols[0], rows[0], cols[-1], rows[-1])


def largest_component_box(prob: np.ndarray, theta1: float = 0.75, downsample_factor: int = 4) -> Optional[Box]:
    """SAMMed's mask filtering → box (§1.3), on a probability map ``(H, W)``.

    1. ``mask = prob > theta1``;
    2. downsample by ``f`` with block-wise ANY (the map is zero-padded to a multiple of f),
       so no foreground pixel, however small, is lost;
    3. keep the largest 4-connected component (``scipy.ndimage.label``; ties → the lowest
       label, i.e. the first in raster order);
    4. take its box on the small grid and scale back to the block extent:
       ``[x0 f, y0 f, x1 f + f - 1, y1 f + f - 1]``, clipped to the image.

    Returns None when nothing exceeds ``theta1`` (the reference code returns [0, 0, 0, 0]).
    The reference resizes 512² → 128² bilinearly before thresholding; block-wise ANY is the
    resolution-independent equivalent chosen here.
    """
    p = np.asarray(prob)
    if p.ndim != 2:
        raise ValueError(f"prob must be 2D, got shape {p.shape}")
    f = int(downsample_factor)
    if f < 1:
        raise ValueError("downsample_factor must be >= 1")
    mask = p > theta1
    if not mask.any():
        return None
    H, W = mask.shape
    Hp, Wp = -(-H // f) * f, -(-W // f) * f
    if (Hp, Wp) != (H, W):
        mask = np.pad(mask, ((0, Hp - H), (0, Wp - W)))
    small = mask.reshape(Hp // f, f, Wp // f, f).any(axis=(1, 3))
    labels, n = ndimage.label(small)  # default structure in 2D = 4-connectivity
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keep = int(np.argmax(sizes)) + 1  # argmax returns the first maximum
    x0, y0, x1, y1 = mask_box(labels == keep)
    return _as_box(x0 * f, y0 * f, min(x1 * f + f - 1, W - 1), min(y1 * f + f - 1, H - 1))


def component_boxes(prob: np.ndarray, theta1: float = 0.75, min_fraction: float = 0.2, max_boxes: int = 4,
                    min_pixels: int = 16) -> list[Box]:
    """One box per sizeable connected component of ``prob > theta1`` (labels with several
    parts: two lungs, two kidneys, several polyps), largest first.

    Components are 8-connected on the full-resolution mask (exact: nothing is merged or
    grown by downsampling). A component is kept when it has at least ``min_pixels`` pixels
    and at least ``min_fraction`` of the largest one's; at most ``max_boxes`` are returned
    (``max_boxes=1``, ``min_fraction=1`` is the largest component's box alone). Empty
    list when nothing exceeds ``theta1``."""
    p = np.asarray(prob)
    if p.ndim != 2:
        raise ValueError(f"prob must be 2D, got shape {p.shape}")
    mask = p > theta1
    if not mask.any():
        return []
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    order = np.argsort(-sizes, kind="stable")
    largest = sizes[order[0]]
    boxes = []
    slices = ndimage.find_objects(labels)
    for i in order[: max(1, int(max_boxes))]:
        if sizes[i] < max(int(min_pixels), min_fraction * largest) and boxes:
            break
        sy, sx = slices[i]
        boxes.append(_as_box(sx.start, sy.start, sx.stop - 1, sy.stop - 1))
    return boxes


def most_probable_region(prob: np.ndarray, relative: float = 0.5) -> Optional[np.ndarray]:
    """The connected region of ``prob >= relative * prob.max()`` that holds the most probable
    element (8-connected in a slice, 26-connected in a volume), as a boolean mask: where a label
    must be somewhere, the region stage 1 rates likeliest however unsure it is. None when
    ``prob`` is zero everywhere."""
    p = np.asarray(prob)
    if p.ndim not in (2, 3):
        raise ValueError(f"prob must be a slice (Y, X) or a volume (Z, Y, X), got shape {p.shape}")
    if not 0.0 < relative <= 1.0:
        raise ValueError(f"relative must be in (0, 1], got {relative}")
    peak = float(p.max()) if p.size else 0.0
    if not peak > 0.0:
        return None
    labels, _ = ndimage.label(p >= relative * peak, structure=np.ones((3,) * p.ndim, dtype=bool))
    return labels == labels[np.unravel_index(int(np.argmax(p)), p.shape)]


def unfiltered_box(prob: np.ndarray, theta: float = 0.9) -> Optional[Box]:
    """Box of all pixels with ``prob > theta``, no component filtering (SAMMed's
    "SAM + unfiltered box" ablation). None if empty."""
    return mask_box(np.asarray(prob) > theta)


def full_box(shape_hw: Sequence[int]) -> Box:
    """The whole image, ``[0, 0, W - 1, H - 1]`` (inclusive; the reference uses
    ``[0, 0, 512, 512]`` on 512² slices)."""
    H, W = int(shape_hw[0]), int(shape_hw[1])
    return _as_box(0, 0, W - 1, H - 1)


def jitter_box(box: Sequence[int], rng: np.random.Generator, max_shift: int = 9,
               shape_hw: Optional[Sequence[int]] = None, min_shift: int = 0) -> Box:
    """Expand each side independently by a random integer in ``[min_shift, max_shift]``; the
    box never shrinks. Clipped to ``[0, W - 1] × [0, H - 1]`` when ``shape_hw`` is given (else
    only at 0)."""
    b = np.asarray(box, dtype=np.int64).reshape(4)
    lo, hi = int(min_shift), int(max_shift)
    if not 0 <= lo <= hi:
        raise ValueError(f"box jitter must satisfy 0 <= min <= max, got [{lo}, {hi}] (plans.json prompting.box_jitter_px)")
    s = rng.integers(lo, hi + 1, size=4)
    x0, y0, x1, y1 = b[0] - s[0], b[1] - s[1], b[2] + s[2], b[3] + s[3]
    x0, y0 = max(int(x0), 0), max(int(y0), 0)
    if shape_hw is not None:
        H, W = int(shape_hw[0]), int(shape_hw[1])
        x1, y1 = min(int(x1), W - 1), min(int(y1), H - 1)
    return _as_box(x0, y0, x1, y1)


# ---------------------------------------------------------------------------- mosaic
def _tile_position(k: int) -> tuple[int, int]:
    if not 0 <= int(k) < 4:
        raise ValueError(f"tile index k must be in 0..3, got {k}")
    return divmod(int(k), 2)


def make_mosaic(tiles: Sequence) -> tuple[np.ndarray, list[bool]]:
    """Merge up to 4 tiles ``(..., H, W)`` (e.g. ``(C, H, W)`` images or ``(H, W)`` masks) into
    a ``(..., 2H, 2W)`` canvas; tile k goes to row ``k // 2``, column ``k % 2``.

    Missing tiles (fewer than 4, or None entries) are left blank (zeros) and flagged False in
    the returned ``valid`` list, so that losses/metrics can ignore them. Works for numpy
    arrays and torch tensors alike.
    """
    tiles = list(tiles)
    if len(tiles) > 4:
        raise ValueError(f"a mosaic holds at most 4 tiles, got {len(tiles)}")
    present = [t for t in tiles if t is not None]
    if not present:
        raise ValueError("make_mosaic needs at least one tile")
    ref = present[0]
    shape = tuple(ref.shape)
    for t in present:
        if tuple(t.shape) != shape:
            raise ValueError(f"all tiles must have the same shape; got {tuple(t.shape)} and {shape}")
    H, W = shape[-2:]
    canvas_shape = shape[:-2] + (2 * H, 2 * W)
    if isinstance(ref, np.ndarray):
        canvas = np.zeros(canvas_shape, dtype=ref.dtype)
    else:  # torch tensor
        canvas = ref.new_zeros(canvas_shape)
    valid = [False] * 4
    for k, t in enumerate(tiles):
        if t is None:
            continue
        i, j = _tile_position(k)
        canvas[..., i * H:(i + 1) * H, j * W:(j + 1) * W] = t
        valid[k] = True
    return canvas, valid


def split_mosaic(canvas, tile_hw: Sequence[int]) -> list:
    """Inverse of :func:`make_mosaic`: the 4 tiles ``(..., H, W)`` of a ``(..., 2H, 2W)``
    canvas in order k = 0..3 (views, not copies)."""
    H, W = int(tile_hw[0]), int(tile_hw[1])
    if tuple(canvas.shape[-2:]) != (2 * H, 2 * W):
        raise ValueError(f"canvas must be (..., {2 * H}, {2 * W}), got {tuple(canvas.shape)}")
    out = []
    for k in range(4):
        i, j = _tile_position(k)
        out.append(canvas[..., i * H:(i + 1) * H, j * W:(j + 1) * W])
    return out


def mosaic_box(box: Sequence[int], k: int, tile_hw: Sequence[int], legacy_box_offset: bool = False) -> Box:
    """Move a tile-frame box of slice ``k`` into the mosaic frame.

    Correct: ``x += W j``, ``y += H i`` with ``(i, j) = divmod(k, 2)``.
    ``legacy_box_offset=True`` reproduces the SAMMed reference code's bug (``x += H i``,
    ``y += W j``): on the off-diagonal tiles (0, 1) and (1, 0) the box lands in the transposed
    tile. Only for parity with the published numbers.
    """
    i, j = _tile_position(k)
    H, W = int(tile_hw[0]), int(tile_hw[1])
    dx, dy = (H * i, W * j) if legacy_box_offset else (W * j, H * i)
    b = np.asarray(box, dtype=np.int64).reshape(4)
    return _as_box(b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy)
