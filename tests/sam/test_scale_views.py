"""Scale views (samunet.sam.scale_views): zooms made on the slice before the encoder, the label
slice mapped by the same zoom."""

import numpy as np
import pytest

from samunet.sam.scale_views import Zoom, apply_zoom, random_zoom, slice_zoom


def _square(shape=(100, 120), box=(40, 60, 50, 70)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    y0, y1, x0, x1 = box
    m[y0:y1, x0:x1] = 1
    return m


def _extent(m):
    ys, xs = np.nonzero(m)
    return ys.min(), ys.max(), xs.min(), xs.max()


def test_shrink_places_the_content_at_the_offset():
    out = apply_zoom(_square(), Zoom(0.5, 10.0, 20.0), order=0, fill=0)
    # rows 40..59 -> 30..39.5, cols 50..69 -> 45..54.5 ; a 20x20 square becomes 10x10
    assert np.allclose(_extent(out), (30, 39, 45, 54), atol=1) and out.sum() == 100
    assert out.dtype == np.uint8 and out.shape == (100, 120)


def test_enlarge_shows_a_window_scaled_up():
    out = apply_zoom(_square(), Zoom(2.0, -50.0, -60.0), order=0, fill=0)
    assert out.sum() == 1600  # 20x20 -> 40x40
    # input rows 40..59 -> 30..68 as points (nearest neighbour fills the half pixel either side)
    assert np.allclose(_extent(out), (30, 69, 40, 79), atol=1)


def test_image_and_label_stay_aligned_and_fill_is_the_minimum():
    rng = np.random.default_rng(0)
    seg = _square()
    img = np.stack([seg * 5.0 + 1.0 + 0.01 * rng.random(seg.shape) for _ in range(3)]).astype(np.float32)
    for _ in range(10):
        z = random_zoom(rng, seg.shape)
        s = apply_zoom(seg, z, order=0, fill=0)
        im = apply_zoom(img, z, order=1)
        assert im.shape == img.shape and im.dtype == np.float32
        assert im.min() >= img.min() - 1e-5  # filled with the minimum, never below
        inside = s.astype(bool)
        if inside.sum() > 20:  # the object's pixels are bright in the image too (bilinear edges aside)
            assert np.median(im[0][inside]) > 5.0


@pytest.mark.parametrize("shape", [(100, 120), (64, 64)])
def test_random_zoom_range_and_coverage(shape):
    rng = np.random.default_rng(3)
    zooms = [random_zoom(rng, shape, (0.6, 1.4)) for _ in range(300)]
    scales = np.array([z.scale for z in zooms])
    assert scales.min() >= 0.6 and scales.max() <= 1.4
    assert (scales < 0.8).any() and (scales > 1.2).any()
    h, w = shape
    for z in zooms:  # shrunk content inside the canvas, an enlarged window inside the content
        if z.scale <= 1:
            assert -1e-9 <= z.oy <= h - z.scale * h + 1e-9 and -1e-9 <= z.ox <= w - z.scale * w + 1e-9
        else:
            assert h - z.scale * h - 1e-9 <= z.oy <= 1e-9 and w - z.scale * w - 1e-9 <= z.ox <= 1e-9
    with pytest.raises(ValueError, match="scale_range"):
        random_zoom(rng, shape, (1.2, 0.8))


def test_slice_zoom_is_reproducible_and_differs_by_view_and_slice():
    a = slice_zoom(0, 1, 123, 4, (64, 64))
    assert a == slice_zoom(0, 1, 123, 4, (64, 64))
    assert a != slice_zoom(0, 2, 123, 4, (64, 64)) and a != slice_zoom(0, 1, 123, 5, (64, 64))
