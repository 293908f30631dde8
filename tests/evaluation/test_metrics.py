"""Tests of samunet.evaluation.metrics: Dice, NSD (against DeepMind's surface-distance and by
hand), per-case protocol."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import surface_distance

from samunet.evaluation.metrics import (
    METRIC_PROTOCOLS,
    case_metrics,
    dice,
    normalized_surface_dice,
)


# --------------------------------------------------------------------------- reference


def package_nsd(pred: np.ndarray, ref: np.ndarray, spacing, tau: float) -> float:
    """The NSD straight from DeepMind's surface-distance (both masks non-empty)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        d = surface_distance.compute_surface_distances(ref.astype(bool), pred.astype(bool), list(spacing))
        return float(surface_distance.compute_surface_dice_at_tolerance(d, tau))


def ellipsoid(shape, center, radii_mm, spacing) -> np.ndarray:
    """Boolean ellipsoid (or ellipse in 2D), centre in voxels, radii in mm."""
    grid = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, center, spacing)], indexing="ij")
    return sum((g / r) ** 2 for g, r in zip(grid, radii_mm)) <= 1.0


def square(shape=(20, 24), y=5, x=5, size=8) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[y:y + size, x:x + size] = True
    return m


# --------------------------------------------------------------------------- Dice


def test_dice_hand_cases():
    a = square()
    assert dice(a, a) == 1.0
    assert dice(square(x=2, size=4), square(x=12, size=4)) == 0.0
    # 8x8 squares shifted by 4 along x: overlap 8*4 = 32 -> 2*32 / (64+64) = 0.5
    assert dice(square(x=5), square(x=9)) == pytest.approx(0.5)
    # 4 voxels vs 2 of them: 2*2/(4+2)
    p = np.zeros(10, bool); p[:4] = True
    r = np.zeros(10, bool); r[:2] = True
    assert dice(p, r) == pytest.approx(4 / 6)
    e = np.zeros((5, 5), bool)
    assert math.isnan(dice(e, e))
    assert dice(e, e, empty_value=1.0) == 1.0
    assert dice(e, a[:5, :5] | True) == 0.0


def test_dice_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        dice(np.zeros((3, 3), bool), np.zeros((3, 4), bool))


# --------------------------------------------------------------------------- NSD


def test_nsd_identical_is_one():
    a = square()
    assert normalized_surface_dice(a, a, (1, 1), 2) == 1.0
    cube = np.zeros((6, 10, 10), bool)
    cube[1:5, 2:8, 3:7] = True
    assert normalized_surface_dice(cube, cube, (3.0, 0.7, 0.7), 2) == 1.0
    assert normalized_surface_dice(cube, cube, (3.0, 0.7, 0.7), 0) == 1.0
    full = np.ones((4, 5, 6), bool)  # outside the array is background: the array border is surface
    assert normalized_surface_dice(full, full, (2.0, 1.0, 1.0), 0) == 1.0


def test_nsd_2d_shift_1px_within_tolerance():
    assert normalized_surface_dice(square(x=5), square(x=6), (1, 1), 2.0) == 1.0
    assert normalized_surface_dice(square(y=5), square(y=6), None, 2.0) == 1.0


def test_nsd_2d_shift_5px_by_hand():
    """Two 8x8 squares, x = 5..12 and 10..17, tau = 2 px, area-weighted by hand.

    Surface elements sit on pixel corners (x, y = 5..13 for the first square): a corner with two
    pixels of the square in its 2x2 neighbourhood is an edge element of length 1, a square's
    corner (one pixel) a diagonal cut of length sqrt(2)/2. Each contour: 28 edges + 4 corners =
    28 + 2 sqrt(2). Within 2 px of the other contour: on the top row x = 8..12 (5 edges, the
    other top row starts at 10) plus the corner x = 13, the same on the bottom row, and on the
    right column x = 13 the elements y = 6, 7, 11, 12 (within 2 of the other's top / bottom row;
    its left column x = 10 is 3 px away) -> 14 + sqrt(2). Symmetric for the other square:
    NSD = 2 (14 + sqrt(2)) / (2 (28 + 2 sqrt(2))) = 1/2. (Counting border pixels gave 4/7.)"""
    p, r = square(x=5), square(x=10)
    assert normalized_surface_dice(p, r, (1, 1), 2.0) == pytest.approx(0.5, abs=1e-12)
    assert normalized_surface_dice(p[None], r[None], (999.0, 1.0, 1.0), 2.0) == pytest.approx(0.5, abs=1e-12)


