"""samunet_find_best_configuration on fabricated cross-validation folders (label maps, probabilities and
summary.json written here, no training): the right trainer / ensemble / post-processing is chosen and the
printed commands parse with the commands' own parsers."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from samunet.evaluation.best_configuration import (
    BestConfigurationError,
    cross_validation_summary,
    find_best_configuration,
    main,
)
from samunet.evaluation.evaluate import evaluate_folder
from samunet.imageio import reader_writer_for
from samunet.inference.export import save_probabilities_npz

DS = "Dataset779_BestFake"
SHAPE = (2, 20, 20)
CASES = ("c0", "c1", "c2", "c3")  # fold = index % 2
DJ = {"channel_names": {"0": "MRI"}, "numTraining": 4, "file_ending": ".nii.gz",
      "labels": {"background": 0, "obj": 1}}


def truth() -> np.ndarray:
    ref = np.zeros(SHAPE, np.uint8)
    ref[:, 4:12, 4:12] = 1
    return ref


def write_nii(arr, path: Path) -> None:
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing((1.0, 1.0, 2.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def write_raw(raw_root: Path) -> Path:
    raw = raw_root / DS
    for c in CASES:
        write_nii(truth(), raw / "labelsTr" / f"{c}.nii.gz")
    (raw / "dataset.json").write_text(json.dumps(DJ))
    return raw


def write_trainer(results_root: Path, raw: Path, trainer: str, fg_prob, npz: bool = True) -> Path:
    """Validation folders of two folds: label 1 where ``fg_prob(case) > 0.5``, probabilities if ``npz``,
    summary.json by samunet's evaluation."""
    model = results_root / DS / f"{trainer}__samunetPlans"
    for i, c in enumerate(CASES):
        val = model / f"fold_{i % 2}" / "validation"
        p1 = fg_prob(c).astype(np.float32)
        write_nii(p1 > 0.5, val / f"{c}.nii.gz")
        if npz:
            props = reader_writer_for(".nii.gz").read_seg(val / f"{c}.nii.gz")[1]
            save_probabilities_npz(val / f"{c}.npz", np.stack([1 - p1, p1]), [0, 1], ".nii.gz", props)
    for f in (0, 1):
        val = model / f"fold_{f}" / "validation"
        (model / f"fold_{f}" / "checkpoint_final.pth").write_bytes(b"x")
        evaluate_folder(raw / "labelsTr", val, DJ, output_file=val / "summary.json",
                        cases=[c for i, c in enumerate(CASES) if i % 2 == f])
    return model


def probs_with(extra_region=None, value=0.6, base=0.9):
    """fg probability: ``base`` on the true square, ``value`` on ``extra_region`` (slices), 0.05 elsewhere."""
    def fn(case):
        p = np.full(SHAPE, 0.05, np.float32)
        p[truth() == 1] = base
        if extra_region is not None:
            p[extra_region] = value
        return p
    return fn


# attached to the square (one component, too thick for a 5x5 opening): post-processing cannot fix it
ATTACHED_A = (slice(None), slice(4, 12), slice(12, 18))
ATTACHED_B = (slice(None), slice(12, 18), slice(4, 12))
SPURIOUS = (slice(None), slice(15, 18), slice(15, 18))  # a separate blob: the largest component removes it


def parse_predict(cmd: str):
    from samunet.inference.predictor import build_parser

    argv = shlex.split(cmd)
    assert argv[0] == "samunet_predict"
    return build_parser().parse_args(argv[1:])


