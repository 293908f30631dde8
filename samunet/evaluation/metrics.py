"""Segmentation metrics: Dice and the normalised surface Dice (NSD).

Conventions
-----------
* Masks are boolean arrays in *array order* (``(Z, Y, X)`` or ``(Y, X)``); ``spacing``
  is given in the same order.
* A case with ``Z == 1`` is a 2D image: it is evaluated in 2D with the in-plane
  spacing only (the 999 given to the absent slice axis is never used).
* **Both masks empty** (the label is absent from reference and prediction): Dice and
  NSD are ``NaN`` by default, as in nnU-Net; aggregations use ``nanmean`` so such
  cases are excluded from the label's mean instead of counting as a perfect 1.
* **Exactly one mask empty**: Dice 0 and NSD 0.
* **Ignore label** (nnU-Net v2's ``ignore``, unannotated pixels): with ``ignore_label``
  given, voxels whose *reference* holds it are set to background in both maps before any
  metric, so TP/FP/FN count only where the reference is annotated (nnU-Net's masking) and
  neither surface reaches into the unannotated region.

The NSD is the one of DeepMind's ``surface-distance`` package (PyPI ``surface-distance``),
used by the CVPR24 "MedSAM on Laptop" challenge and AutoMedSAM, and is computed by that
package: surface elements sit on the voxel corners (a 2x2(x2) neighbourhood code), each
weighted by its area in mm^2 (its length in 2D, through the spacing), and the NSD is the
area of both surfaces within ``tau`` of the other surface over the total area. NSD values of
earlier samunet versions (which counted border voxels after a full-connectivity erosion) are
not comparable with these.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import surface_distance

#: Default NSD tolerance: mm in 3D (through the spacing), pixels in 2D images.
DEFAULT_TOLERANCE = 2.0
#: Dice threshold of the CVPR24 rule "NSD only counts when DSC > 0.2" (off by default).
CVPR24_NSD_DICE_THRESHOLD = 0.2

#: The three evaluation protocols of METHODS.md section 0. Every result stores its tag.
METRIC_PROTOCOLS: dict[str, dict] = {
    "per_case_3d": {
        "implemented": True,
        "default": True,
        "source": "AutoMedSAM / CVPR24 'MedSAM on Laptop' (METHODS.md 3.5)",
        "description": (
            "Per case (one 3D volume or one 2D image): Dice and NSD per foreground label at full "
            "resolution; NSD tolerance 2 (mm in 3D via the voxel spacing, pixels in 2D). Both masks "
            "empty -> NaN, excluded from means. Case means per label (nanmean), then the mean over "
            "labels. Optional CVPR24 rule nsd_only_if_dice_above=0.2: NSD is 0 when Dice <= 0.2."
        ),
    },
    "pooled_slices_dice": {
        "implemented": False,
        "source": "SAMMed legacy protocol (METHODS.md 1.6)",
        "description": (
            "Dice pooled over a group of 4 slices (a 2x2 mosaic at 1024^2) with +1 smoothing, averaged "
            "over mosaics of a target domain, then over targets. Kept for parity checks only."
        ),
    },
    "per_image_dice_fixed_res": {
        "implemented": False,
        "source": "ProMISe legacy protocol (METHODS.md 2.4)",
        "description": (
            "Mean per-image Dice at 256^2: probability >= 0.5, 5x5 opening, ground truth resized "
            "bilinearly and binarised at > 0, no smoothing. Kept for parity checks only."
        ),
    },
}
DEFAULT_PROTOCOL = "per_case_3d"


def dice(pred_mask: np.ndarray, ref_mask: np.ndarray, empty_value: float = math.nan) -> float:
    """Dice coefficient ``2|P∩R| / (|P|+|R|)`` of two boolean masks.

    Returns ``empty_value`` (``NaN`` by default, nnU-Net convention: excluded from means)
    when both masks are empty.
    """
    pred = np.asarray(pred_mask, dtype=bool)
    ref = np.asarray(ref_mask, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"dice: shapes differ, prediction {pred.shape} vs reference {ref.shape}")
    n_pred = int(np.count_nonzero(pred))
    n_ref = int(np.count_nonzero(ref))
    if n_pred + n_ref == 0:
        return float(empty_value)
    inter = int(np.count_nonzero(pred & ref))
    return 2.0 * inter / (n_pred + n_ref)


def _as_2d_or_3d(mask: np.ndarray, spacing: Sequence[float] | None) -> tuple[np.ndarray, tuple[float, ...]]:
    """Drop a leading singleton slice axis (2D image) together with its spacing entry."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim == 4 and m.shape[0] == 1:  # (1, Z, Y, X) segmentation layout
        m = m[0]
    sp = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * m.ndim
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim == 2 and len(sp) == 3:
        sp = sp[1:]  # drop the (999) slice-axis spacing of a 2D image
    if m.ndim not in (2, 3):
        raise ValueError(f"masks must be 2D or 3D, got shape {np.shape(mask)}")
    if len(sp) != m.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match mask dimensionality {m.ndim} (shape {m.shape})")
    if any(not (s > 0) for s in sp):
        raise ValueError(f"spacing must be positive, got {sp}")
    return m, sp


