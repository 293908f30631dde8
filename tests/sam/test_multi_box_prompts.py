"""Boxes for labels with several parts, per-box targets, jitter bounds."""

import numpy as np
import pytest

from samunet.sam.box_prompting import (case_box_sets, component_target, labels_in_every_case, multi_box_settings,
                                       nested_label_depths, slice_box_sets, slice_boxes)
from samunet.sam.prompts import component_boxes, jitter_box, mask_box, most_probable_region

PROMPTING = {"theta1": 0.5, "mask_downsample_factor": 4, "box_jitter_px": [0, 0], "boxes_per_label": 4,
             "component_min_fraction": 0.2, "component_min_pixels": 4}


def two_lungs(shape=(64, 64)):
    m = np.zeros(shape, dtype=np.float32)
    m[10:40, 5:25] = 1.0  # left lung, 600 px
    m[12:44, 35:60] = 1.0  # right lung, 800 px
    m[55:57, 55:57] = 1.0  # 4 px speck: below 20 % of the largest
    return m


def test_one_box_per_sizeable_component_largest_first_and_exact():
    boxes = component_boxes(two_lungs(), 0.5, min_fraction=0.2, max_boxes=4, min_pixels=4)
    assert [b.tolist() for b in boxes] == [[35, 12, 59, 43], [5, 10, 24, 39]]
    # SAMMed's rule (largest component only) loses the other lung
    assert [b.tolist() for b in component_boxes(two_lungs(), 0.5, max_boxes=1)] == [[35, 12, 59, 43]]
    assert component_boxes(np.zeros((8, 8)), 0.5) == []


def test_components_closer_than_a_downsampling_block_stay_apart():
    m = np.zeros((32, 32))
    m[4:12, 4:10] = 1
    m[4:12, 11:17] = 1  # one-pixel gap
    assert len(component_boxes(m, 0.5, min_fraction=0.1)) == 2


def test_slice_box_sets_uses_the_plan_and_old_plans_keep_one_box():
    probs = two_lungs()[None]
    sets = slice_box_sets("auto", probs, None, [1], PROMPTING)
    assert sets[1].shape == (2, 4)
    legacy = {k: v for k, v in PROMPTING.items() if k not in ("boxes_per_label", "component_min_fraction",
                                                                 "component_min_pixels")}
    assert multi_box_settings(legacy) is None
    assert slice_box_sets("auto", probs, None, [1], legacy)[1].shape == (1, 4)
    # reference boxes stay one tight box around the whole label
    ref = (two_lungs() > 0).astype(np.uint8)
    assert slice_box_sets("gt_box", None, ref, [1], PROMPTING)[1].shape == (1, 4)


def test_component_target_is_the_objects_the_box_touches():
    mask = two_lungs() > 0
    left = component_target(mask, [5, 10, 24, 39])
    assert left[20, 10] and not left[20, 40] and not left[56, 56]
    assert not component_target(mask, [0, 50, 3, 63]).any()  # a false-positive box: empty target
    # a box that cuts an object keeps the whole object
    assert component_target(mask, [5, 10, 10, 15]).sum() == 600


def test_jitter_respects_both_bounds():
    rng = np.random.default_rng(0)
    for _ in range(50):
        b = jitter_box([20, 20, 30, 30], rng, max_shift=5, shape_hw=(100, 100), min_shift=3)
        grow = np.array([20 - b[0], 20 - b[1], b[2] - 30, b[3] - 30])
        assert ((grow >= 3) & (grow <= 5)).all()
    with pytest.raises(ValueError, match="box_jitter_px"):
        jitter_box([0, 0, 5, 5], rng, max_shift=2, min_shift=3)
    # slice_boxes passes the plan's lower bound through
    out = slice_boxes("gt_box", None, (two_lungs() > 0).astype(int), [1], {**PROMPTING, "box_jitter_px": [2, 2]},
                      rng=np.random.default_rng(1))
    assert out[1].tolist() == [3, 8, 61, 58]  # tight box of all parts (speck included), grown by 2


