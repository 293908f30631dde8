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


def test_colour_jitter_keeps_grey_grey_and_changes_colour():
    from samunet.sam.appearance_views import colour_jitter

    rng = np.random.default_rng(4)
    grey = np.repeat(_slice(1), 3, axis=0)  # an RGB image without colour
    for _ in range(10):
        out = colour_jitter(grey.copy(), rng)
        assert out.shape == grey.shape and 0.0 <= out.min() and out.max() <= 1.0
        np.testing.assert_allclose(out[0], out[1], atol=1e-6)  # no colour invented
        np.testing.assert_allclose(out[0], out[2], atol=1e-6)
    img = _slice(3)  # its channels differ: a colour cast to rotate and rescale
    changed = [np.abs(colour_jitter(img.copy(), rng) - img).mean() for _ in range(20)]
    assert np.mean(changed) > 0.01 and min(changed) > 1e-4
    # the hue rotation is a rotation about the grey axis: it keeps each pixel's channel mean
    a = np.deg2rad(17.0)
    from samunet.sam import appearance_views as av

    class FixedRng:  # brightness, contrast, gamma and saturation at their neutral values
        def uniform(self, lo, hi, size=None):
            if (lo, hi) == (-18.0, 18.0):
                return np.rad2deg(a)
            mid = 0.0 if lo < 0 else 1.0
            return mid if size is None else np.full(size, mid)

    out = av.colour_jitter(img.copy() * 0.5 + 0.25, FixedRng())
    np.testing.assert_allclose(out.mean(axis=0), (img * 0.5 + 0.25).mean(axis=0), atol=1e-6)
    assert np.abs(out - (img * 0.5 + 0.25)).max() > 1e-3


def test_ops_restrict_the_views():
    img = _slice(3)
    a = appearance_views(img, 3, seed=2, ops=("colour_jitter",))
    b = random_appearance(img, np.random.default_rng(2), ops=("colour_jitter",))
    np.testing.assert_array_equal(a[0], b)
