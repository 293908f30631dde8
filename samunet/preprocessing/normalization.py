"""Intensity normalisation schemes; every scheme maps a channel to roughly [0, 1],
the range SAM-family encoders (LiteMedSAM, MedSAM) were trained on.

The planner picks one scheme per channel and records its parameters in plans.json.
"""

from __future__ import annotations

import numpy as np


def ct_normalize(x: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """Clip to the dataset's foreground percentiles (from the fingerprint), scale to [0, 1]."""
    x = np.clip(x, lower, upper)
    return ((x - lower) / max(upper - lower, 1e-8)).astype(np.float32)


def percentile_rescale(x: np.ndarray, lower_percentile: float = 0.5, upper_percentile: float = 99.5) -> np.ndarray:
    """Per-case clip to percentiles of the non-zero voxels, rescale to [0, 1]; zeros stay
    zero when the image has a zero background (MR convention of MedSAM)."""
    nz = x[x != 0]
    ref = nz if nz.size > 0.05 * x.size else x.ravel()
    if ref.size == 0:
        return np.zeros_like(x, dtype=np.float32)
    lo, hi = np.percentile(ref, [lower_percentile, upper_percentile])
    if hi - lo < 1e-8:  # constant image: keep it constant
        return np.zeros_like(x, dtype=np.float32)
    out = (np.clip(x, lo, hi) - lo) / (hi - lo)
    if nz.size > 0.05 * x.size:
        out[x == 0] = 0
    return out.astype(np.float32)


def rescale_to_unit(x: np.ndarray, maximum: float = 255.0) -> np.ndarray:
    """Natural 8-bit images: divide by 255."""
    return (x / maximum).astype(np.float32)


def normalize_channel(x: np.ndarray, scheme: dict) -> np.ndarray:
    name = scheme["scheme"]
    if name == "CTNormalization":
        return ct_normalize(x, scheme["lower"], scheme["upper"])
    if name == "PercentileRescale":
        return percentile_rescale(x, scheme.get("lower_percentile", 0.5), scheme.get("upper_percentile", 99.5))
    if name == "Rescale255":
        return rescale_to_unit(x, scheme.get("maximum", 255.0))
    if name == "NoNormalization":
        return x.astype(np.float32)
    raise ValueError(f"unknown normalisation scheme {name!r} in plans.json")


def normalize(data: np.ndarray, schemes: list[dict]) -> np.ndarray:
    """Normalise ``(C, Z, Y, X)`` channel by channel."""
    if len(schemes) != data.shape[0]:
        raise ValueError(f"plans.json has {len(schemes)} normalisation entries but the image has {data.shape[0]} channels")
    return np.stack([normalize_channel(data[c], schemes[c]) for c in range(data.shape[0])])
