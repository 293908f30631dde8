"""Scale views of a slice: the objects at other sizes than one training centre's.

A head trained on one hospital's images learns that hospital's object sizes too (its zoom,
its field of view, its patients): Kvasir-SEG's polyps fill a median 13 % of the frame,
CVC-ClinicDB's 8 %, and a head trained on the first draws blobs several times too large
around the second's small polyps. nnU-Net scales every patch (0.7-1.4); with a frozen SAM
encoder the scaling has to happen on the image *before* encoding (the embedding grid
cannot be resampled: SAM pads its input bottom-right and its features are not
scale-equivariant), so scale views are encoded once and cached like the appearance views.

A view zooms the slice about a random point by a factor ``s`` drawn log-uniformly from a
range: ``s < 1`` shrinks the content into the canvas (the rest is filled with the slice's
minimum, per channel), ``s > 1`` shows a random window enlarged. The same parameters,
drawn from the same seeded generator, map the label slice (nearest neighbour; the filled
border is background), so targets are recomputed rather than stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

DEFAULT_SCALE_RANGE = (0.6, 1.4)


@dataclass(frozen=True)
class Zoom:
    """Output pixel ``(y, x)`` shows input pixel ``((y - oy) / scale, (x - ox) / scale)``."""

    scale: float
    oy: float
    ox: float


def random_zoom(rng: np.random.Generator, shape_hw, scale_range=DEFAULT_SCALE_RANGE) -> Zoom:
    """A zoom for a ``shape_hw`` slice: ``scale`` log-uniform in ``scale_range``; the offset is
    uniform over positions where the scaled content and the canvas overlap fully in one of
    them (shrunk content lies inside the canvas; an enlarged window lies inside the content)."""
    lo, hi = (float(v) for v in scale_range)
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must be 0 < low <= high, got {scale_range}")
    s = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    h, w = (int(v) for v in shape_hw)
    oy = rng.uniform(min(0.0, h - s * h), max(0.0, h - s * h))
    ox = rng.uniform(min(0.0, w - s * w), max(0.0, w - s * w))
    return Zoom(s, float(oy), float(ox))


def apply_zoom(arr: np.ndarray, zoom: Zoom, *, order: int, fill=None) -> np.ndarray:
    """``arr`` ``(Y, X)`` or ``(C, Y, X)`` zoomed (same shape). ``order`` 1 for images, 0 for labels;
    ``fill``: value outside the content (default: each channel's minimum)."""
    a = np.asarray(arr)
    if a.ndim not in (2, 3):
        raise ValueError(f"expected (Y, X) or (C, Y, X), got shape {a.shape}")
    chans = a[None] if a.ndim == 2 else a
    inv = 1.0 / zoom.scale
    out = np.empty(chans.shape, dtype=np.float32 if order > 0 else a.dtype)
    for i, c in enumerate(chans):
        cval = float(c.min()) if fill is None else float(fill)
        out[i] = ndimage.affine_transform(c if order == 0 else c.astype(np.float32), [inv, inv],
                                          offset=[-zoom.oy * inv, -zoom.ox * inv], output_shape=c.shape,
                                          order=order, mode="constant", cval=cval)
    return out[0] if a.ndim == 2 else out


def slice_zoom(seed: int, view: int, case_key: int, z: int, shape_hw, scale_range=DEFAULT_SCALE_RANGE) -> Zoom:
    """The zoom of scale view ``view`` (1-based) of slice ``z`` of a case: the same every time."""
    return random_zoom(np.random.default_rng([int(seed), 1000 + int(view), int(case_key), int(z)]), shape_hw,
                       scale_range)
