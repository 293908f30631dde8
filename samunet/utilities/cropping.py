"""Crop a case to the bounding box of its non-zero image content (and its labels)."""

from __future__ import annotations

import numpy as np


def nonzero_bbox(data: np.ndarray, seg: np.ndarray | None = None) -> list[list[int]]:
    """Bounding box ``[[z0, z1], [y0, y1], [x0, x1]]`` (half-open) of non-zero voxels.

    ``data`` is ``(C, Z, Y, X)``; ``seg`` ``(1, Z, Y, X)`` or None. Labelled voxels are
    always inside the box, so cropping never loses annotation. An all-zero case gets
    the full extent.
    """
    mask = np.any(data != 0, axis=0)
    if seg is not None:
        mask |= seg[0] > 0
    if not mask.any():
        return [[0, s] for s in data.shape[1:]]
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append([int(idx[0]), int(idx[-1]) + 1])
    return box


def crop_to_bbox(arr: np.ndarray, bbox: list[list[int]]) -> np.ndarray:
    """Crop the trailing ``len(bbox)`` axes of ``arr``."""
    slices = tuple(slice(a, b) for a, b in bbox)
    return arr[(Ellipsis,) + slices]


def uncrop(arr: np.ndarray, bbox: list[list[int]], full_shape: tuple[int, ...], fill: float = 0) -> np.ndarray:
    """Place ``arr`` (cropped on its trailing axes) back into an array of ``full_shape``."""
    lead = arr.shape[: arr.ndim - len(bbox)]
    out = np.full(lead + tuple(full_shape), fill, dtype=arr.dtype)
    out[(Ellipsis,) + tuple(slice(a, b) for a, b in bbox)] = arr
    return out
