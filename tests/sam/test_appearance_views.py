"""Appearance views for single-source domain generalisation (samunet.sam.appearance_views)."""

import numpy as np
import pytest

from samunet.sam.appearance_views import OPS, _curve, appearance_views, random_appearance


def _slice(c: int, seed: int = 0, shape=(48, 56)) -> np.ndarray:
    # a smooth gradient plus blobs plus texture, so every transform has something to act on
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, shape[0]), np.linspace(0, 1, shape[1]), indexing="ij")
    base = 0.5 * xx + 0.3 * np.exp(-((yy - 0.5) ** 2 + (xx - 0.4) ** 2) / 0.02)
    img = np.stack([base * (0.8 + 0.2 * i) + 0.1 * rng.random(shape) for i in range(c)])
    return img.astype(np.float32)


@pytest.mark.parametrize("c", [1, 3, 2])
def test_shape_dtype_finite(c):
    img = _slice(c)
    rng = np.random.default_rng(1)
    for _ in range(20):
        out = random_appearance(img, rng)
        assert out.shape == img.shape and out.dtype == np.float32 and np.isfinite(out).all()
    views = appearance_views(img, 4, seed=3)
    assert views.shape == (4, *img.shape) and views.dtype == np.float32 and np.isfinite(views).all()


def test_same_seed_same_views_and_different_seeds_differ():
    img = _slice(3)
    np.testing.assert_array_equal(appearance_views(img, 5, seed=7), appearance_views(img, 5, seed=7))
    assert np.abs(appearance_views(img, 5, seed=7) - appearance_views(img, 5, seed=8)).mean() > 1e-3
    r1, r2 = np.random.default_rng(11), np.random.default_rng(11)
    np.testing.assert_array_equal(random_appearance(img, r1), random_appearance(img, r2))


@pytest.mark.parametrize("c", [1, 3])
def test_views_differ_from_input(c):
    img = _slice(c)
    views = appearance_views(img, 30, seed=0)
    diffs = np.abs(views - img[None]).mean(axis=(1, 2, 3)) / (img.max() - img.min())
    assert diffs.mean() > 0.03  # clearly changed on average
    assert (diffs > 1e-3).mean() > 0.9  # and nearly every view is changed at all


def test_each_op_alone_changes_the_image():
    img = _slice(3)
    for op in OPS:
        rng = np.random.default_rng(0)
        changed = [np.abs(random_appearance(img, rng, ops=(op,)) - img).mean() > 1e-4 for _ in range(10)]
        assert sum(changed) >= 8, op


@pytest.mark.parametrize("c", [1, 3])
def test_range_stays_within_input(c):
    img = _slice(c) * 300.0 - 120.0  # not in [0, 1]: each image is treated in its own range
    views = appearance_views(img, 40, seed=5)
    assert views.min() >= img.min() and views.max() <= img.max()
    assert views.max() - views.min() > 0.3 * (img.max() - img.min())  # not collapsed either


def test_constant_input_is_finite():
    img = np.full((3, 32, 32), 0.7, dtype=np.float32)
    views = appearance_views(img, 10, seed=0)
    assert np.isfinite(views).all()
    np.testing.assert_allclose(views, 0.7, atol=1e-6)


def test_non_monotonic_remaps_occur():
    img = _slice(1)
    rng = np.random.default_rng(2)
    corr = [np.corrcoef(img.ravel(), random_appearance(img, rng).ravel())[0, 1] for _ in range(50)]
    assert np.nanmin(corr) < 0  # some view reverses contrast
    assert np.nanmax(corr) > 0.5  # and others keep it
    # the curves themselves: both increasing and non-monotonic ones are drawn
    rng = np.random.default_rng(0)
    steps = [np.diff(_curve(rng)) for _ in range(50)]
    assert any((s >= -1e-12).all() for s in steps)
    assert any((s > 1e-6).any() and (s < -1e-6).any() for s in steps)