def test_nsd_2d_anisotropic_by_hand():
    """The same squares with spacing (y, x) = (1, 0.5) mm: the shift is 2.5 mm, tau = 2 mm.

    Lengths: top / bottom edge elements 0.5, left / right 1, corners d = sqrt(1 + 0.25) / 2.
    Total per contour 7*0.5*2 + 7*1*2 + 4d = 21 + 4d. Within tau of the other contour: top row
    x = 6..12 (7 edges of 0.5; x = 6 is 2 mm from the other top row's x = 10) plus corner x = 13,
    the same at the bottom, and the whole right column (1.5 mm from the other's left column,
    7 edges of 1); the left column is 2.5 mm away -> 14 + 2d. NSD = (14 + 2d) / (21 + 4d)."""
    d = math.sqrt(1.25) / 2
    expected = (14 + 2 * d) / (21 + 4 * d)  # 0.6506
    p, r = square(x=5), square(x=10)
    assert normalized_surface_dice(p, r, (1.0, 0.5), 2.0) == pytest.approx(expected, abs=1e-12)
    assert normalized_surface_dice(p[None], r[None], (999.0, 1.0, 0.5), 2.0) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("spacing, shift, radii, tau", [
    ((1.0, 1.0, 1.0), (0, 0, 0), ((20, 15, 12), (22, 16.5, 13.2)), 2.0),  # isotropic, 10 % dilation
    ((3.0, 0.5, 0.5), (1, 0, 0), ((25, 20, 15), (25, 20, 15)), 2.0),  # 3 mm shift along z
    ((3.0, 0.5, 0.5), (0, 3, -2), ((25, 20, 15), (23, 21, 14)), 2.0),
    ((0.8, 1.2, 2.5), (1, 1, 0), ((14, 18, 20), (15, 17, 22)), 1.0),
    ((0.8, 1.2, 2.5), (0, 0, 1), ((14, 18, 20), (12, 18, 20)), 1.5),
])
def test_nsd_matches_surface_distance_on_anisotropic_3d_ellipsoids(spacing, shift, radii, tau):
    shape = tuple(int(2 * max(a, b) / sp) + 8 for a, b, sp in zip(*radii, spacing))
    center = np.array(shape) // 2
    ref = ellipsoid(shape, center, radii[0], spacing)
    pred = ellipsoid(shape, center + np.array(shift), radii[1], spacing)
    expected = package_nsd(pred, ref, spacing, tau)
    assert 0.3 < expected < 1.0
    assert normalized_surface_dice(pred, ref, spacing, tau) == pytest.approx(expected, abs=1e-3)
    # array axes and spacing entries stay paired: a transposed case gives the same value
    t = (2, 0, 1)
    assert normalized_surface_dice(pred.transpose(t), ref.transpose(t), [spacing[i] for i in t], tau) == \
        pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.5, 0.5), (1.0, 0.4), (2.0, 0.7)])