def test_an_unsure_stage1_falls_back_to_its_own_mask_threshold():
    prompting = dict(PROMPTING, theta1=0.75, theta1_fallback=0.5)
    unsure = two_lungs()[None] * 0.6  # the object is there, but nowhere above theta1
    sets = slice_box_sets("auto", unsure, None, [1], prompting)
    assert [b.tolist() for b in sets[1]] == [[35, 12, 59, 43], [5, 10, 24, 39]]
    # without the key (plans written before it) or with nothing above the fallback either: no box
    assert slice_box_sets("auto", unsure, None, [1], dict(PROMPTING, theta1=0.75)) == {}
    assert slice_box_sets("auto", two_lungs()[None] * 0.4, None, [1], prompting) == {}
    # a confident component keeps theta1's rule: the unsure one beside it gets no box of its own
    mixed = two_lungs() * 0.6
    mixed[12:44, 35:60] = 0.9
    sets = slice_box_sets("auto", mixed[None], None, [1], prompting)
    assert [b.tolist() for b in sets[1]] == [[35, 12, 59, 43]]


def test_a_label_in_every_training_image_gets_the_box_of_its_most_probable_region():
    prompting = dict(PROMPTING, theta1=0.75, theta1_fallback=0.5, presence_relative=0.5)
    faint = np.zeros((1, 1, 64, 64), dtype=np.float32)  # (K_fg, Z, Y, X): one image
    faint[0, 0, 10:20, 30:50] = 0.3  # the object: stage 1 is unsure, nowhere above either threshold
    faint[0, 0, 14, 40] = 0.4  # its peak
    faint[0, 0, 50:60, 5:10] = 0.1  # a weaker region elsewhere: below half the peak
    assert case_box_sets(faint, [1], prompting) == [{}]  # no prior: no box, as before
    sets = case_box_sets(faint, [1], prompting, present={1})
    assert [b.tolist() for b in sets[0][1]] == [[30, 10, 49, 19]]
    assert case_box_sets(faint, [1], prompting, present={2}) == [{}]  # another label's prior
    assert case_box_sets(np.zeros((1, 1, 8, 8)), [1], prompting, present={1}) == [{}]  # nothing at all
    # a label stage 1 does find keeps the threshold rule
    sure = two_lungs()[None, None] * 0.9
    assert len(case_box_sets(sure, [1], prompting, present={1})[0][1]) == 2
    # plans without multi-box keys (SAMMed's rule) have no prior
    legacy = {k: v for k, v in prompting.items() if k not in ("boxes_per_label", "component_min_fraction")}
    assert case_box_sets(faint, [1], legacy, present={1}) == [{}]


def test_presence_prior_in_a_volume_boxes_the_most_probable_region_on_every_slice_it_spans():
    prompting = dict(PROMPTING, theta1=0.75, theta1_fallback=0.5, presence_relative=0.5)
    vol = np.zeros((2, 5, 32, 32), dtype=np.float32)  # two labels, five slices
    vol[0, 1:4, 8:16, 10:20] = 0.3  # label 1: faint on slices 1-3 ...
    vol[0, 2, 8:12, 10:14] = 0.35  # ... widest at its peak slice
    vol[0, 1, 20:24, 20:24] = 0.05  # below half the peak: no box
    vol[1, 3, 4:12, 4:12] = 0.9  # label 2: found on slice 3
    sets = case_box_sets(vol, [1, 2], prompting, present={1, 2})
    assert [sorted(s) for s in sets] == [[], [1], [1], [1, 2], []]
    assert all(sets[z][1].tolist() == [[10, 8, 19, 15]] for z in (1, 2, 3))
    assert sets[3][2].tolist() == [[4, 4, 11, 11]]  # found: its own box only, nothing added elsewhere
    # label 1 found on one slice (above theta1): the volume keeps the threshold rule
    found = vol.copy()
    found[0, 2, 8:12, 10:14] = 0.9
    sets = case_box_sets(found, [1, 2], prompting, present={1, 2})
    assert [sorted(s) for s in sets] == [[], [], [1], [2], []]
    # not known to be present: no prior
    assert [sorted(s) for s in case_box_sets(vol, [1, 2], prompting, present={2})] == [[], [], [], [2], []]


