"""samunet_plot_overlays on the small trained tree."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

import trained_tree
from samunet.evaluation.overlays import DPI, FIGSIZE, OverlayError, largest_object_slice, main, plot_overlays

SIZE = (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))


@pytest.fixture
def trained(tmp_path_factory, monkeypatch):
    with trained_tree.single_thread():
        yield trained_tree.use(tmp_path_factory, monkeypatch)


def _assert_png(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == SIZE
        arr = np.asarray(im.convert("RGB"))
    assert arr.std() > 10  # not a blank canvas


def test_worst_two_of_a_domain_fold(trained, tmp_path, capsys):
    out = tmp_path / "ov"
    assert main(["-d", "650", "-tr", "ResNetTrainer", "-f", "domain_A", "-o", str(out), "--worst", "2"]) == 0
    files = sorted(out.glob("*.png"))
    assert len(files) == 2
    for f in files:
        _assert_png(f)
    # the default split of a domain fold is test; the two lowest Dice of its summary are drawn
    s = json.loads((trained_tree.model_folder(trained) / "fold_domain_A" / "test" / "summary.json").read_text())
    dice = {r["case"]: np.nanmean([np.nan if m["Dice"] is None else m["Dice"] for m in r["metrics"].values()])
            for r in s["metric_per_case"]}
    worst = sorted(dice, key=lambda c: (math.isnan(dice[c]), dice[c], c))[:2]
    assert {f.stem for f in files} == set(worst)
    assert "2 overlays written" in capsys.readouterr().out


def test_chosen_cases_validation_split_with_prompts(trained, tmp_path):
    val = trained_tree.model_folder(trained) / "fold_0" / "validation"
    case = json.loads((val / "summary.json").read_text())["metric_per_case"][0]["case"]
    # a prompts.json beside the predictions is drawn (written to a copy: the shared tree stays untouched)
    import shutil

    res = tmp_path / "results"
    shutil.copytree(trained["results"], res, ignore=shutil.ignore_patterns("*.pth"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAMUNET_results", str(res))
        copy = res / trained_tree.DATASET / "ResNetTrainer__samunetPlans" / "fold_0" / "validation"
        (copy / "prompts.json").write_text(json.dumps({case: [{"z": 3, "label": 1, "box": [10, 12, 30, 40]},
                                                              {"z": 3, "points": [[20, 20]], "point_labels": [1]}]}))
        files = plot_overlays(650, "ResNetTrainer", "0", tmp_path / "ov", cases=[case], split="validation")
    assert [f.name for f in files] == [f"{case}.png"]
    _assert_png(files[0])
    with pytest.raises(OverlayError, match="does not exist"):
        plot_overlays(650, "ResNetTrainer", "0", tmp_path / "ov", cases=[case], split="test")
    with pytest.raises(OverlayError, match="fold_domain_Z"):
        plot_overlays(650, "ResNetTrainer", "domain_Z", tmp_path / "ov", worst=1)


def test_largest_object_slice():
    ref = np.zeros((5, 20, 20), np.int16)
    ref[1, 2:4, 2:4] = 1  # small object, alone on slice 1
    ref[2:5, 8:18, 8:18] = 2  # large object
    ref[3, 5:19, 5:19] = 2  # its largest slice
    assert largest_object_slice(ref) == 3
    assert largest_object_slice(np.zeros_like(ref), ref) == 3  # empty reference: the prediction decides
    assert largest_object_slice(np.zeros_like(ref)) == 2  # both empty: middle slice
