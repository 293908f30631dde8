"""samunet_determine_postprocessing / samunet_apply_postprocessing on fabricated cross-validation folders:
a post-processing is chosen only where it raises the label's mean Dice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from samunet.inference.postprocessing import (
    PostprocessingError,
    apply_main,
    apply_plan,
    determine_main,
    determine_postprocessing,
    keep_largest_component,
    load_plan,
    opening,
)

DS = "Dataset778_PostFake"
TRAINER = "FakeTrainer"
SHAPE = (3, 24, 24)
SPACING_XYZ = (1.0, 1.0, 2.5)


def write_nii(arr: np.ndarray, path: Path) -> None:
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(SPACING_XYZ)
    img.SetOrigin((1.0, 2.0, 3.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def read_nii(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def square(y0, x0, size, label=1, seg=None):
    seg = np.zeros(SHAPE, np.uint8) if seg is None else seg
    seg[:, y0:y0 + size, x0:x0 + size] = label
    return seg


def spurious_blob_cases():
    """(reference, prediction): the object found plus a small far-away false positive of label 1;
    label 2 predicted perfectly."""
    out = {}
    for i, (y, x) in enumerate(((2, 2), (4, 6), (3, 3))):
        ref = square(y, x, 10)
        square(18, 18, 4, label=2, seg=ref)
        pred = ref.copy()
        pred[:, 20:22, 2:4] = 1  # spurious blob, not touching the object
        out[f"c{i}"] = (ref, pred)
    return out


def wrong_largest_cases():
    """The correct object is small; a bigger false positive is the largest component."""
    out = {}
    for i in range(3):
        ref = square(2, 2, 4)
        pred = ref.copy()
        pred[:, 10:22, 10:22] = 1  # larger than the true object
        out[f"w{i}"] = (ref, pred)
    return out


def make_tree(root_raw: Path, root_results: Path, cases: dict) -> Path:
    """Raw dataset.json + labelsTr and two folds' validation folders of FakeTrainer."""
    raw = root_raw / DS
    (raw / "labelsTr").mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "numTraining": len(cases),
                                                  "labels": {"background": 0, "obj": 1, "sq": 2},
                                                  "file_ending": ".nii.gz"}))
    model = root_results / DS / f"{TRAINER}__samunetPlans"
    for k, (case, (ref, pred)) in enumerate(sorted(cases.items())):
        write_nii(ref, raw / "labelsTr" / f"{case}.nii.gz")
        write_nii(pred, model / f"fold_{k % 2}" / "validation" / f"{case}.nii.gz")
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"x")
    return model


def test_operations():
    m = np.zeros((1, 12, 12), bool)
    m[0, 1:7, 1:7] = True
    m[0, 10, 10] = True
    np.testing.assert_array_equal(keep_largest_component(m)[0, 10, 10], False)
    assert keep_largest_component(m).sum() == 36
    line = m.copy()
    line[0, 3, 7:11] = True  # a 1-pixel line sticking out, connected to the square
    assert keep_largest_component(line).sum() == 36 + 4  # connected: kept
    assert opening(line).sum() == 36  # the opening removes it and the isolated pixel
    seg = np.where(line, 2, 0).astype(np.int16)
    seg[0, 0, 11] = 1
    out = apply_plan(seg, {"operations": [{"label": 2, "operation": "opening", "kernel": 5}]})
    assert (out == 2).sum() == 36 and out[0, 0, 11] == 1  # other labels untouched


def test_spurious_blob_chosen_end_to_end(samunet_roots, tmp_path, capsys):
    model = make_tree(samunet_roots["raw"], samunet_roots["results"], spurious_blob_cases())
    determine_main(["-d", "778", "-tr", TRAINER])
    plan = json.loads((model / "postprocessing.json").read_text())
    assert plan["folds"] == ["0", "1"] and plan["n_cases"] == 3
    assert [o["label"] for o in plan["operations"]] == [1]
    assert plan["operations"][0]["operation"] in ("keep_largest_component", "opening")
    assert plan["per_label"]["1"]["mean_dice"]["keep_largest_component"] == pytest.approx(1.0)
    assert plan["per_label"]["1"]["mean_dice"]["none"] < 1.0
    assert plan["per_label"]["2"]["chosen"] is None  # already perfect: nothing to gain
    assert plan["foreground_mean_dice"]["after"] > plan["foreground_mean_dice"]["before"]
    assert "samunet_apply_postprocessing" in capsys.readouterr().out
    # apply: the blob goes, label 2 and the geometry stay
    src = model / "fold_0" / "validation"
    apply_main(["-i", str(src), "-o", str(tmp_path / "pp"), "-pp_pkl_file", str(model / "postprocessing.json")])
    ref, _ = spurious_blob_cases()["c0"]
    np.testing.assert_array_equal(read_nii(tmp_path / "pp" / "c0.nii.gz"), ref)
    img = sitk.ReadImage(str(tmp_path / "pp" / "c0.nii.gz"))
    assert np.allclose(img.GetSpacing(), SPACING_XYZ) and np.allclose(img.GetOrigin(), (1, 2, 3))
    assert load_plan(tmp_path / "pp" / "postprocessing.json")["operations"] == plan["operations"]


