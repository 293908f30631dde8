"""Box prompts and the SAMMed 2×2 mosaic (numpy, no model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samunet.sam import (
    full_box,
    jitter_box,
    largest_component_box,
    make_mosaic,
    mask_box,
    mosaic_box,
    split_mosaic,
    unfiltered_box,
)


def _box_inside(box, x_range, y_range):
    return x_range[0] <= box[0] <= box[2] <= x_range[1] and y_range[0] <= box[1] <= box[3] <= y_range[1]


def test_mask_box_inclusive_and_empty():
    m = np.zeros((20, 30), bool)
    assert mask_box(m) is None
    m[5, 7] = True
    np.testing.assert_array_equal(mask_box(m), [7, 5, 7, 5])
    m[10:15, 2:4] = True
    np.testing.assert_array_equal(mask_box(m), [2, 5, 7, 14])
    assert mask_box(m).dtype == np.int64
    np.testing.assert_array_equal(full_box((20, 30)), [0, 0, 29, 19])


def test_largest_component_chosen_among_several():
    prob = np.zeros((64, 64), np.float32)
    prob[4:8, 4:8] = 0.9          # small, 1 block
    prob[32:48, 16:40] = 0.95     # large: blocks rows 8..11, cols 4..9
    prob[56:60, 56:64] = 0.8      # medium, 2 blocks
    prob[20:30, 0:2] = 0.5        # below threshold, ignored
    np.testing.assert_array_equal(largest_component_box(prob), [16, 32, 39, 47])
    # the unfiltered box spans every pixel above theta
    np.testing.assert_array_equal(unfiltered_box(prob, theta=0.75), [4, 4, 63, 59])
    np.testing.assert_array_equal(unfiltered_box(prob, theta=0.9), [16, 32, 39, 47])


def test_largest_component_tie_takes_first_and_diagonal_not_connected():
    prob = np.zeros((32, 32))
    prob[0:4, 0:4] = 1.0
    prob[4:8, 4:8] = 1.0          # diagonal neighbour block: not 4-connected
    np.testing.assert_array_equal(largest_component_box(prob), [0, 0, 3, 3])


def test_block_aligned_rectangle_exact_and_empty():
    prob = np.zeros((128, 128))
    assert largest_component_box(prob) is None
    prob[8:24, 12:40] = 1.0       # multiples of 4 → exact after scale-back
    np.testing.assert_array_equal(largest_component_box(prob), [12, 8, 39, 23])
    # exactly at threshold is not foreground (strict >)
    prob2 = np.full((16, 16), 0.75)
    assert largest_component_box(prob2, theta1=0.75) is None


def test_one_pixel_object_survives_and_border_clipping():
    prob = np.zeros((30, 30))     # not a multiple of 4 → padded
    prob[13, 6] = 1.0
    box = largest_component_box(prob)
    np.testing.assert_array_equal(box, [4, 12, 7, 15])
    assert box[0] <= 6 <= box[2] and box[1] <= 13 <= box[3]
    prob = np.zeros((30, 30))
    prob[25:30, 27:30] = 1.0      # touches bottom/right border, in the padded last block
    box = largest_component_box(prob)
    np.testing.assert_array_equal(box, [24, 24, 29, 29])
    prob = np.zeros((30, 30))
    prob[0:3, 0:30] = 1.0         # touches the top border over the whole width
    np.testing.assert_array_equal(largest_component_box(prob), [0, 0, 29, 3])


def test_jitter_within_bounds_never_shrinks():
    rng = np.random.default_rng(0)
    shape = (64, 80)
    boxes = [np.array([10, 12, 40, 50]), np.array([0, 0, 79, 63]), np.array([2, 60, 77, 62])]
    seen = set()
    for box in boxes:
        for _ in range(200):
            j = jitter_box(box, rng, max_shift=9, shape_hw=shape)
            assert j[0] <= box[0] and j[1] <= box[1] and j[2] >= box[2] and j[3] >= box[3]
            assert 0 <= j[0] and 0 <= j[1] and j[2] <= shape[1] - 1 and j[3] <= shape[0] - 1
            assert np.all(np.abs(j - box) <= 9)
            seen.update((box[:2] - j[:2]).tolist())
    assert seen == set(range(10))  # every shift 0..9 occurs
    j = jitter_box([5, 5, 6, 6], np.random.default_rng(1), max_shift=0, shape_hw=shape)
    np.testing.assert_array_equal(j, [5, 5, 6, 6])


def test_mosaic_round_trip_numpy_and_torch():
    rng = np.random.default_rng(0)
    tiles = [rng.random((3, 8, 10)).astype(np.float32) for _ in range(4)]
    canvas, valid = make_mosaic(tiles)
    assert canvas.shape == (3, 16, 20) and valid == [True] * 4
    np.testing.assert_array_equal(canvas[:, 0:8, 10:20], tiles[1])   # k=1 → row 0, col 1
    np.testing.assert_array_equal(canvas[:, 8:16, 0:10], tiles[2])   # k=2 → row 1, col 0
    for a, b in zip(split_mosaic(canvas, (8, 10)), tiles):
        np.testing.assert_array_equal(a, b)
    # incomplete group: blank, invalid tiles
    canvas, valid = make_mosaic(tiles[:3])
    assert valid == [True, True, True, False]
    assert not split_mosaic(canvas, (8, 10))[3].any()
    # torch masks (H, W)
    t = [torch.full((4, 6), float(k + 1)) for k in range(4)]
    canvas, valid = make_mosaic(t)
    assert isinstance(canvas, torch.Tensor) and canvas.shape == (8, 12)
    for k, part in enumerate(split_mosaic(canvas, (4, 6))):
        assert torch.equal(part, t[k])


@pytest.mark.parametrize("tile_hw", [(512, 512), (40, 60)])
def test_mosaic_box_lands_in_own_tile(tile_hw):
    H, W = tile_hw
    box = np.array([3, 5, W - 4, H - 6])
    for k in range(4):
        i, j = divmod(k, 2)
        mb = mosaic_box(box, k, tile_hw)
        assert _box_inside(mb, (W * j, W * j + W - 1), (H * i, H * i + H - 1))
        np.testing.assert_array_equal(mb - box, [W * j, H * i, W * j, H * i])
        # a box in a mosaic canvas covers the same pixels as in its tile
        tile = np.zeros(tile_hw, bool)
        tile[box[1]:box[3] + 1, box[0]:box[2] + 1] = True
        tiles = [np.zeros(tile_hw, bool) for _ in range(4)]
        tiles[k] = tile
        canvas, _ = make_mosaic(tiles)
        np.testing.assert_array_equal(mask_box(canvas), mb)


def test_legacy_mosaic_box_transposed_on_off_diagonal():
    H, W = 512, 512
    box = np.array([100, 50, 200, 150])
    for k in (0, 3):
        np.testing.assert_array_equal(mosaic_box(box, k, (H, W), legacy_box_offset=True), mosaic_box(box, k, (H, W)))
    for k, (ti, tj) in ((1, (1, 0)), (2, (0, 1))):  # lands in the transposed tile
        mb = mosaic_box(box, k, (H, W), legacy_box_offset=True)
        assert _box_inside(mb, (W * tj, W * tj + W - 1), (H * ti, H * ti + H - 1))
        i, j = divmod(k, 2)
        assert not _box_inside(mb, (W * j, W * j + W - 1), (H * i, H * i + H - 1))
    # non-square tiles: legacy adds H*i to x and W*j to y
    np.testing.assert_array_equal(mosaic_box([0, 0, 1, 1], 3, (10, 20), legacy_box_offset=True), [10, 20, 11, 21])
    np.testing.assert_array_equal(mosaic_box([0, 0, 1, 1], 3, (10, 20)), [20, 10, 21, 11])


def test_user_boxes_follow_crop_and_resampling():
    from samunet.sam.box_prompting import user_boxes_to_preprocessed

    props = {"bbox": [[2, 8], [10, 110], [20, 220]], "shape_after_crop": [6, 100, 200],
             "shape_after_resampling": [6, 100, 200]}
    out = user_boxes_to_preprocessed({"3": {"1": [30, 40, 60, 90]}, "9": {"1": [0, 0, 5, 5]}}, props)
    assert list(out) == [1]  # slice 3 -> 1 after the crop; slice 9 lies outside it
    assert out[1][1].tolist() == [10, 30, 40, 80]
    half = dict(props, shape_after_resampling=[6, 50, 100])
    b = user_boxes_to_preprocessed({"3": {"1": [20, 10, 219, 109]}}, half)[1][1]
    assert b.tolist() == [0, 0, 99, 49]  # the whole cropped slice stays the whole slice
