"""Tests of samunet.evaluation.metrics: Dice, NSD (against brute force), per-case protocol."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from samunet.evaluation.metrics import (
    METRIC_PROTOCOLS,
    case_metrics,
    dice,
    normalized_surface_dice,
    surface,
)


# --------------------------------------------------------------------------- brute force reference


def brute_surface(mask: np.ndarray) -> np.ndarray:
    """A voxel is on the surface if it is foreground and any of its full-connectivity
    neighbours (outside the array = background) is background. Plain loops."""
    out = np.zeros_like(mask, dtype=bool)
    offsets = [o for o in itertools.product((-1, 0, 1), repeat=mask.ndim) if any(o)]
    for idx in zip(*np.nonzero(mask)):
        for o in offsets:
            n = tuple(i + d for i, d in zip(idx, o))
            if any(c < 0 or c >= s for c, s in zip(n, mask.shape)) or not mask[n]:
                out[idx] = True
                break
    return out


def brute_nsd(pred: np.ndarray, ref: np.ndarray, spacing, tau: float) -> float:
    sp = np.asarray(spacing, float)
    a = np.argwhere(brute_surface(pred)) * sp
    b = np.argwhere(brute_surface(ref)) * sp
    dist = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))  # |a| x |b|
    good = np.count_nonzero(dist.min(1) <= tau + 1e-9) + np.count_nonzero(dist.min(0) <= tau + 1e-9)
    return good / (len(a) + len(b))


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


def test_surface_matches_brute_force_and_border():
    rng = np.random.default_rng(0)
    m = rng.random((7, 9, 8)) > 0.4
    np.testing.assert_array_equal(surface(m), brute_surface(m))
    full = np.ones((4, 5), bool)  # outside is background: the array border is surface
    s = surface(full)
    assert s[0].all() and s[-1].all() and s[:, 0].all() and s[:, -1].all() and not s[1:-1, 1:-1].any()


def test_nsd_identical_is_one():
    a = square()
    assert normalized_surface_dice(a, a, (1, 1), 2) == 1.0
    cube = np.zeros((6, 10, 10), bool)
    cube[1:5, 2:8, 3:7] = True
    assert normalized_surface_dice(cube, cube, (3.0, 0.7, 0.7), 2) == 1.0
    assert normalized_surface_dice(cube, cube, (3.0, 0.7, 0.7), 0) == 1.0


def test_nsd_2d_shift_1px_within_tolerance():
    assert normalized_surface_dice(square(x=5), square(x=6), (1, 1), 2.0) == 1.0
    assert normalized_surface_dice(square(y=5), square(y=6), None, 2.0) == 1.0


def test_nsd_2d_shift_5px_hand_and_brute_force():
    p, r = square(x=5), square(x=10)
    # by hand: each 8x8 square has 28 border pixels. The prediction's (x = 5..12) within 2 px of
    # the reference border (x = 10..17): top row x = 8..12 (5), bottom row x = 8..12 (5), right
    # column x = 12, y = 6..11 (6, 2 px from the reference's left column) -> 16; the left column
    # is 5 px away. Symmetrically 16 for the reference -> 32 / 56 = 4/7.
    expected = (16 + 16) / (28 + 28)
    assert brute_nsd(p, r, (1, 1), 2.0) == pytest.approx(expected)
    assert normalized_surface_dice(p, r, (1, 1), 2.0) == pytest.approx(expected)


def test_nsd_anisotropic_spacing_matters():
    ref = np.zeros((10, 12, 12), bool)
    ref[2:7, 2:10, 2:10] = True
    pred = np.roll(ref, 1, axis=0)
    # one voxel along z: 1 mm with spacing 1 (within tau=2) ...
    assert normalized_surface_dice(pred, ref, (1.0, 1.0, 1.0), 2.0) == 1.0
    # ... but 3 mm with spacing 3 (> tau=2): the top and bottom faces no longer match
    nsd = normalized_surface_dice(pred, ref, (3.0, 1.0, 1.0), 2.0)
    assert nsd < 0.9
    assert nsd == pytest.approx(brute_nsd(pred, ref, (3.0, 1.0, 1.0), 2.0))
    # the same shift along an axis with spacing 1 while z has spacing 3 is within tolerance
    assert normalized_surface_dice(np.roll(ref, 1, axis=2), ref, (3.0, 1.0, 1.0), 2.0) == 1.0


def test_nsd_2d_ignores_999_slice_spacing():
    p, r = square(y=5)[None], square(y=6)[None]  # (1, Y, X): a 2D image
    assert normalized_surface_dice(p, r, (999.0, 1.0, 1.0), 2.0) == 1.0
    assert normalized_surface_dice(p[None], r[None], (999.0, 1.0, 1.0), 2.0) == 1.0  # (1, 1, Y, X)
    p5, r5 = square(x=5), square(x=10)
    assert normalized_surface_dice(p5[None], r5[None], (999.0, 1.0, 1.0), 2.0) == pytest.approx(4 / 7)
    assert normalized_surface_dice(p5, r5, (999.0, 1.0, 1.0), 2.0) == pytest.approx(4 / 7)
    # in-plane spacing is used: 0.5 mm pixels make a 5 px shift 2.5 mm
    assert normalized_surface_dice(p5[None], r5[None], (999.0, 0.5, 0.5), 2.0) == pytest.approx(
        brute_nsd(p5, r5, (0.5, 0.5), 2.0))


def test_nsd_empty_cases():
    e = np.zeros((10, 10), bool)
    a = square((10, 10), 2, 2, 4)
    assert math.isnan(normalized_surface_dice(e, e, (1, 1)))
    assert normalized_surface_dice(a, e, (1, 1)) == 0.0
    assert normalized_surface_dice(e, a, (1, 1)) == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_nsd_random_blobs_match_brute_force(seed):
    """Also checks that cropping to the padded bounding box changes nothing."""
    rng = np.random.default_rng(seed)
    shape = (9, 30, 28)
    pred = np.zeros(shape, bool)
    ref = np.zeros(shape, bool)
    pred[2:6, 5:15, 4:12] = True
    ref[3:7, 8:19, 6:13] = True
    pred &= rng.random(shape) > 0.15
    ref |= rng.random(shape) > 0.97
    sp = (2.5, 0.8, 1.1)
    for tau in (0.0, 1.0, 2.0, 3.5):
        assert normalized_surface_dice(pred, ref, sp, tau) == pytest.approx(brute_nsd(pred, ref, sp, tau)), tau


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
