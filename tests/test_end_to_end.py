"""plan -> train a few iterations -> predict -> evaluate, on synthetic and real data."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from samunet.evaluation.evaluate import main as evaluate_main
from samunet.inference.predictor import PredictionError, predict_folder
from samunet.run.train import train
from samunet.training.checkpoint import load_checkpoint
from samunet.training.trainer_base import BaseTrainer


def _assert_same_geometry(a_file, b_file):
    a, b = sitk.ReadImage(str(a_file)), sitk.ReadImage(str(b_file))
    assert a.GetSize() == b.GetSize()
    for g in ("GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(a, g)() == pytest.approx(getattr(b, g)(), abs=1e-6)  # NIfTI qform float noise


def test_domain_fold_train_validate_test_predict(synthetic_planned, samunet_roots, tmp_path):
    raw, _ = synthetic_planned
    trainer = train(650, "domain_A", "ResNetTrainer", device="cpu", num_epochs=2, num_iterations=3)
    out = trainer.output_folder
    for f in ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth", "training_log.json",
              "progress.png"):
        assert (out / f).is_file(), f
    log = json.loads((out / "training_log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [0, 1]
    val = json.loads((out / "validation" / "summary.json").read_text())
    test = json.loads((out / "test" / "summary.json").read_text())
    assert {r["domain"] for r in val["metric_per_case"]} == {"A"}
    assert {r["domain"] for r in test["metric_per_case"]} == {"B"}  # tested on the other domain only
    # predict raw images with the trained fold
    inp = tmp_path / "in"
    inp.mkdir()
    for c in ("s01", "s02"):
        shutil.copy(raw / "imagesTr" / f"{c}_0000.nii.gz", inp)
    written = predict_folder(inp, tmp_path / "out", 650, "ResNetTrainer", ["domain_A"], device="cpu",
                             save_probabilities=True)
    assert len(written) == 2
    _assert_same_geometry(inp / "s01_0000.nii.gz", tmp_path / "out" / "s01.nii.gz")
    probs = np.load(tmp_path / "out" / "s01.npz")["probabilities"]
    assert probs.shape == (2,) + sitk.GetArrayFromImage(sitk.ReadImage(str(inp / "s01_0000.nii.gz"))).shape
    ref = tmp_path / "ref"
    ref.mkdir()
    for c in ("s01", "s02"):
        shutil.copy(raw / "labelsTr" / f"{c}.nii.gz", ref)
    assert evaluate_main(["-ref", str(ref), "-pred", str(tmp_path / "out"), "-d", "650"]) == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["n_cases"] == 2
    with pytest.raises(PredictionError, match="fold_3"):
        predict_folder(inp, tmp_path / "o2", 650, "ResNetTrainer", ["3"], device="cpu")


def test_resume_gives_the_same_run(synthetic_planned, monkeypatch):
    full = train(650, 0, "ResNetTrainer", device="cpu", num_epochs=3, num_iterations=2, skip_validation=True)
    ref_log = json.loads((full.output_folder / "training_log.json").read_text())["epochs"]
    ref_w = load_checkpoint(full.output_folder / "checkpoint_final.pth")["network_weights"]
    shutil.rmtree(full.output_folder)

    original = BaseTrainer.run_epoch

    def crash_at_epoch_2(self):
        if self.current_epoch == 2:
            raise KeyboardInterrupt("simulated kill")
        return original(self)

    monkeypatch.setattr(BaseTrainer, "run_epoch", crash_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(650, 0, "ResNetTrainer", device="cpu", num_epochs=3, num_iterations=2, skip_validation=True)
    monkeypatch.setattr(BaseTrainer, "run_epoch", original)
    resumed = train(650, 0, "ResNetTrainer", device="cpu", num_epochs=3, num_iterations=2, resume=True,
                    skip_validation=True)
    log = json.loads((resumed.output_folder / "training_log.json").read_text())["epochs"]
    assert [e["train_loss"] for e in log] == [e["train_loss"] for e in ref_log]
    assert [e["val_loss"] for e in log] == [e["val_loss"] for e in ref_log]
    w = load_checkpoint(resumed.output_folder / "checkpoint_final.pth")["network_weights"]
    for k in ref_w:
        torch.testing.assert_close(w[k], ref_w[k], rtol=0, atol=0)
    # resuming with other options is refused: the checkpoint says how it was trained
    with pytest.raises(ValueError, match="trained with options none, this run has .*batch_size"):
        train(650, 0, "ResNetTrainer", device="cpu", num_epochs=4, num_iterations=2, resume=True,
              skip_validation=True, batch_size=2)


def test_multiclass_and_val_only(samunet_roots):
    from conftest import make_synthetic_raw
    from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess

    make_synthetic_raw(samunet_roots["raw"], dataset_id=651, num_labels=2, domains=False)
    plan_and_preprocess(651, num_processes=1)
    t = train(651, 1, "ResNetTrainer", device="cpu", num_epochs=1, num_iterations=2)
    assert t.network_config()["num_outputs"] == 3
    summary = json.loads((t.output_folder / "validation" / "summary.json").read_text())
    assert set(summary["labels"]) == {"1", "2"}
    train(651, 1, "ResNetTrainer", device="cpu", val_only=True)


@pytest.mark.slow
def test_real_prostate_end_to_end(prostate_raw, samunet_roots, tmp_path):
    from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess

    plan_and_preprocess(501, num_processes=2)
    t = train(501, 0, "ResNetTrainer", device="cpu", num_epochs=1, num_iterations=2)
    summary = json.loads((t.output_folder / "validation" / "summary.json").read_text())
    assert summary["n_cases"] == 2 and not summary["missing_predictions"]
    for r in summary["metric_per_case"]:
        _assert_same_geometry(prostate_raw / "labelsTr" / f"{r['case']}.nii.gz", r["prediction_file"])


@pytest.mark.slow
def test_torchrun_ddp_two_processes(synthetic_planned, samunet_roots):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "samunet.run.train", "650", "0", "-tr", "ResNetTrainer", "--epochs", "1", "--iters", "2", "--no_validation", "-device", "cpu"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    folder = samunet_roots["results"] / "Dataset650_Synthetic" / "ResNetTrainer__samunetPlans" / "fold_0"
    assert (folder / "checkpoint_final.pth").is_file()
    w = load_checkpoint(folder / "checkpoint_final.pth")["network_weights"]
    assert not any(k.startswith("module.") for k in w)  # saved unwrapped, loadable without DDP