def test_cv_summary_mean_std_and_pooled():
    s = {"0": {"labels": {"1": "a"}, "mean": {"1": {"Dice": 0.6, "NSD": 0.5}}, "foreground_mean": {"Dice": 0.6, "NSD": 0.5},
               "metric_per_case": [{"case": "x", "metrics": {"1": {"Dice": 0.6, "NSD": 0.5}}}]},
         "1": {"labels": {"1": "a"}, "mean": {"1": {"Dice": 0.8, "NSD": 0.7}}, "foreground_mean": {"Dice": 0.8, "NSD": 0.7},
               "metric_per_case": [{"case": "y", "metrics": {"1": {"Dice": 0.7, "NSD": 0.7}},},
                                   {"case": "z", "metrics": {"1": {"Dice": 0.9, "NSD": 0.7}}}]}}
    cv = cross_validation_summary(s)
    d = cv["per_label"]["1"]["Dice"]
    assert d["mean"] == pytest.approx(0.7) and d["std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert d["pooled"] == pytest.approx((0.6 + 0.7 + 0.9) / 3) and d["per_fold"] == {"0": 0.6, "1": 0.8}
    assert cv["foreground_mean"]["Dice"]["mean"] == pytest.approx(0.7) and cv["n_cases"] == 3
    one = cross_validation_summary({"0": s["0"]})
    assert one["per_label"]["1"]["Dice"]["std"] is None  # one fold: no spread (valid JSON, not NaN)


def test_picks_the_better_trainer_and_prints_a_command_that_parses(samunet_roots, capsys):
    raw = write_raw(samunet_roots["raw"])
    good = write_trainer(samunet_roots["results"], raw, "GoodTrainer", probs_with(ATTACHED_A), npz=False)
    write_trainer(samunet_roots["results"], raw, "BadTrainer", probs_with((slice(None), slice(0, 20), slice(12, 20))),
                  npz=False)
    main(["-d", "779", "-tr", "BadTrainer", "GoodTrainer"])
    out = capsys.readouterr().out
    result = json.loads((samunet_roots["results"] / DS / "best_configuration.json").read_text())
    assert result["best"]["name"] == "GoodTrainer" and not result["best"]["use_postprocessing"]
    assert [c["kind"] for c in result["candidates"]] == ["trainer", "trainer"]  # no probabilities: no ensemble
    assert len(result["commands"]) == 1 and result["commands"][0] in out
    args = parse_predict(result["commands"][0])
    assert (args.tr, args.p, args.f, args.d) == ("GoodTrainer", "samunetPlans", ["0", "1"], DS)
    assert (samunet_roots["results"] / DS / "inference_instructions.txt").read_text().strip().endswith(
        result["commands"][0])
    cv = json.loads((good / "cv_summary.json").read_text())
    assert cv["folds"] == ["0", "1"] and cv["n_cases"] == 4
    assert set(cv["per_label"]["1"]["Dice"]) == {"mean", "std", "per_fold", "pooled"}
    # 64 true voxels per slice, 48 false positives beside them: Dice 2*64 / (112 + 64) in every case
    assert cv["per_label"]["1"]["Dice"]["mean"] == pytest.approx(128 / 176)
    assert cv["per_label"]["1"]["Dice"]["std"] == pytest.approx(0.0)


def test_an_ensemble_of_complementary_trainers_wins(samunet_roots):
    raw = write_raw(samunet_roots["raw"])
    write_trainer(samunet_roots["results"], raw, "TA", probs_with(ATTACHED_A))
    write_trainer(samunet_roots["results"], raw, "TB", probs_with(ATTACHED_B))
    result = find_best_configuration(779, ["TA", "TB"])
    best = result["best"]
    assert best["kind"] == "ensemble" and best["final_score"] == pytest.approx(1.0)
    assert [m["trainer"] for m in best["members"]] == ["TA", "TB"]
    ens = Path(best["folder"])
    assert (ens / "fold_0" / "validation" / "summary.json").is_file() and (ens / "cv_summary.json").is_file()
    predicts = [parse_predict(c) for c in result["commands"][:2]]
    assert [a.tr for a in predicts] == ["TA", "TB"] and all(a.save_probabilities for a in predicts)
    ens_cmd = shlex.split(result["commands"][2])
    assert ens_cmd[0] == "samunet_ensemble" and ens_cmd[ens_cmd.index("-i") + 1:ens_cmd.index("-o")] == [
        a.o for a in predicts]
    singles = [c for c in result["candidates"] if c["kind"] == "trainer"]
    assert all(c["final_score"] < 0.9 for c in singles)


def test_postprocessing_chosen_when_it_helps(samunet_roots):
    raw = write_raw(samunet_roots["raw"])
    model = write_trainer(samunet_roots["results"], raw, "BlobTrainer", probs_with(SPURIOUS), npz=False)
    write_trainer(samunet_roots["results"], raw, "OtherTrainer", probs_with(ATTACHED_A), npz=False)
    result = find_best_configuration(DS, ["BlobTrainer", "OtherTrainer"], allow_ensembles=False)
    best = result["best"]
    assert best["name"] == "BlobTrainer" and best["use_postprocessing"]
    assert best["final_score"] == pytest.approx(1.0)
    assert best["foreground_dice_pooled"] < 0.99
    assert (model / "postprocessing.json").is_file()
    apply_cmd = shlex.split(result["commands"][-1])
    assert apply_cmd[0] == "samunet_apply_postprocessing"
    assert apply_cmd[apply_cmd.index("-pp_pkl_file") + 1] == str(model / "postprocessing.json")
    assert apply_cmd[apply_cmd.index("-i") + 1] == parse_predict(result["commands"][0]).o
    other = next(c for c in result["candidates"] if c["name"] == "OtherTrainer")
    assert not other["use_postprocessing"] and other["postprocessing"]["operations"] == []


def test_missing_validation_is_explained(samunet_roots):
    write_raw(samunet_roots["raw"])
    (samunet_roots["results"] / DS / "NewTrainer__samunetPlans" / "fold_0").mkdir(parents=True)
    with pytest.raises(BestConfigurationError, match=r"no fold_0 .. fold_4 with validation/summary.json.*samunet_train"):
        find_best_configuration(779, ["NewTrainer"])
    with pytest.raises(SystemExit, match="no such folder"):
        main(["-d", "779", "-tr", "NeverTrained"])
