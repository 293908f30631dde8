"""Tests of samunet.evaluation.evaluate on small synthetic NIfTI / PNG folders."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import surface_distance
from PIL import Image

from samunet.evaluation.evaluate import EvaluationError, evaluate_folder, main
from samunet.evaluation.metrics import normalized_surface_dice

LABELS = {"background": 0, "A": 1, "B": 2}
SPACING_XYZ = (1.0, 1.0, 2.0)  # SimpleITK order; array order (z, y, x) = (2, 1, 1)
SHAPE = (6, 12, 14)


def write_nii(arr: np.ndarray, path: Path, spacing=SPACING_XYZ) -> None:
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def write_png(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def dataset_json(file_ending=".nii.gz", domains=None) -> dict:
    d = {"channel_names": {"0": "MRI"}, "labels": LABELS, "numTraining": 3, "file_ending": file_ending}
    if domains:
        d["domains"] = domains
    return d


def strict_load(path: Path):
    """json.load that fails on NaN / Infinity (not valid JSON)."""
    def bad(c):
        raise ValueError(f"invalid JSON constant {c}")
    return json.loads(Path(path).read_text(), parse_constant=bad)


@pytest.fixture
def nifti_folders(tmp_path):
    """c1: perfect, label B absent from both; c2: A perfect, B half overlap; c3: no prediction;
    x9: prediction without reference."""
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    c1 = np.zeros(SHAPE, np.uint8)
    c1[1:4, 2:8, 3:9] = 1
    write_nii(c1, ref / "c1.nii.gz")
    write_nii(c1, pred / "c1.nii.gz")
    c2r = np.zeros(SHAPE, np.uint8)
    c2r[1:5, 1:5, 1:5] = 1
    c2r[0:4, 6:10, 6:10] = 2  # 64 voxels
    c2p = c2r.copy()
    c2p[c2p == 2] = 0
    c2p[2:6, 6:10, 6:10] = 2  # shifted 2 voxels = 4 mm along z: overlap 32 -> Dice 0.5
    write_nii(c2r, ref / "c2.nii.gz")
    write_nii(c2p, pred / "c2.nii.gz")
    write_nii(c1, ref / "c3.nii.gz")
    write_nii(c1, pred / "x9.nii.gz")
    return ref, pred, c2r, c2p


def test_nifti_per_case_aggregates_missing_and_json(nifti_folders, tmp_path):
    ref, pred, c2r, c2p = nifti_folders
    dj = dataset_json(domains={"c1": "siteA", "c2": "siteB", "c3": "siteA"})
    s = evaluate_folder(ref, pred, dj)
    assert s["protocol"]["tag"] == "per_case_3d" and s["protocol"]["tolerance"] == 2.0
    assert [r["case"] for r in s["metric_per_case"]] == ["c1", "c2"]
    assert s["missing_predictions"] == ["c3"]
    assert s["unmatched_predictions"] == ["x9"]

    m1, m2 = (r["metrics"] for r in s["metric_per_case"])
    assert m1["1"] == {"Dice": 1.0, "NSD": 1.0, "n_ref": 3 * 6 * 6, "n_pred": 3 * 6 * 6}
    assert m1["2"]["Dice"] is None and m1["2"]["NSD"] is None  # absent from both -> NaN -> null
    assert m1["2"]["n_ref"] == 0 and m1["2"]["n_pred"] == 0
    assert m2["1"]["Dice"] == 1.0
    assert m2["2"]["Dice"] == pytest.approx(0.5)
    assert m2["2"]["n_ref"] == 64 and m2["2"]["n_pred"] == 64
    # spacing (z, y, x) = (2, 1, 1) is used for the NSD (DeepMind's surface-distance, called directly)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        expected = surface_distance.compute_surface_dice_at_tolerance(
            surface_distance.compute_surface_distances(c2r == 2, c2p == 2, [2.0, 1.0, 1.0]), 2.0)
    assert m2["2"]["NSD"] == pytest.approx(expected, abs=1e-3)
    assert 0 < expected < 1
    assert normalized_surface_dice(c2p == 2, c2r == 2, (1.0, 1.0, 1.0), 2.0) == 1.0  # 2 voxels at 1 mm
    assert s["metric_per_case"][0]["domain"] == "siteA"
    assert s["metric_per_case"][1]["prediction_file"].endswith("c2.nii.gz")

    # means over evaluated cases (NaN excluded)
    assert s["mean"]["1"]["Dice"] == 1.0 and s["mean"]["1"]["n_cases"] == 2
    assert s["mean"]["2"]["Dice"] == pytest.approx(0.5) and s["mean"]["2"]["n_cases"] == 1
    assert s["foreground_mean"]["Dice"] == pytest.approx(0.75)
    # the missing case is not dropped: counts as 0
    assert s["mean_with_missing_as_0"]["1"]["Dice"] == pytest.approx(2 / 3)
    assert s["mean_with_missing_as_0"]["2"]["Dice"] == pytest.approx(0.25)
    assert s["foreground_mean_with_missing_as_0"]["Dice"] == pytest.approx((2 / 3 + 0.25) / 2)
    assert s["mean_with_missing_as_0"]["1"]["NSD"] == pytest.approx(2 / 3)

    # per domain
    a, b = s["per_domain"]["siteA"], s["per_domain"]["siteB"]
    assert a["n_cases"] == 1 and a["n_missing"] == 1 and a["missing_predictions"] == ["c3"]
    assert a["mean"]["1"]["Dice"] == 1.0 and a["mean"]["2"]["Dice"] is None
    assert a["foreground_mean"]["Dice"] == 1.0
    assert a["mean_with_missing_as_0"]["1"]["Dice"] == pytest.approx(0.5)
    assert b["n_cases"] == 1 and b["mean"]["2"]["Dice"] == pytest.approx(0.5)
    assert b["foreground_mean"]["Dice"] == pytest.approx(0.75)

    # summary.json written into the prediction folder, valid JSON with null, equal to the return value
    on_disk = strict_load(pred / "summary.json")
    assert on_disk == s
    assert not re.search(r"[:\[,]\s*(NaN|-?Infinity)\b", (pred / "summary.json").read_text())


def test_domains_argument_labels_and_output_file(nifti_folders, tmp_path):
    ref, pred, *_ = nifti_folders
    out = tmp_path / "out" / "s.json"
    s = evaluate_folder(ref, pred, dataset_json(), domains={"c2": "B"}, output_file=out, labels=[2])
    assert out.is_file() and not (pred / "summary.json").exists()
    assert list(s["mean"]) == ["2"] and s["labels"] == {"2": "B"}
    assert set(s["per_domain"]) == {"B", "unassigned"}
    assert s["per_domain"]["unassigned"]["missing_predictions"] == ["c3"]
    s0 = evaluate_folder(ref, pred, dataset_json(), output_file=out)
    assert s0["per_domain"] == {}


def test_parallel_matches_serial(nifti_folders, tmp_path):
    ref, pred, *_ = nifti_folders
    s1 = evaluate_folder(ref, pred, dataset_json(), output_file=tmp_path / "a.json")
    s2 = evaluate_folder(ref, pred, dataset_json(), num_processes=2, output_file=tmp_path / "b.json")
    assert s1["metric_per_case"] == s2["metric_per_case"]


def test_shape_mismatch_names_both_files(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    write_nii(np.zeros(SHAPE), ref / "c1.nii.gz")
    write_nii(np.zeros((6, 12, 13)), pred / "c1.nii.gz")
    with pytest.raises(EvaluationError) as e:
        evaluate_folder(ref, pred, dataset_json())
    msg = str(e.value)
    assert str(ref / "c1.nii.gz") in msg and str(pred / "c1.nii.gz") in msg and "shape" in msg


def test_spacing_mismatch_is_an_error(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    write_nii(np.zeros(SHAPE), ref / "c1.nii.gz")
    write_nii(np.zeros(SHAPE), pred / "c1.nii.gz", spacing=(1.0, 1.0, 3.0))
    with pytest.raises(EvaluationError, match="spacing mismatch"):
        evaluate_folder(ref, pred, dataset_json())


def test_png_2d(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    r = np.zeros((20, 24), np.uint8)
    r[5:13, 5:13] = 1
    p = np.zeros_like(r)
    p[5:13, 10:18] = 1  # shifted 5 px: Dice 2*24/128, NSD 1/2 (by hand in test_metrics)
    write_png(r, ref / "img1.png")
    write_png(p, pred / "img1.png")
    r2 = np.zeros_like(r)
    r2[2:6, 2:6] = 2
    write_png(r2, ref / "img2.png")
    write_png(r2, pred / "img2.png")
    s = evaluate_folder(ref, pred, dataset_json(".png"), domains={"img1": "d1", "img2": "d2"})
    m = {row["case"]: row["metrics"] for row in s["metric_per_case"]}
    assert m["img1"]["1"]["Dice"] == pytest.approx(0.375)
    assert m["img1"]["1"]["NSD"] == pytest.approx(0.5)
    assert m["img1"]["2"]["Dice"] is None
    assert m["img2"]["2"] == {"Dice": 1.0, "NSD": 1.0, "n_ref": 16, "n_pred": 16}
    assert m["img2"]["1"]["NSD"] is None
    assert s["per_domain"]["d1"]["foreground_mean"]["Dice"] == pytest.approx(0.375)
    assert s["per_domain"]["d2"]["foreground_mean"]["NSD"] == 1.0
    assert s["missing_predictions"] == []
    # CVPR24 rule: Dice 0.375 > 0.2 keeps NSD, a threshold of 0.5 zeroes it
    s2 = evaluate_folder(ref, pred, dataset_json(".png"), nsd_only_if_dice_above=0.5,
                         output_file=tmp_path / "s2.json")
    assert s2["metric_per_case"][0]["metrics"]["1"]["NSD"] == 0.0
    assert s2["protocol"]["nsd_only_if_dice_above"] == 0.5


def test_cli_djfile_and_dataset_id(nifti_folders, tmp_path, capsys, samunet_roots):
    ref, pred, *_ = nifti_folders
    djf = tmp_path / "my_dataset.json"
    djf.write_text(json.dumps(dataset_json(domains={"c1": "siteA", "c2": "siteB", "c3": "siteA"})))
    out = tmp_path / "cli.json"
    assert main(["-ref", str(ref), "-pred", str(pred), "-djfile", str(djf), "-o", str(out), "--tolerance", "1"]) == 0
    text = capsys.readouterr().out
    assert "missing predictions (1): c3" in text and "siteA" in text and "foreground mean" in text
    assert strict_load(out)["protocol"]["tolerance"] == 1.0
    # --cases: only the listed reference cases, so c3 (no prediction) is not reported missing
    assert main(["-ref", str(ref), "-pred", str(pred), "-djfile", str(djf), "-o", str(out), "--cases", "c1", "c2"]) == 0
    assert strict_load(out)["missing_predictions"] == []
    assert sorted(r["case"] for r in strict_load(out)["metric_per_case"]) == ["c1", "c2"]

    raw = samunet_roots["raw"] / "Dataset777_Toy"
    raw.mkdir()
    (raw / "dataset.json").write_text(json.dumps(dataset_json()))
    assert main(["-ref", str(ref), "-pred", str(pred), "-d", "777", "--labels", "1"]) == 0
    assert list(strict_load(pred / "summary.json")["mean"]) == ["1"]

    pre = samunet_roots["preprocessed"] / "Dataset778_Pre"
    pre.mkdir()
    (pre / "dataset.json").write_text(json.dumps(dataset_json()))
    assert main(["-ref", str(ref), "-pred", str(pred), "-d", "778", "-o", str(out)]) == 0

    capsys.readouterr()
    assert main(["-ref", str(tmp_path / "nope"), "-pred", str(pred), "-djfile", str(djf)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["-ref", str(ref), "-pred", str(pred), "-d", "999"]) == 2


def test_prostate_masks_against_themselves(shared_data, tmp_path):
    src = shared_data / "prostate_runmc6" / "masks"
    if not src.is_dir():
        pytest.skip("prostate_runmc6 not available")
    masks = sorted(src.glob("*_Segmentation.nii.gz"))[:2]
    for sub in ("ref", "pred"):
        (tmp_path / sub).mkdir()
        for m in masks:
            shutil.copy(m, tmp_path / sub / m.name.replace("_Segmentation", ""))
    dj = {"channel_names": {"0": "T2"}, "labels": {"background": 0, "PZ": 1, "CG": 2},
          "numTraining": 2, "file_ending": ".nii.gz"}
    s = evaluate_folder(tmp_path / "ref", tmp_path / "pred", dj)
    assert len(s["metric_per_case"]) == 2
    for row in s["metric_per_case"]:
        for lab in ("1", "2"):
            assert row["metrics"][lab]["Dice"] == 1.0 and row["metrics"][lab]["NSD"] == 1.0
            assert row["metrics"][lab]["n_ref"] > 0
    assert s["foreground_mean"] == {"Dice": 1.0, "NSD": 1.0}


def test_csv_written_beside_summary_and_one_pixel_objects(tmp_path):
    import csv

    import SimpleITK as sitk

    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    a = np.zeros((3, 9, 9), np.uint8)
    a[1, 4, 4] = 1  # a one-voxel object
    b = a.copy()
    for folder, arr in ((ref, a), (pred, b)):
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing((1.0, 1.0, 2.0))
        sitk.WriteImage(im, str(folder / "c1.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(a), str(ref / "c2.nii.gz"))
    dj = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "dot": 1}, "numTraining": 2,
          "file_ending": ".nii.gz"}
    s = evaluate_folder(ref, pred, dj)
    assert s["metric_per_case"][0]["metrics"]["1"]["Dice"] == 1.0
    assert s["metric_per_case"][0]["metrics"]["1"]["NSD"] == 1.0
    rows = list(csv.DictReader(open(pred / "summary.csv")))
    assert rows[0]["case"] == "c1" and float(rows[0]["Dice"]) == 1.0
    assert rows[-1]["case"] == "c2" and rows[-1]["status"] == "missing prediction"


def test_ignore_label_is_not_evaluated_and_masks_the_reference(tmp_path):
    """dataset.json with nnU-Net v2's ignore label: no metric for it, its pixels count for nothing."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref = np.zeros(SHAPE, np.uint8)
    ref[1:5, 2:9, 3:10] = 1
    ref[:, 5:7, :] = 2  # ignore band
    pred = np.where(ref == 2, 0, ref).astype(np.uint8)
    pred[:, 5:7, 0:12] = 1  # only the ignored pixels differ from the reference
    write_nii(ref, ref_dir / "c1.nii.gz")
    write_nii(pred, pred_dir / "c1.nii.gz")
    dj = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "A": 1, "ignore": 2}, "numTraining": 1,
          "file_ending": ".nii.gz"}
    s = evaluate_folder(ref_dir, pred_dir, dj)
    assert s["labels"] == {"1": "A"} and list(s["mean"]) == ["1"]
    assert s["protocol"]["ignore_label"] == 2
    assert s["mean"]["1"]["Dice"] == 1.0 and s["mean"]["1"]["NSD"] == 1.0
    with pytest.raises(EvaluationError, match="ignore"):
        evaluate_folder(ref_dir, pred_dir, dj, labels=[2], output_file=tmp_path / "x.json")
