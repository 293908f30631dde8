"""nnU-Net v2 label features in dataset.json: the ``ignore`` label is planned as no class;
region-based labels are refused with the alternative."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ignore_label_data import IGNORE, make_ignore_raw
from samunet.dataset_conversion.dataset_json import (
    DatasetJsonError,
    all_label_values,
    foreground_labels,
    ignore_label,
    label_values,
    validate_dataset_json,
)


def _dj(labels, **extra):
    return {"channel_names": {"0": "MRI"}, "labels": labels, "numTraining": 2, "file_ending": ".nii.gz", **extra}


def test_ignore_label_is_no_class():
    dj = _dj({"background": 0, "liver": 1, "tumour": 2, "ignore": 3})
    validate_dataset_json(dj)
    assert ignore_label(dj) == 3
    assert label_values(dj) == [0, 1, 2]
    assert foreground_labels(dj) == {"liver": 1, "tumour": 2}
    assert all_label_values(dj) == [0, 1, 2, 3]
    assert ignore_label(_dj({"background": 0, "liver": 1})) is None


@pytest.mark.parametrize("labels, expected", [
    ({"background": 0, "ignore": 1, "liver": 2}, "highest value"),
    ({"background": 0, "ignore": 1}, "besides background"),
])
def test_bad_ignore_label_is_refused(labels, expected):
    with pytest.raises(DatasetJsonError, match=expected):
        validate_dataset_json(_dj(labels), "Dataset9/dataset.json")


@pytest.mark.parametrize("labels, extra", [
    ({"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3},
     {"regions_class_order": [1, 2, 3]}),
    ({"background": 0, "whole tumor": [1, 2, 3], "enhancing tumor": 3}, {}),
    ({"background": 0, "a": 1, "b": 2}, {"regions_class_order": [1, 2]}),
], ids=["brats-style", "lists-only", "class-order-only"])
def test_region_based_labels_get_a_clear_error(labels, extra):
    with pytest.raises(DatasetJsonError) as e:
        validate_dataset_json(_dj(labels, **extra), "Dataset9/dataset.json")
    msg = str(e.value)
    assert msg.startswith("Dataset9/dataset.json: ")
    assert "region-based" in msg and "not support" in msg
    assert "plain integer labels" in msg and "separate classes" in msg


def test_region_based_dataset_fails_integrity_check_and_planning(samunet_roots):
    from samunet.experiment_planning.integrity import check_dataset_integrity
    from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess

    raw = make_ignore_raw(samunet_roots["raw"], 652, n_cases=2)
    dj = json.loads((raw / "dataset.json").read_text())
    dj["labels"] = {"background": 0, "blob": 1, "blob or band": [1, 2]}
    dj["regions_class_order"] = [1, 2]
    (raw / "dataset.json").write_text(json.dumps(dj))
    report = check_dataset_integrity(raw)
    assert not report.ok
    (p,) = [p for p in report.problems if p.file == "dataset.json"]
    assert "region-based" in p.message and "separate classes" in p.message
    with pytest.raises(DatasetJsonError, match="region-based.*separate classes"):
        plan_and_preprocess(652, num_processes=1)


def test_planning_records_the_ignore_label_and_keeps_its_pixels(samunet_roots):
    from samunet.experiment_planning.integrity import check_dataset_integrity
    from samunet.experiment_planning.plan_and_preprocess import format_summary, plan_and_preprocess
    from samunet.preprocessing.preprocessor import load_preprocessed_case, preprocess_case_files

    raw = make_ignore_raw(samunet_roots["raw"], 651, n_cases=4)
    assert check_dataset_integrity(raw).ok  # the ignore value is declared, not an unknown label
    summary = plan_and_preprocess(651, num_processes=1)
    plans = summary["plans"]
    assert plans["label_values"] == [0, 1]
    assert plans["foreground_labels"] == {"blob": 1}
    assert plans["ignore_label"] == IGNORE
    assert "ignore label 2" in format_summary(summary)
    folder = samunet_roots["preprocessed"] / raw.name
    npz = sorted(folder.rglob("s00.npz"))[0]
    case, data_folder = "s00", npz.parent
    _, seg, props = load_preprocessed_case(data_folder, case)
    assert set(np.unique(seg)) == {0, 1, IGNORE}
    assert "2" not in props["slices_with_label"]  # no class: not oversampled as foreground
    # in-plane resampling keeps the ignore pixels (they are no class, but not background either)
    finer = dict(plans, target_spacing=[plans["target_spacing"][0], 0.5, 0.5])
    dj = json.loads((raw / "dataset.json").read_text())
    _, seg2, _ = preprocess_case_files([raw / "imagesTr" / f"{case}_0000.nii.gz"], raw / "labelsTr" / f"{case}.nii.gz",
                                       finer, dj)
    assert seg2.shape[2] == 2 * seg.shape[2]
    assert (seg2 == IGNORE).sum() == pytest.approx(4 * (seg == IGNORE).sum(), rel=0.1)
