"""Appearance views under a time budget: how many fit, the decision kept per fold, and the planner's
choice by what SAM's encoder is fed."""

import pytest

from samunet.experiment_planning.method_defaults import appearance_views_for
from samunet.training import view_budget


def test_views_that_fit_counts_whole_views_in_order():
    # 100 slices per view at 0.5 s: 50 s each
    assert view_budget.views_that_fit([100, 100], 0.5, 120.0) == 2
    assert view_budget.views_that_fit([100, 100], 0.5, 99.0) == 1
    assert view_budget.views_that_fit([100, 100], 0.5, 49.0) == 0
    assert view_budget.views_that_fit([100, 100], 0.5, None) == 2  # no budget: every view
    assert view_budget.views_that_fit([0, 0, 100], 0.5, 10.0) == 2  # cached views cost nothing
    assert view_budget.views_that_fit([], 0.5, 10.0) == 0
    with pytest.raises(ValueError):
        view_budget.views_that_fit([1], -1.0, 10.0)


def test_a_decision_is_reused_only_for_the_same_planned_views(tmp_path):
    key = view_budget.decision_key(2, ["view1", "view2"])
    assert view_budget.stored_decision(tmp_path, key) is None
    view_budget.record_decision(tmp_path, key, 1, 0.4, 100.0, [200, 200])
    assert view_budget.stored_decision(tmp_path, key) == 1
    assert view_budget.stored_decision(tmp_path, view_budget.decision_key(2, ["view1_s3", "view2_s3"])) is None
    assert view_budget.stored_decision(tmp_path, view_budget.decision_key(3, ["view1", "view2", "view3"])) is None
    (tmp_path / view_budget.DECISION_FILE).write_text("{not json")
    assert view_budget.stored_decision(tmp_path, key) is None


def test_planner_gives_grey_inputs_views_and_colour_none():
    assert appearance_views_for("replicate")[0] == 2
    assert appearance_views_for("rgb")[0] == 0


def test_used_view_tags_are_the_first_used_views_and_none_for_a_bad_file(tmp_path):
    from samunet.training.view_budget import DECISION_FILE, used_view_tags
    from samunet.utilities.file_io import save_json

    assert used_view_tags(tmp_path) == []
    save_json({"planned": 2, "views": ["view1", "view2"], "used": 1}, tmp_path / DECISION_FILE)
    assert used_view_tags(tmp_path) == ["view1"]
    save_json({"planned": 2, "views": ["view1", "view2"], "used": "x"}, tmp_path / DECISION_FILE)
    assert used_view_tags(tmp_path) == []
