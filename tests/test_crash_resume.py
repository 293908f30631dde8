"""kill -9 in the middle of training, preprocessing and prediction, then resume.

Each run is a subprocess (``python -c`` calling the command's ``main``, with the network
blocked as in the rest of the suite) with its own SAMUNET_* roots and one torch thread.

* training: SIGKILL from outside as soon as the first epoch's log is written, i.e. while
  the second epoch runs; ``samunet_train --c`` then finishes the run;
* preprocessing and prediction: the subprocess SIGKILLs itself at an exact point inside a
  case (just before a result file would be renamed into place), so the test never races
  the process; a plain rerun (preprocessing) or ``--continue_prediction`` finishes the job.

The resumed results must equal those of an uninterrupted run with the same seed: network
weights and optimizer state bit for bit, preprocessed arrays and plans exactly, predicted
label maps and probabilities exactly. A result file damaged after the crash is never taken
as finished: it is made again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_synthetic_raw

TESTS = Path(__file__).resolve().parent
DATASET = "Dataset650_Synthetic"

pytestmark = pytest.mark.slow

# the subprocess: network blocked, optional SIGKILL just before the Nth rename onto a file
# whose name is KILL_BEFORE_RENAME (atomic writes end with os.replace), then the CLI's main()
BOOT = """
import fnmatch, os, signal, sys
sys.path.insert(0, {tests!r})
import network_guard
network_guard.block_network()
pattern, nth = os.environ.get("KILL_BEFORE_RENAME"), int(os.environ.get("KILL_AT", "1"))
if pattern:
    replace, hits = os.replace, [0]
    def replace_or_die(src, dst, *args, **kwargs):
        if fnmatch.fnmatch(os.path.basename(str(dst)), pattern):
            hits[0] += 1
            if hits[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return replace(src, dst, *args, **kwargs)
    os.replace = replace_or_die
from {module} import main
main(sys.argv[1:])
"""


def _env(roots: dict[str, Path], **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAMUNET_", "KILL_"))}
    env.update(SAMUNET_raw=str(roots["raw"]), SAMUNET_preprocessed=str(roots["preprocessed"]),
               SAMUNET_results=str(roots["results"]), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


def _start(module: str, args: list[str], roots, log: Path, **extra) -> subprocess.Popen:
    code = BOOT.format(tests=str(TESTS), module=module)
    out = open(log, "ab")
    return subprocess.Popen([sys.executable, "-c", code, *args], env=_env(roots, **extra), stdout=out,
                            stderr=subprocess.STDOUT, cwd=log.parent)


def _run(module, args, roots, log: Path, expect_kill=False, timeout=300, **extra) -> None:
    p = _start(module, args, roots, log, **extra)
    rc = p.wait(timeout=timeout)
    if expect_kill:
        assert rc == -signal.SIGKILL, f"expected SIGKILL, got {rc}:\n{log.read_text(errors='replace')[-3000:]}"
    else:
        assert rc == 0, f"{module} {args} failed ({rc}):\n{log.read_text(errors='replace')[-3000:]}"


def _make_roots(base: Path) -> dict[str, Path]:
    roots = {}
    for sub in ("raw", "preprocessed", "results"):
        roots[sub] = base / sub
        roots[sub].mkdir(parents=True, exist_ok=True)
    return roots


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """Dataset650 planned with a tiny stage-1 network, and fold 0 trained for one short epoch."""
    from trained_tree import single_thread

    from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess
    from samunet.run.train import train

    roots = _make_roots(tmp_path_factory.mktemp("crash"))
    with pytest.MonkeyPatch.context() as mp:
        for sub in roots:
            mp.setenv({"raw": "SAMUNET_raw", "preprocessed": "SAMUNET_preprocessed",
                       "results": "SAMUNET_results"}[sub], str(roots[sub]))
        make_synthetic_raw(roots["raw"])
        plan_and_preprocess(650, num_processes=1)
        plans_file = roots["preprocessed"] / DATASET / "plans.json"
        plans = json.loads(plans_file.read_text())
        plans["stage1"].update(base_width=8, patch_size=[32, 32], batch_size=2, num_val_iterations_per_epoch=1)
        plans_file.write_text(json.dumps(plans, indent=2))
        with single_thread():
            train(650, "0", "ResNetTrainer", device="cpu", num_epochs=1, num_iterations=2, skip_validation=True)
    return roots


# --------------------------------------------------------------------------- training


TRAIN_ARGS = ["650", "1", "-tr", "ResNetTrainer", "--epochs", "3", "--iters", "6", "-device", "cpu",
              "--no_validation", "--seed", "7"]


def _fold_folder(roots, fold="1") -> Path:
    return roots["results"] / DATASET / "ResNetTrainer__samunetPlans" / f"fold_{fold}"


def _assert_same_state(a: dict, b: dict, where: str = "") -> None:
    assert a.keys() == b.keys(), where
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), f"{where}{k} differs"
        elif isinstance(a[k], dict):
            _assert_same_state(a[k], b[k], f"{where}{k}.")
        elif isinstance(a[k], list):
            assert len(a[k]) == len(b[k])
            for i, (x, y) in enumerate(zip(a[k], b[k])):
                _assert_same_state({"v": x}, {"v": y}, f"{where}{k}[{i}].")
        else:
            assert a[k] == b[k], f"{where}{k}: {a[k]!r} != {b[k]!r}"


def test_training_killed_mid_epoch_resumes_to_identical_weights(planned, tmp_path):
    from samunet.training.checkpoint import load_checkpoint

    roots = planned
    folder = _fold_folder(roots)
    # the uninterrupted reference
    _run("samunet.run.train", TRAIN_ARGS, roots, tmp_path / "reference.log")
    reference = load_checkpoint(folder / "checkpoint_final.pth")
    reference_log = json.loads((folder / "training_log.json").read_text())
    shutil.rmtree(folder)

    # kill -9 once epoch 1 is logged, i.e. while epoch 2 runs
    p = _start("samunet.run.train", TRAIN_ARGS, roots, tmp_path / "killed.log")
    deadline = time.monotonic() + 240
    while not (folder / "training_log.json").is_file():
        assert p.poll() is None, (tmp_path / "killed.log").read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, "training never logged an epoch"
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    assert p.wait(timeout=60) == -signal.SIGKILL
    assert not (folder / "checkpoint_final.pth").exists(), "the kill came after training had finished"
    interrupted_epoch = load_checkpoint(folder / "checkpoint_latest.pth")["epoch"]
    assert interrupted_epoch < 2

    _run("samunet.run.train", TRAIN_ARGS + ["--c"], roots, tmp_path / "resumed.log")
    assert f"at epoch {interrupted_epoch + 1}" in (tmp_path / "resumed.log").read_text()
    assert _hidden_files(folder) == []
    resumed = load_checkpoint(folder / "checkpoint_final.pth")
    assert resumed["epoch"] == reference["epoch"] == 2
    _assert_same_state(resumed["network_weights"], reference["network_weights"], "network_weights.")
    _assert_same_state(resumed["optimizer_state"], reference["optimizer_state"], "optimizer_state.")
    _assert_same_state(resumed["rng_state"], reference["rng_state"], "rng_state.")
    log = json.loads((folder / "training_log.json").read_text())
    for a, b in zip(log["epochs"], reference_log["epochs"], strict=True):
        assert {k: v for k, v in a.items() if k != "epoch_time_s"} == {
            k: v for k, v in b.items() if k != "epoch_time_s"}


def test_resume_from_truncated_checkpoint_is_refused(planned, tmp_path, monkeypatch):
    from samunet.run.train import main as train_main

    for sub, var in (("raw", "SAMUNET_raw"), ("preprocessed", "SAMUNET_preprocessed"), ("results", "SAMUNET_results")):
        monkeypatch.setenv(var, str(planned[sub]))
    folder = _fold_folder(planned, "0")
    damaged = tmp_path / "results_copy"
    shutil.copytree(planned["results"], damaged)
    monkeypatch.setenv("SAMUNET_results", str(damaged))
    latest = _fold_folder({"results": damaged}, "0") / "checkpoint_latest.pth"
    data = (folder / "checkpoint_latest.pth").read_bytes()
    latest.write_bytes(data[: len(data) // 2])
    with pytest.raises(SystemExit) as exc:
        train_main(["650", "0", "-tr", "ResNetTrainer", "--epochs", "2", "--iters", "1", "-device", "cpu", "--c",
                    "--no_validation"])
    msg = str(exc.value.code)
    assert str(latest) in msg and "truncated" in msg and "delete it" in msg
    assert latest.read_bytes() == data[: len(data) // 2]  # left for the user to inspect


# --------------------------------------------------------------------------- preprocessing


def _preprocessed_state(folder: Path) -> dict:
    data = folder / "samunetPlans_2d"
    state = {name: (folder / name).read_bytes() for name in
             ("plans.json", "splits_final.json", "splits_domains.json", "dataset_fingerprint.json", "dataset.json")}
    for npz in sorted(data.glob("[!.]*.npz")):
        with np.load(npz) as f:
            state[npz.name] = {k: f[k] for k in f.files}
        state[npz.stem + ".json"] = json.loads((data / f"{npz.stem}.json").read_text())
    return state


def _assert_same_preprocessing(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if k.endswith(".npz"):
            assert a[k].keys() == b[k].keys()
            for arr in a[k]:
                assert np.array_equal(a[k][arr], b[k][arr]), f"{k}/{arr} differs"
        else:
            assert a[k] == b[k], f"{k} differs"


def _hidden_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


@pytest.mark.parametrize("kill_before", ["s02.npz", "s03.json"], ids=["while-writing-arrays", "before-case-json"])
def test_preprocessing_killed_mid_case_reruns_to_identical_output(tmp_path, kill_before, monkeypatch):
    from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess

    roots = _make_roots(tmp_path / "run")
    make_synthetic_raw(roots["raw"])
    raw_before = {p: p.read_bytes() for p in sorted(roots["raw"].rglob("*")) if p.is_file()}
    # the uninterrupted reference, in this process (numpy/scipy only: no thread-count effects)
    reference = tmp_path / "reference"
    reference.mkdir()
    monkeypatch.setenv("SAMUNET_raw", str(roots["raw"]))
    monkeypatch.setenv("SAMUNET_preprocessed", str(reference))
    plan_and_preprocess(650, num_processes=1)
    args = ["-d", "650", "-np", "1"]

    _run("samunet.experiment_planning.plan_and_preprocess", args, roots, tmp_path / "killed.log", expect_kill=True,
         KILL_BEFORE_RENAME=kill_before)
    data = roots["preprocessed"] / DATASET / "samunetPlans_2d"
    done = sorted(p.stem for p in data.glob("[!.]*.json"))
    assert done == (["s00", "s01"] if kill_before == "s02.npz" else ["s00", "s01", "s02"])
    # a finished case damaged after the crash (e.g. by a partial copy) is redone, not trusted
    npz = data / "s00.npz"
    npz.write_bytes(npz.read_bytes()[:200])

    _run("samunet.experiment_planning.plan_and_preprocess", args, roots, tmp_path / "rerun.log")
    rerun_log = (tmp_path / "rerun.log").read_text()
    redone = 6 - (len(done) - 1)
    assert f"{redone} preprocessed, {6 - redone} already done" in rerun_log
    _assert_same_preprocessing(_preprocessed_state(roots["preprocessed"] / DATASET),
                               _preprocessed_state(reference / DATASET))
    assert _hidden_files(roots["preprocessed"]) == []  # the killed write's temporary file is gone
    assert {p: p.read_bytes() for p in sorted(roots["raw"].rglob("*")) if p.is_file()} == raw_before


# --------------------------------------------------------------------------- prediction


def _prediction_state(folder: Path) -> dict:
    import SimpleITK as sitk

    state = {}
    for f in sorted(folder.glob("*.nii.gz")):
        state[f.name] = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
    for f in sorted(folder.glob("*.npz")):
        with np.load(f) as z:
            state[f.name] = z["probabilities"]
    return state


def test_prediction_killed_mid_case_continues_to_identical_output(planned, tmp_path):
    roots = planned
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in sorted((roots["raw"] / DATASET / "imagesTr").glob("*_0000.nii.gz")):
        shutil.copy(f, inputs)
    args = ["-i", str(inputs), "-d", "650", "-tr", "ResNetTrainer", "-f", "0", "-device", "cpu",
            "--save_probabilities"]
    _run("samunet.inference.predictor", args + ["-o", str(tmp_path / "reference")], roots, tmp_path / "reference.log")

    out = tmp_path / "out"
    # killed while writing case s03: its probabilities are in place, its label map is not
    _run("samunet.inference.predictor", args + ["-o", str(out)], roots, tmp_path / "killed.log", expect_kill=True,
         KILL_BEFORE_RENAME="s03.nii.gz")
    assert sorted(p.name for p in out.glob("[!.]*.nii.gz")) == ["s00.nii.gz", "s01.nii.gz", "s02.nii.gz"]
    assert len(_hidden_files(out)) == 1  # s03's label map, written but not renamed into place
    # a finished case damaged after the crash is predicted again
    s00 = out / "s00.nii.gz"
    s00.write_bytes(s00.read_bytes()[:-40])

    _run("samunet.inference.predictor", args + ["-o", str(out), "--continue_prediction"], roots,
         tmp_path / "continued.log")
    log = (tmp_path / "continued.log").read_text()
    assert "predicting again" in log and "s00.nii.gz" in log
    assert _hidden_files(out) == []
    a, b = _prediction_state(out), _prediction_state(tmp_path / "reference")
    assert a.keys() == b.keys() and len(a) == 12
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{k} differs from the uninterrupted run"
