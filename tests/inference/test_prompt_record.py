"""prompts.json: prompts mapped from the preprocessed frame back to the prediction's frame."""

import json

import numpy as np
import pytest

from samunet.inference.prompt_record import PromptsJson, prompts_to_input_frame
from samunet.sam.box_prompting import user_boxes_to_preprocessed


def _props(tf=(0, 1, 2)):
    # original array (axis order as read) 10 x 40 x 60; transposed, cropped to z 2..8, y 5..35,
    # x 10..50 (30 x 40), then resampled in plane to 60 x 20 (sy 2, sx 0.5)
    return {"transpose_forward": list(tf), "bbox": [[2, 8], [5, 35], [10, 50]],
            "shape_after_crop": [6, 30, 40], "shape_after_resampling": [6, 60, 20]}


def test_box_round_trip_through_crop_and_resampling():
    props = _props()
    user = {"4": {"1": [20, 11, 31, 24]}}  # input frame, slice 4
    pre = user_boxes_to_preprocessed(user, props)
    (zi, per_label), = pre.items()
    entries = [{"z": zi, "label": 1, "box": per_label[1].tolist()}]
    back, = prompts_to_input_frame(entries, props)
    assert back["z"] == 4 and back["label"] == 1
    np.testing.assert_allclose(back["box"], [20, 11, 31, 24], atol=1.0)  # rounding to preprocessed pixels


def test_points_keep_labels_and_map_exactly():
    props = _props()
    entries = [{"z": 1, "label": 2, "points": [[0.0, 0.0], [19.0, 59.0]], "point_labels": [1, 0], "fold": "3"}]
    back, = prompts_to_input_frame(entries, props)
    assert back["z"] == 3 and back["label"] == 2 and back["point_labels"] == [1, 0] and back["fold"] == "3"
    # x: (x + .5) / .5 - .5 + 10; y: (y + .5) / 2 - .5 + 5
    np.testing.assert_allclose(back["points"], [[10.5, 4.75], [48.5, 34.25]], atol=0.06)


def test_transposed_plan_puts_each_point_on_its_original_slice():
    # tf = [2, 0, 1]: preprocessed slice axis is original axis 2, y is original 0, x original 1
    props = _props(tf=(2, 0, 1))
    props.update(bbox=[[0, 60], [0, 10], [0, 40]], shape_after_crop=[60, 10, 40], shape_after_resampling=[60, 10, 40])
    entries = [{"z": 7, "label": 1, "points": [[3.0, 2.0], [5.0, 9.0]], "point_labels": [1, 1]}]
    back = prompts_to_input_frame(entries, props)
    # original (axis0, axis1, axis2) = (y, x, z) = (2, 3, 7) and (9, 5, 7): one entry per original slice
    assert [(e["z"], e["points"]) for e in back] == [(2, [[7.0, 3.0]]), (9, [[7.0, 5.0]])]


def test_prompts_json_keeps_other_cases_and_writes_atomically(tmp_path):
    (tmp_path / "prompts.json").write_text(json.dumps({"old": [{"z": 0, "label": 1, "box": [0, 0, 1, 1]}]}))
    pj = PromptsJson(tmp_path)
    pj.add("new", [{"z": 0, "label": 1, "box": [2, 3, 4, 5]}], {"bbox": [[0, 1], [0, 9], [0, 9]],
                                                               "shape_after_crop": [1, 9, 9],
                                                               "shape_after_resampling": [1, 9, 9]})
    pj.save()
    data = json.loads((tmp_path / "prompts.json").read_text())
    assert sorted(data) == ["new", "old"] and data["new"][0]["box"] == [2, 3, 4, 5]
    assert [p.name for p in tmp_path.iterdir()] == ["prompts.json"]


def test_parts_write_files_of_their_own(tmp_path):
    (tmp_path / "prompts.json").write_text(json.dumps({"other": []}))
    pj = PromptsJson(tmp_path, "prompts.part1.json")
    assert pj.cases == {}  # never reads (or rewrites) the unsharded file
    pj.add("c", [{"z": 0, "label": 1, "box": [2, 3, 4, 5]}], _props())
    assert pj.save() == tmp_path / "prompts.part1.json"
    assert json.loads((tmp_path / "prompts.json").read_text()) == {"other": []}


def test_unreadable_prompts_json_is_rebuilt(tmp_path):
    (tmp_path / "prompts.json").write_text("{truncated")
    assert PromptsJson(tmp_path).cases == {}


@pytest.mark.parametrize("entries", [[]])
def test_no_prompts_gives_empty_list(entries):
    assert prompts_to_input_frame(entries, _props()) == []