def test_wrong_largest_component_not_chosen(samunet_roots):
    model = make_tree(samunet_roots["raw"], samunet_roots["results"], wrong_largest_cases())
    determine_main(["-d", DS, "-tr", TRAINER, "--candidates", "keep_largest_component"])
    plan = json.loads((model / "postprocessing.json").read_text())
    assert plan["operations"] == []
    lab1 = plan["per_label"]["1"]["mean_dice"]
    assert lab1["keep_largest_component"] == 0.0 < lab1["none"]


def test_opening_chosen_for_thin_spurs(tmp_path):
    """Spurs attached to the object are one component (largest-component keeps them); the opening removes them."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    for i in range(2):
        ref = square(4, 4, 10)
        pred = ref.copy()
        pred[:, 8, 14:22] = 1
        pred[:, 14:22, 9] = 1
        write_nii(ref, ref_dir / f"c{i}.nii.gz")
        write_nii(pred, pred_dir / f"c{i}.nii.gz")
    plan = determine_postprocessing([pred_dir], ref_dir, {1: "obj"}, ".nii.gz")
    assert plan["operations"] == [{"label": 1, "operation": "opening", "kernel": 5}]
    assert plan["per_label"]["1"]["mean_dice"]["keep_largest_component"] == plan["per_label"]["1"]["mean_dice"]["none"]


def test_input_folder_mode_and_errors(tmp_path, capsys):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    for case, (ref, pred) in spurious_blob_cases().items():
        write_nii(ref, ref_dir / f"{case}.nii.gz")
        write_nii(pred, pred_dir / f"{case}.nii.gz")
    dj = tmp_path / "dataset.json"
    dj.write_text(json.dumps({"channel_names": {"0": "MRI"}, "numTraining": 3, "file_ending": ".nii.gz",
                              "labels": {"background": 0, "obj": 1, "sq": 2}}))
    determine_main(["-i", str(pred_dir), "-ref", str(ref_dir), "-djfile", str(dj), "-o", str(tmp_path / "pp.json")])
    assert [o["label"] for o in load_plan(tmp_path / "pp.json")["operations"]] == [1]
    with pytest.raises(SystemExit, match="-ref"):
        determine_main(["-i", str(pred_dir), "-djfile", str(dj)])
    (ref_dir / "c1.nii.gz").unlink()
    with pytest.raises(PostprocessingError, match=r"no reference label .*c1"):
        determine_postprocessing([pred_dir], ref_dir, [1, 2], ".nii.gz")
    with pytest.raises(SystemExit, match="must differ"):
        apply_main(["-i", str(pred_dir), "-o", str(pred_dir), "--plan", str(tmp_path / "pp.json")])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit, match="not a postprocessing.json"):
        apply_main(["-i", str(pred_dir), "-o", str(tmp_path / "x"), "-pp", str(tmp_path / "bad.json")])


def test_no_validation_folders_is_explained(samunet_roots):
    model = samunet_roots["results"] / DS / f"{TRAINER}__samunetPlans"
    (model / "fold_0").mkdir(parents=True)
    raw = samunet_roots["raw"] / DS
    raw.mkdir()
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "numTraining": 1,
                                                  "labels": {"background": 0, "obj": 1}, "file_ending": ".nii.gz"}))
    with pytest.raises(SystemExit, match=r"no cross-validation fold .*samunet_train"):
        determine_main(["-d", "778", "-tr", TRAINER])


def test_false_positives_on_ignored_voxels_do_not_choose_postprocessing(tmp_path):
    """A second component lying where the reference is dataset.json's ignore label is no error:
    removing it gains nothing, so nothing is chosen (without the ignore label it would be)."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    for i in range(2):
        ref = square(4, 4, 10)
        ref[:, 16:23, 16:23] = 9  # unannotated
        pred = square(4, 4, 10)
        pred[:, 18:21, 18:21] = 1  # an object nobody annotated, predicted there
        write_nii(ref, ref_dir / f"c{i}.nii.gz")
        write_nii(pred, pred_dir / f"c{i}.nii.gz")
    plain = determine_postprocessing([pred_dir], ref_dir, {1: "obj"}, ".nii.gz")
    assert plain["operations"] == [{"label": 1, "operation": "keep_largest_component"}]
    plan = determine_postprocessing([pred_dir], ref_dir, {1: "obj", 9: "ignore"}, ".nii.gz", ignore_label=9)
    assert plan["operations"] == [] and list(plan["per_label"]) == ["1"]
    assert plan["per_label"]["1"]["mean_dice"]["none"] == 1.0