def test_nsd_matches_surface_distance_in_2d(spacing):
    shape = (70, 80)
    ref = ellipsoid(shape, (35, 40), (18, 22), spacing)
    pred = ellipsoid(shape, (37, 38), (16, 24), spacing)
    pred[30:34, 20:60] = True  # a thin spur
    for tau in (0.0, 1.0, 2.0, 3.5):
        expected = package_nsd(pred, ref, spacing, tau)
        assert normalized_surface_dice(pred, ref, spacing, tau) == pytest.approx(expected, abs=1e-3), tau
        # (1, Y, X) single-slice volume with the 999 slice spacing of a 2D image
        assert normalized_surface_dice(pred[None], ref[None], (999.0,) + spacing, tau) == \
            pytest.approx(expected, abs=1e-3), tau


def test_nsd_anisotropic_spacing_matters():
    ref = np.zeros((10, 12, 12), bool)
    ref[2:7, 2:10, 2:10] = True
    pred = np.roll(ref, 1, axis=0)
    # one voxel along z: 1 mm with spacing 1 (within tau=2) ...
    assert normalized_surface_dice(pred, ref, (1.0, 1.0, 1.0), 2.0) == 1.0
    # ... but 3 mm with spacing 3 (> tau=2): the top and bottom faces no longer match
    nsd = normalized_surface_dice(pred, ref, (3.0, 1.0, 1.0), 2.0)
    assert nsd < 0.9
    assert nsd == pytest.approx(package_nsd(pred, ref, (3.0, 1.0, 1.0), 2.0), abs=1e-3)
    # the same shift along an axis with spacing 1 while z has spacing 3 is within tolerance
    assert normalized_surface_dice(np.roll(ref, 1, axis=2), ref, (3.0, 1.0, 1.0), 2.0) == 1.0


def test_nsd_2d_ignores_999_slice_spacing():
    p, r = square(y=5)[None], square(y=6)[None]  # (1, Y, X): a 2D image
    assert normalized_surface_dice(p, r, (999.0, 1.0, 1.0), 2.0) == 1.0
    assert normalized_surface_dice(p[None], r[None], (999.0, 1.0, 1.0), 2.0) == 1.0  # (1, 1, Y, X)
    p5, r5 = square(x=5), square(x=10)
    assert normalized_surface_dice(p5, r5, (999.0, 1.0, 1.0), 2.0) == pytest.approx(0.5)
    # in-plane spacing is used: 0.5 mm pixels make a 5 px shift 2.5 mm
    assert normalized_surface_dice(p5[None], r5[None], (999.0, 0.5, 0.5), 2.0) == pytest.approx(
        package_nsd(p5, r5, (0.5, 0.5), 2.0), abs=1e-3)


