"""samunet_find_best_configuration after real (tiny) trainings on shared data, through the public
entry points: convert, plan and preprocess, ``samunet_train ... --npz`` of two trainers on two folds,
then ``samunet_find_best_configuration`` and checks of everything it wrote and printed against
the trainings' own validation files."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_summary_matches_files
from PIL import Image

TRAINERS = ("ResNetTrainer", "ResNetTrainer_5epochs")  # two stage-1 trainers without a SAM encoder
FOLDS = ("0", "1")
PLANS = "samunetPlans"


def _values(cv_part: dict, summaries: dict, get) -> None:
    """One metric of cv_summary.json (``{"mean", "std", "per_fold", "pooled"}``) against the folds'
    summary.json (``get(summary)``: the per-fold value), mean and std recomputed here."""
    per_fold = {f: get(summaries[f]) for f in FOLDS}
    assert cv_part["per_fold"] == pytest.approx(per_fold, abs=1e-12)
    assert cv_part["mean"] == pytest.approx(np.mean(list(per_fold.values())), abs=1e-12)
    assert cv_part["std"] == pytest.approx(np.std(list(per_fold.values()), ddof=1), abs=1e-12)


def _check_cv_summary(folder, summaries: dict, val_cases: dict) -> dict:
    cv = json.loads((folder / "cv_summary.json").read_text())
    assert cv["folds"] == list(FOLDS) and cv["n_cases"] == sum(len(val_cases[f]) for f in FOLDS)
    for f in FOLDS:  # each fold's summary evaluates exactly that fold's validation cases
        assert sorted(r["case"] for r in summaries[f]["metric_per_case"]) == sorted(val_cases[f])
    rows = [r for f in FOLDS for r in summaries[f]["metric_per_case"]]
    for metric in ("Dice", "NSD"):
        _values(cv["foreground_mean"][metric], summaries, lambda s: s["foreground_mean"][metric])
        for lab in cv["labels"]:
            _values(cv["per_label"][lab][metric], summaries, lambda s: s["mean"][lab][metric])
            assert cv["per_label"][lab][metric]["pooled"] == pytest.approx(
                np.mean([r["metrics"][lab][metric] for r in rows]), abs=1e-12)
    assert list(cv["labels"]) == ["1"]  # one foreground label: pooled foreground = pooled label 1
    assert cv["foreground_mean"]["Dice"]["pooled"] == pytest.approx(cv["per_label"]["1"]["Dice"]["pooled"])
    return cv


def test_find_best_configuration_after_real_trainings(shared_data, samunet_roots, tmp_path, capsys, monkeypatch):
    """Three CVC-ClinicDB TIFF pairs in two groups (so two folds, of 2 and 1 validation cases), two
    trainers × two folds of 1 epoch × 2 iterations with validation probabilities, then
    ``samunet_find_best_configuration -f 0 1``: cv_summary.json of each trainer is its folds' summaries,
    the ensemble is the mean of the members' saved probabilities and is evaluated on them, the
    best candidate is the highest score listed, and every printed command parses with its own
    command's parser and names existing models, folders and files."""
    from samunet.dataset_conversion.convert_2d_folder import convert_2d_folder
    from samunet.evaluation.best_configuration import main
    from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess
    from samunet.inference import ensembling, postprocessing
    from samunet.inference.predictor import build_parser as predict_parser
    from samunet.run.train import main as train_main
    from samunet.training.registry import find_trainer

    src = shared_data / "clinicdb_tiff3"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    groups = tmp_path / "groups.csv"  # two "patients": folds of 2 and 1 validation cases (pooled != fold mean)
    groups.write_text("104,p1\n105,p1\n106,p2\n")
    raw = convert_2d_folder(src, 509, "ClinicBestConf", groups_csv=groups)
    ds = raw.name
    plan_and_preprocess(509, num_processes=1)
    pre = samunet_roots["preprocessed"] / ds
    plans = json.loads((pre / "plans.json").read_text())
    plans["stage1"]["batch_size"] = 2
    plans["stage1"]["num_val_iterations_per_epoch"] = 0
    (pre / "plans.json").write_text(json.dumps(plans))
    splits = json.loads((pre / "splits_final.json").read_text())
    assert sorted(len(s["val"]) for s in splits) == [1, 2]
    val_cases = {f: splits[int(f)]["val"] for f in FOLDS}
    for i, tr in enumerate(TRAINERS):  # different seeds: two different models to ensemble
        for f in FOLDS:
            train_main(["509", f, "-tr", tr, "--epochs", "1", "--iters", "2", "-device", "cpu", "--npz",
                        "--seed", str(12345 + i)])
    results = samunet_roots["results"] / ds
    members = [results / f"{tr}__{PLANS}" for tr in TRAINERS]
    capsys.readouterr()

    main(["-d", "509", "-tr", *TRAINERS, "-f", *FOLDS])
    out = capsys.readouterr().out

    cvs = {}
    for m in members:
        summaries = {f: json.loads((m / f"fold_{f}" / "validation" / "summary.json").read_text()) for f in FOLDS}
        cvs[m] = _check_cv_summary(m, summaries, val_cases)

    # the ensemble candidate: label maps = argmax of the members' mean probabilities, evaluated on them
    ens = results / "ensembles" / "+".join(m.name for m in members)
    ens_summaries = {}
    for f in FOLDS:
        val = ens / f"fold_{f}" / "validation"
        ens_summaries[f] = json.loads((val / "summary.json").read_text())
        assert_summary_matches_files(ens_summaries[f])  # Dice recomputed from the files it names
        for case in val_cases[f]:
            seg = np.array(Image.open(val / f"{case}.png"))
            mean = sum(np.load(m / f"fold_{f}" / "validation" / f"{case}.npz")["probabilities"].astype(np.float64)
                       for m in members)
            np.testing.assert_array_equal(seg, np.argmax(mean, axis=0).reshape(seg.shape))
    cvs[ens] = _check_cv_summary(ens, ens_summaries, val_cases)

    # best_configuration.json: every candidate's score is its cv_summary's; the best is the highest
    result = json.loads((results / "best_configuration.json").read_text())
    assert result["folds"] == list(FOLDS)
    cands = result["candidates"]
    assert [c["name"] for c in cands] == [*TRAINERS, " + ".join(TRAINERS)]
    assert [c["folder"] for c in cands] == [str(p) for p in cvs]
    for c in cands:
        folder = next(p for p in cvs if str(p) == c["folder"])
        assert c["foreground_dice_pooled"] == pytest.approx(cvs[folder]["foreground_mean"]["Dice"]["pooled"])
        assert c["foreground_dice_mean_over_folds"] == pytest.approx(cvs[folder]["foreground_mean"]["Dice"]["mean"])
        pp = json.loads((folder / "postprocessing.json").read_text())
        assert pp["foreground_mean_dice"]["before"] == pytest.approx(c["foreground_dice_pooled"])
        expected = pp["foreground_mean_dice"]["after"] if c["use_postprocessing"] else c["foreground_dice_pooled"]
        assert c["final_score"] == pytest.approx(expected)
        assert c["use_postprocessing"] == (bool(pp["operations"]) and pp["foreground_mean_dice"]["after"] >
                                           c["foreground_dice_pooled"])
    top = max(c["final_score"] for c in cands)
    best = result["best"]
    assert best == next(c for c in cands if c["final_score"] == top)

    # the printed commands: printed and in inference_instructions.txt, each parsed by its own command
    commands = result["commands"]
    assert commands and all(c in out for c in commands)
    instructions = (results / "inference_instructions.txt").read_text()
    assert instructions.strip() in out and instructions.strip().endswith(commands[-1])
    calls = []
    monkeypatch.setattr(ensembling, "ensemble_folders", lambda *a: calls.append(("ensemble", a)))
    monkeypatch.setattr(postprocessing, "apply_postprocessing_to_folder", lambda *a: calls.append(("apply", a)))
    predicted, last_out = [], None
    for cmd in commands:
        argv = shlex.split(cmd)
        if argv[0] == "samunet_predict":
            args = predict_parser().parse_args(argv[1:])
            assert args.d == ds and args.p == PLANS and args.f == list(FOLDS) and args.i == "INPUT_FOLDER"
            find_trainer(args.tr)
            for f in args.f:
                assert (results / f"{args.tr}__{args.p}" / f"fold_{f}" / args.chk).is_file()
            assert args.save_probabilities == (best["kind"] == "ensemble")
            predicted.append(args.tr)
            last_out = args.o
        elif argv[0] == "samunet_ensemble":
            ensembling.main(argv[1:])
            inputs, last_out = calls[-1][1][0], calls[-1][1][1]
            assert calls[-1][0] == "ensemble" and len(inputs) == 2 and len(set(inputs)) == 2
            assert inputs == [shlex.split(c)[shlex.split(c).index("-o") + 1] for c in commands[:2]]
        else:
            assert argv[0] == "samunet_apply_postprocessing", cmd
            postprocessing.apply_main(argv[1:])
            assert calls[-1][0] == "apply" and calls[-1][1][0] == last_out and calls[-1][1][1] != last_out
            assert calls[-1][1][2] == str(Path(best["folder"]) / "postprocessing.json")
            assert postprocessing.load_plan(calls[-1][1][2])["operations"]
    assert predicted == ([m["trainer"] for m in best["members"]] if best["kind"] == "ensemble" else [best["trainer"]])
    assert (len(commands) - len(predicted) - (best["kind"] == "ensemble")) == int(best["use_postprocessing"])
