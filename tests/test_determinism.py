"""Same seed, same machine: identical plans, splits, preprocessed data, weights and predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from conftest import make_synthetic_raw
from trained_tree import single_thread

from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess

DATASET = "Dataset650_Synthetic"
PLAN_FILES = ("plans.json", "splits_final.json", "splits_domains.json", "dataset_fingerprint.json", "dataset.json")


def _plan_into(folder: Path, monkeypatch) -> Path:
    folder.mkdir()
    monkeypatch.setenv("SAMUNET_preprocessed", str(folder))
    plan_and_preprocess(650, num_processes=1)
    return folder / DATASET


def test_planning_twice_gives_identical_files(samunet_roots, tmp_path, monkeypatch):
    make_synthetic_raw(samunet_roots["raw"])
    a = _plan_into(tmp_path / "a", monkeypatch)
    b = _plan_into(tmp_path / "b", monkeypatch)
    for name in PLAN_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs between two plans"
    cases = sorted(p.name for p in (a / "samunetPlans_2d").glob("*.npz"))
    assert len(cases) == 6
    for name in cases:
        with np.load(a / "samunetPlans_2d" / name) as x, np.load(b / "samunetPlans_2d" / name) as y:
            assert x.files == y.files
            for k in x.files:
                assert np.array_equal(x[k], y[k]), f"{name}/{k} differs"
        js = name.replace(".npz", ".json")
        assert (a / "samunetPlans_2d" / js).read_bytes() == (b / "samunetPlans_2d" / js).read_bytes()


def test_training_and_prediction_twice_give_identical_results(synthetic_planned, samunet_roots, tmp_path):
    from samunet.inference.predictor import predict_folder
    from samunet.run.train import train
    from samunet.training.checkpoint import load_checkpoint

    raw, _ = synthetic_planned
    plans_file = samunet_roots["preprocessed"] / DATASET / "plans.json"
    plans = json.loads(plans_file.read_text())
    plans["stage1"].update(base_width=8, patch_size=[32, 32], batch_size=2, num_val_iterations_per_epoch=1)
    plans_file.write_text(json.dumps(plans))

    weights = []
    with single_thread():
        for run in range(2):
            trainer = train(650, "0", "ResNetTrainer", device="cpu", num_epochs=2, num_iterations=2,
                            skip_validation=True, seed=3)
            weights.append(load_checkpoint(trainer.output_folder / "checkpoint_final.pth")["network_weights"])
            if run == 0:  # keep the first run aside; the second is written to fold_0 afresh
                trainer.output_folder.rename(trainer.output_folder.with_name("fold_0_first_run"))
        assert weights[0].keys() == weights[1].keys()
        for k in weights[0]:
            assert torch.equal(weights[0][k], weights[1][k]), f"{k} differs between two trainings"

        outputs = []
        for run in range(2):
            out = tmp_path / f"pred{run}"
            predict_folder(raw / "imagesTr", out, 650, "ResNetTrainer", ["0"], device="cpu", save_probabilities=True)
            outputs.append(out)
    import SimpleITK as sitk

    names = sorted(p.name for p in outputs[0].iterdir())
    assert names == sorted(p.name for p in outputs[1].iterdir()) and len(names) == 12
    for name in names:
        if name.endswith(".nii.gz"):
            x = sitk.GetArrayFromImage(sitk.ReadImage(str(outputs[0] / name)))
            y = sitk.GetArrayFromImage(sitk.ReadImage(str(outputs[1] / name)))
        else:
            x, y = (np.load(o / name)["probabilities"] for o in outputs)
        assert np.array_equal(x, y), f"{name} differs between two predictions"


def test_different_seed_gives_different_weights(synthetic_planned, samunet_roots, seed=3):
    """Guards the test above: the weights do depend on the seed, so equality is not vacuous."""
    from samunet.run.train import train
    from samunet.training.checkpoint import load_checkpoint

    plans_file = samunet_roots["preprocessed"] / DATASET / "plans.json"
    plans = json.loads(plans_file.read_text())
    plans["stage1"].update(base_width=8, patch_size=[32, 32], batch_size=2, num_val_iterations_per_epoch=0)
    plans_file.write_text(json.dumps(plans))
    weights = []
    with single_thread():
        for s in (seed, seed + 1):
            trainer = train(650, "0", "ResNetTrainer", device="cpu", num_epochs=1, num_iterations=1,
                            skip_validation=True, seed=s)
            weights.append(load_checkpoint(trainer.output_folder / "checkpoint_final.pth")["network_weights"])
            trainer.output_folder.rename(trainer.output_folder.with_name(f"fold_0_seed{s}"))
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
