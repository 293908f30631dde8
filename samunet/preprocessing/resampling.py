"""In-plane resampling (SAM is 2D: the slice axis is never resampled)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def inplane_shape_after_resampling(shape_yx, spacing_yx, target_spacing_yx) -> tuple[int, int]:
    return tuple(
        max(1, int(round(s * sp / t))) for s, sp, t in zip(shape_yx, spacing_yx, target_spacing_yx)
    )


def _resample_2d(img: np.ndarray, out_shape: tuple[int, int], order: int) -> np.ndarray:
    # pixel-centre aligned mapping (as align_corners=False): in = (out + 0.5) * s - 0.5
    scale = np.array(img.shape, dtype=float) / np.array(out_shape, dtype=float)
    return ndimage.affine_transform(
        img, scale, offset=0.5 * scale - 0.5, output_shape=out_shape, order=order, mode="nearest", prefilter=order > 1
    )


def resample_data_inplane(data: np.ndarray, out_shape_yx: tuple[int, int], order: int = 3) -> np.ndarray:
    """Resample ``(C, Z, Y, X)`` float data to ``(C, Z, *out_shape_yx)``.

    Cubic interpolation overshoots; values are clipped to each channel's input range.
    """
    if tuple(data.shape[2:]) == tuple(out_shape_yx):
        return data
    out = np.empty(data.shape[:2] + tuple(out_shape_yx), dtype=np.float32)
    for c in range(data.shape[0]):
        lo, hi = (float(data[c].min()), float(data[c].max())) if data[c].size else (0.0, 0.0)
        for z in range(data.shape[1]):
            out[c, z] = _resample_2d(data[c, z].astype(np.float32, copy=False), out_shape_yx, order)
        np.clip(out[c], lo, hi, out=out[c])
    return out


def resample_seg_inplane(seg: np.ndarray, out_shape_yx: tuple[int, int], label_values=None) -> np.ndarray:
    """Resample a ``(1, Z, Y, X)`` label map by linear interpolation of each label's
    one-hot mask and a per-voxel argmax (smoother than nearest neighbour, no label mixing)."""
    if tuple(seg.shape[2:]) == tuple(out_shape_yx):
        return seg
    if label_values is None:
        label_values = np.unique(seg)
    label_values = [int(v) for v in label_values]
    out = np.zeros((1, seg.shape[1]) + tuple(out_shape_yx), dtype=seg.dtype)
    for z in range(seg.shape[1]):
        best = np.full(out_shape_yx, -1.0, dtype=np.float32)
        for v in label_values:
            prob = _resample_2d((seg[0, z] == v).astype(np.float32), out_shape_yx, order=1)
            better = prob > best
            out[0, z][better] = v
            best[better] = prob[better]
    return out


def resample_probabilities_inplane(probs: np.ndarray, out_shape_yx: tuple[int, int]) -> np.ndarray:
    """Resample ``(K, Z, Y, X)`` class probabilities linearly (used to export predictions)."""
    if tuple(probs.shape[2:]) == tuple(out_shape_yx):
        return probs
    out = np.empty(probs.shape[:2] + tuple(out_shape_yx), dtype=np.float32)
    for k in range(probs.shape[0]):
        for z in range(probs.shape[1]):
            out[k, z] = _resample_2d(probs[k, z].astype(np.float32, copy=False), out_shape_yx, order=1)
    return out
