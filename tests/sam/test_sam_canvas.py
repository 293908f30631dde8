"""The SAM canvas (plans.json sam.canvas_px): slices of a smaller field of view keep the physical
scale of the training slices in SAM's input instead of being enlarged to fill it."""

import numpy as np
import pytest
import torch

from samunet.experiment_planning.planner import CANVAS_PERCENTILE, suggest_canvas
from samunet.experiment_planning.sam_input import sam_input_cache_key
from samunet.sam.embedding_lru import encoder_identity
from samunet.sam.wrapper import frame_scale, scaled_size

from test_sam_input_channels import tiny_sam  # noqa: E402 (rootdir-relative, as pytest imports test modules)


def test_frame_scale_and_size_with_and_without_a_canvas():
    assert frame_scale((320, 320), 256) == pytest.approx(0.8)
    assert frame_scale((224, 224), 256) == pytest.approx(256 / 224)  # no canvas: fills S
    assert frame_scale((224, 224), 256, 320) == pytest.approx(0.8)  # canvas: the 320 px slices' scale
    assert frame_scale((400, 300), 256, 320) == pytest.approx(256 / 400)  # larger than the canvas: shrunk to fit
    assert scaled_size((224, 160), 256, 320) == (179, 128)
    assert scaled_size((224, 160), 256) == (256, 183)


def _disc_slice(side: int, centre, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:side, :side]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2).astype(np.float32)


def test_a_cropped_slice_keeps_the_object_size_in_sams_input():
    """The same disc, in a 320 px slice and in a 224 px crop of it (a smaller field of view at the same
    spacing): with the canvas its area in SAM's input is the same; without, the crop enlarges it."""
    full = _disc_slice(320, (160, 160), 40)
    crop = full[48:272, 48:272]
    areas = {}
    for canvas in (None, 320):
        sam = tiny_sam().configure_from_plan({"num_channels": 1, "sam": {"canvas_px": canvas}})
        for name, sl in (("full", full), ("crop", crop)):
            x, hw = sam.prepare_images(torch.from_numpy(sl)[None, None])
            assert x.shape == (1, 3, 256, 256)
            assert not x[0, :, hw[0]:].any() and not x[0, :, :, hw[1]:].any()  # padding bottom/right is 0
            areas[canvas, name] = float((x[0, 0] > 0.5).sum())
    assert areas[320, "crop"] == pytest.approx(areas[320, "full"], rel=0.03)
    assert areas[None, "crop"] > 1.8 * areas[None, "full"]


def test_boxes_and_logits_map_through_the_canvas_frame():
    sam = tiny_sam().configure_from_plan({"num_channels": 1, "sam": {"canvas_px": 320}})
    sl = _disc_slice(224, (100, 60), 20)
    _, hw = sam.prepare_images(torch.from_numpy(sl)[None, None])
    box = torch.tensor([[40.0, 80.0, 80.0, 120.0]])
    assert torch.allclose(sam.scale_boxes(box, (224, 224)), box * 0.8)
    # a low-resolution mask drawn at the scaled box comes back at the box in the slice frame
    low = torch.full((1, 1, 256, 256), -10.0)
    low[..., 64:96, 32:64] = 10.0
    back = sam.postprocess_logits(low, hw, (224, 224))[0, 0] > 0
    ys, xs = np.nonzero(back.numpy())
    assert abs(ys.min() - 80) <= 2 and abs(ys.max() - 119) <= 2 and abs(xs.min() - 40) <= 2 and abs(xs.max() - 79) <= 2


@pytest.mark.parametrize("bad", [0, -5, 2.5, "320", True])
def test_a_bad_canvas_in_the_plan_is_refused_naming_the_key(bad):
    with pytest.raises(ValueError, match="sam.canvas_px"):
        tiny_sam().configure_from_plan({"num_channels": 1, "sam": {"canvas_px": bad}}, "x/plans.json")


def test_the_canvas_keys_the_embedding_caches():
    plain = {"num_channels": 1, "sam": {}}
    with_canvas = {"num_channels": 1, "sam": {"canvas_px": 320}}
    assert sam_input_cache_key(plain) is None  # caches of plans without the key stay valid
    assert sam_input_cache_key(with_canvas)["canvas_px"] == 320
    sam = tiny_sam().configure_from_plan(plain)
    before = encoder_identity(sam)  # the prediction LRU's key
    assert encoder_identity(sam.configure_from_plan(with_canvas)) != before


def _case(shape, spacing, io="SimpleITKIO"):
    return {"shape_after_crop": list(shape), "spacing": list(spacing), "io": io}


def test_the_planner_leaves_the_canvas_off_and_suggests_one_from_the_cases_fields_of_view():
    # 19 cases of 200 mm at 0.625 mm (320 px) and one of 300 mm: the percentile keeps 320-ish
    cases = {f"c{i}": _case((20, 320, 320), (3.6, 0.625, 0.625)) for i in range(19)}
    cases["big"] = _case((20, 480, 480), (3.6, 0.625, 0.625))
    px, why = suggest_canvas(cases, [0, 1, 2], [0.625, 0.625], natural=False)
    assert CANVAS_PERCENTILE == 95 and px == 328 and f"{CANVAS_PERCENTILE}th percentile" in why
    # a smaller field of view at a finer spacing (384 px at 0.25 mm) resamples to fewer pixels (153.6)
    cases = {"a": _case((20, 320, 320), (3.6, 0.625, 0.625)), "b": _case((20, 384, 384), (3.6, 0.25, 0.25))}
    px, _ = suggest_canvas(cases, [0, 1, 2], [0.625, 0.625], natural=False)
    assert px == 312  # 153.6 + 0.95 * (320 - 153.6), rounded up
    px, why = suggest_canvas({"a": _case((1, 500, 600), (999, 1, 1), "NaturalImage2DIO")}, [0, 1, 2], [1, 1], True)
    assert px is None and "natural images" in why


def test_a_plan_has_no_canvas_and_says_what_one_would_be():
    from samunet.experiment_planning.planner import plan_experiment

    from test_sam_input_channels import _dataset_json, _fingerprint  # noqa: E402

    plans = plan_experiment(_dataset_json(["MRI"]), _fingerprint(1), "Dataset042_X")
    assert plans["sam"]["canvas_px"] is None
    assert "sam.canvas_px 64" in plans["decisions"]["sam_canvas"]
    sam = tiny_sam().configure_from_plan(plans)
    assert sam.canvas_px is None and sam.frame_scale((32, 32)) == 8.0  # fills SAM's input, as before