def test_most_probable_region():
    p = np.zeros((20, 20))
    p[2:5, 2:6] = 0.2
    p[10:15, 12:18] = 0.3
    p[12, 14] = 0.35
    assert mask_box(most_probable_region(p, 0.5)).tolist() == [12, 10, 17, 14]
    assert mask_box(most_probable_region(p, 0.5 * 0.2 / 0.35)).tolist() == [12, 10, 17, 14]  # still apart
    assert most_probable_region(np.zeros((4, 4))) is None
    diagonal = np.zeros((3, 4, 4))  # 26-connected across slices
    diagonal[0, 0, 0], diagonal[1, 1, 1], diagonal[2, 2, 2], diagonal[2, 3, 0] = 1.0, 0.9, 0.8, 0.9
    assert np.argwhere(most_probable_region(diagonal)).tolist() == [[0, 0, 0], [1, 1, 1], [2, 2, 2]]
    with pytest.raises(ValueError):
        most_probable_region(p, 0.0)
    with pytest.raises(ValueError):
        most_probable_region(np.zeros(5))


def test_labels_in_every_case():
    a = np.zeros((1, 8, 8), dtype=np.uint8)
    a[0, 1, 1], a[0, 5, 5] = 1, 2
    b = np.zeros((1, 8, 8), dtype=np.uint8)
    b[0, 2, 2] = 1  # no label 2
    assert labels_in_every_case([a, b], [1, 2]) == {1}
    assert labels_in_every_case([a, a], [1, 2]) == {1, 2}
    volume = np.zeros((3, 8, 8), dtype=np.uint8)
    volume[2, 4, 4] = 2  # a volume counts as one case: label 2 on one of its slices is enough
    assert labels_in_every_case([a, volume], [1, 2]) == {2}
    assert labels_in_every_case([], [1]) == frozenset()


def test_nested_label_depths():
    """A cup inside a disc rim (fundus), a core inside a ring inside a ring, side-by-side organs."""
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 32)
    fundus = np.where(r < 10, 2, np.where(r < 20, 1, 0))  # 1 rim, 2 cup
    assert nested_label_depths([fundus[None]] * 2, [1, 2]) == {2: 1}
    three = np.where(r < 6, 3, np.where(r < 14, 2, np.where(r < 24, 1, 0)))
    assert nested_label_depths([three], [1, 2, 3]) == {2: 1, 3: 2}
    side = np.zeros((2, 40, 80), int)
    side[:, 5:30, 5:35], side[:, 10:35, 45:75] = 1, 2
    assert nested_label_depths([side], [1, 2]) == {}
    # slices holding one label only say nothing; a single label has no nesting
    assert nested_label_depths([np.stack([fundus == 1, fundus == 2]).astype(int) * [[[1]], [[2]]]], [1, 2]) == {}
    assert nested_label_depths([fundus], [1]) == {}
    # below min_fraction: a central gland half inside the peripheral zone's box is nested at 0.5, not at 0.8
    half = np.zeros((1, 40, 40), int)
    half[0, 20:30, 5:35] = 1  # the peripheral zone: a band below
    half[0, 12:28, 10:30] = 2  # the central gland: 8 of its 16 rows inside the band's box
    assert nested_label_depths([half], [1, 2], min_fraction=0.5) == {2: 1}
    assert nested_label_depths([half], [1, 2], min_fraction=0.8) == {}
    # ignore and outside-crop values are not labels
    odd = fundus.copy()
    odd[:3] = -1
    odd[-3:] = 3
    assert nested_label_depths([odd], [1, 2]) == {2: 1}