@pytest.mark.parametrize("shape", [(10, 10), (1, 10, 10), (4, 10, 10)])
def test_nsd_empty_cases(shape):
    e = np.zeros(shape, bool)
    a = np.zeros(shape, bool)
    a[..., 2:6, 2:6] = True
    spacing = (1.0,) * len(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning (nor surface-distance's np.Inf path) either
        assert math.isnan(normalized_surface_dice(e, e, spacing))
        assert normalized_surface_dice(a, e, spacing) == 0.0
        assert normalized_surface_dice(e, a, spacing) == 0.0


def test_nsd_silences_surface_distance_deprecations_only_inside():
    a, b = square(x=5), square(x=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert normalized_surface_dice(a, b, (1.0, 1.0), 1.0) < 1.0
    # the filter does not leak out of the call
    with pytest.warns(DeprecationWarning):
        warnings.warn("still shown", DeprecationWarning)


@pytest.mark.parametrize("seed", range(3))
def test_nsd_random_blobs_and_array_border_match_surface_distance(seed):
    rng = np.random.default_rng(seed)
    shape = (9, 30, 28)
    pred = np.zeros(shape, bool)
    ref = np.zeros(shape, bool)
    pred[0:6, 5:15, 0:12] = True  # touches the array border
    ref[3:9, 8:19, 6:13] = True
    pred &= rng.random(shape) > 0.15
    ref |= rng.random(shape) > 0.97
    sp = (2.5, 0.8, 1.1)
    for tau in (0.0, 1.0, 2.0, 3.5):
        assert normalized_surface_dice(pred, ref, sp, tau) == pytest.approx(package_nsd(pred, ref, sp, tau),
                                                                            abs=1e-3), tau


def test_nsd_spacing_dimension_checked():
    with pytest.raises(ValueError, match="spacing"):
        normalized_surface_dice(np.ones((3, 4, 5), bool), np.ones((3, 4, 5), bool), (1.0, 1.0))


# --------------------------------------------------------------------------- per case protocol


def test_protocols_documented():
    assert set(METRIC_PROTOCOLS) == {"per_case_3d", "pooled_slices_dice", "per_image_dice_fixed_res"}
    assert METRIC_PROTOCOLS["per_case_3d"]["implemented"] and METRIC_PROTOCOLS["per_case_3d"]["default"]


def test_case_metrics_labels_counts_and_cvpr24_rule():
    ref = np.zeros((1, 20, 24), np.int16)
    pred = np.zeros_like(ref)
    ref[0][square(x=5)] = 1
    pred[0][square(x=6)] = 1
    ref[0, 0:2, 0:10] = 2  # label 2: 20 px, prediction hits 2 of them plus 16 elsewhere
    pred[0, 0, 0:2] = 2
    pred[0, 18:20, 0:8] = 2
    m = case_metrics(pred, ref, [1, 2, 3], (999.0, 1.0, 1.0), 2.0)
    assert m[1]["Dice"] == pytest.approx(2 * 56 / 128) and m[1]["NSD"] == 1.0
    assert m[1]["n_ref"] == 64 and m[1]["n_pred"] == 64
    assert m[2]["n_ref"] == 20 and m[2]["n_pred"] == 18
    assert m[2]["Dice"] == pytest.approx(2 * 2 / 38)  # ~0.105 <= 0.2
    assert m[2]["NSD"] > 0
    assert math.isnan(m[3]["Dice"]) and math.isnan(m[3]["NSD"])
    r = case_metrics(pred, ref, [1, 2, 3], (999.0, 1.0, 1.0), 2.0, nsd_only_if_dice_above=0.2)
    assert r[1]["NSD"] == 1.0  # Dice 0.875 > 0.2: kept
    assert r[2]["NSD"] == 0.0  # Dice 0.105 <= 0.2: zeroed
    assert math.isnan(r[3]["NSD"])


def test_case_metrics_mask_out_the_ignore_label():
    """nnU-Net's evaluation: TP/FP/FN only where the reference is annotated (not ignore)."""
    ref = np.zeros((1, 20, 24), np.int16)
    ref[0][square(x=5)] = 1
    ref[0, 10:13, :] = 9  # unannotated band across the object and the background
    perfect = np.where(ref == 9, 0, ref)
    noisy = perfect.copy()
    noisy[0, 10:13, :] = 1  # differs from `perfect` only where the reference is ignore
    noisy[0, 11, 3:7] = 0
    base = case_metrics(perfect, ref, [1], (999.0, 1.0, 1.0), 2.0, ignore_label=9)
    other = case_metrics(noisy, ref, [1], (999.0, 1.0, 1.0), 2.0, ignore_label=9)
    assert base[1]["Dice"] == 1.0 and base[1]["NSD"] == 1.0
    assert other == base
    assert other[1]["n_ref"] == int(((ref == 1)).sum()) and other[1]["n_pred"] == other[1]["n_ref"]
    # without the mask the band counts as false positives
    assert case_metrics(noisy, ref, [1], (999.0, 1.0, 1.0), 2.0)[1]["Dice"] < 0.9
    # an error outside the ignore band is still seen
    worse = noisy.copy()
    worse[0, 0:2, 0:2] = 1
    assert case_metrics(worse, ref, [1], (999.0, 1.0, 1.0), 2.0, ignore_label=9)[1]["Dice"] < 1.0