def normalized_surface_dice(
    pred_mask: np.ndarray,
    ref_mask: np.ndarray,
    spacing: Sequence[float] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> float:
    """Normalised surface Dice at ``tolerance`` (same unit as ``spacing``), by DeepMind's
    ``surface-distance`` (``compute_surface_distances`` + ``compute_surface_dice_at_tolerance``).

    ``NSD = (sum_{s in S_pred, d(s, S_ref) <= tau} a(s) + sum_{s in S_ref, d(s, S_pred) <= tau} a(s))
    / (sum_{S_pred} a + sum_{S_ref} a)`` with ``S`` the surface elements of a mask, ``a`` their
    area (length in 2D) in physical units and ``d`` the Euclidean distance through ``spacing``.
    Everything outside the array is background. Both empty -> ``NaN``; exactly one empty -> 0.

    Masks are ``(Z, Y, X)`` or ``(Y, X)``; ``spacing`` (default 1 per axis) in the same order.
    Masks with a singleton first axis (``Z == 1``) are 2D images and use only the last two
    spacing entries.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    pred, sp = _as_2d_or_3d(pred_mask, spacing)
    ref, _ = _as_2d_or_3d(ref_mask, spacing)
    if pred.shape != ref.shape:
        raise ValueError(f"normalized_surface_dice: shapes differ, prediction {pred.shape} vs reference {ref.shape}")
    # decided here: surface-distance 0.1 reaches np.Inf (gone in NumPy 2) when a mask is empty
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return math.nan
    if not has_pred or not has_ref:
        return 0.0
    with warnings.catch_warnings():
        # surface-distance 0.1 calls scipy.ndimage.filters / .morphology (deprecated aliases)
        warnings.simplefilter("ignore", DeprecationWarning)
        distances = surface_distance.compute_surface_distances(
            np.ascontiguousarray(ref), np.ascontiguousarray(pred), list(sp))
        return float(surface_distance.compute_surface_dice_at_tolerance(distances, float(tolerance)))


def case_metrics(
    pred_seg: np.ndarray,
    ref_seg: np.ndarray,
    labels: Sequence[int],
    spacing: Sequence[float] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    nsd_only_if_dice_above: float | None = None,
    ignore_label: int | None = None,
) -> dict[int, dict]:
    """Protocol ``per_case_3d`` for one case (a 3D volume or a 2D image).

    ``pred_seg`` / ``ref_seg`` are label maps (``(Z, Y, X)``, ``(1, Z, Y, X)`` or ``(Y, X)``),
    ``spacing`` in the same (array) order. Returns ``{label: {"Dice", "NSD", "n_ref", "n_pred"}}``
    with ``n_*`` the voxel counts. ``nsd_only_if_dice_above`` (CVPR24 rule, e.g. 0.2): NSD is
    set to 0 when Dice is not above it (NaN stays NaN). ``ignore_label``: voxels where the
    reference holds it are left out of every metric (and of ``n_ref``/``n_pred``).
    """
    pred_seg = np.asarray(pred_seg)
    ref_seg = np.asarray(ref_seg)
    if pred_seg.shape != ref_seg.shape:
        raise ValueError(f"shapes differ: prediction {pred_seg.shape} vs reference {ref_seg.shape}")
    if ignore_label is not None:
        annotated = ref_seg != ignore_label
        pred_seg, ref_seg = np.where(annotated, pred_seg, 0), np.where(annotated, ref_seg, 0)
    out: dict[int, dict] = {}
    for label in labels:
        p = pred_seg == label
        r = ref_seg == label
        d = dice(p, r)
        if nsd_only_if_dice_above is not None and not math.isnan(d) and d <= nsd_only_if_dice_above:
            nsd = 0.0
        else:
            nsd = normalized_surface_dice(p, r, spacing, tolerance)
        out[int(label)] = {"Dice": d, "NSD": nsd, "n_ref": int(np.count_nonzero(r)), "n_pred": int(np.count_nonzero(p))}
    return out