def test_candidate_box_sets_add_distinct_threshold_sets_and_the_best_rated_set_wins():
    from samunet.sam.box_prompting import candidate_box_sets, pick_by_predicted_iou

    p = np.zeros((2, 32, 32), np.float32)
    p[0, 8:16, 8:16] = 0.9  # a confident core ...
    p[0, 6:20, 6:20] = np.maximum(p[0, 6:20, 6:20], 0.6)  # ... in a less sure rim
    p[1, 20:28, 20:28] = 0.9  # a label whose sets coincide at every threshold
    default = slice_box_sets("auto", p, None, [1, 2], {**PROMPTING, "theta1": 0.75})
    assert candidate_box_sets(default, p, [1, 2], PROMPTING) == list(default.items())  # off without the key
    pairs = candidate_box_sets(default, p, [1, 2], {**PROMPTING, "candidate_thresholds": [0.5, 0.75, 0.8]})
    assert [(l, b.tolist()) for l, b in pairs] == [(1, [[8, 8, 15, 15]]), (1, [[6, 6, 19, 19]]), (2, [[20, 20, 27, 27]])]
    assert pick_by_predicted_iou(pairs, np.array([0.7, 0.9, 0.5])) == [False, True, True]
    assert pick_by_predicted_iou(pairs, np.array([0.9, 0.9, 0.5])) == [True, False, True]  # ties: the default
    two = [(1, np.zeros((2, 4))), (1, np.zeros((1, 4)))]  # a set's score is the mean over its boxes
    assert pick_by_predicted_iou(two, np.array([0.9, 0.5, 0.8])) == [False, False, True]


def test_candidate_box_sets_are_jittered_with_test_time_jitter_and_theta1_counts_as_the_default():
    from samunet.sam.box_prompting import candidate_box_sets

    p = np.zeros((1, 32, 32), np.float32)
    p[0, 8:16, 8:16] = 0.9  # core: the θ1 (0.75) set
    p[0, 6:20, 6:20] = np.maximum(p[0, 6:20, 6:20], 0.6)  # rim: the 0.5 set
    prompting = {**PROMPTING, "theta1": 0.75, "box_jitter_px": [2, 3], "candidate_thresholds": [0.5, 0.75]}
    default = {1: np.array([[5, 5, 18, 18]])}  # the θ1 core box after jitter
    pairs = candidate_box_sets(default, p, [1], prompting, np.random.default_rng(0))
    assert len(pairs) == 2  # the jittered default, the rim; the un-jittered core is not added again
    assert pairs[0][1].tolist() == [[5, 5, 18, 18]]
    x0, y0, x1, y1 = pairs[1][1][0]
    assert 6 - 3 <= x0 <= 6 - 2 and 6 - 3 <= y0 <= 6 - 2 and 19 + 2 <= x1 <= 19 + 3 and 19 + 2 <= y1 <= 19 + 3
    plain = candidate_box_sets(default, p, [1], prompting)  # without rng: sets as found, compared to default
    assert [b.tolist() for _, b in plain] == [[[5, 5, 18, 18]], [[6, 6, 19, 19]], [[8, 8, 15, 15]]]


def test_scaled_boxes_grow_about_the_centre_and_stay_in_the_slice():
    from samunet.sam.box_prompting import scaled_boxes

    boxes = np.array([[10, 20, 29, 29], [0, 0, 9, 99]])  # 20 x 10 px, and one on the slice's edge
    np.testing.assert_array_equal(scaled_boxes(boxes, 1.0, (100, 100)), boxes)
    out = scaled_boxes(boxes, 1.2, (100, 100))
    np.testing.assert_allclose(out[0], [8, 19, 31, 30])  # each side by 0.1 of the width / height
    np.testing.assert_allclose(out[1], [0, 0, 10, 99])  # clipped to the slice
    np.testing.assert_allclose(scaled_boxes(boxes[:1], 0.5, (100, 100)), [[15, 22.5, 24, 26.5]])
    with pytest.raises(ValueError, match="box_scale"):
        scaled_boxes(boxes, 0, (100, 100))
