"""A small trained results tree, built once per test session and shared by the report,
overlay and model-export tests (tests/evaluation, tests/inference).

Dataset650_Synthetic (6 cases, domains A and B) planned and preprocessed, then
``ResNetTrainer`` trained for 1 epoch x 2 iterations on folds ``domain_A``, ``domain_B`` and
``0`` with their final validation (and test) predictions and summary.json files. The plan's
stage-1 batch is cut to 2 and the per-epoch pseudo-Dice batches are skipped so the three
trainings stay short on CPU.

Tests must not modify this tree: copy what they change.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest

FOLDS = ("domain_A", "domain_B", "0")
DATASET = "Dataset650_Synthetic"
TRAINER = "ResNetTrainer"
_ROOTS: dict[str, Path] | None = None


def make_roots(base: Path, mp: pytest.MonkeyPatch) -> dict[str, Path]:
    """``{"raw", "preprocessed", "results"}`` folders under ``base``, set as the SAMUNET_* roots in ``mp``."""
    roots = {}
    for var, sub in (("SAMUNET_raw", "raw"), ("SAMUNET_preprocessed", "preprocessed"), ("SAMUNET_results", "results")):
        roots[sub] = base / sub
        roots[sub].mkdir()
        mp.setenv(var, str(roots[sub]))
    return roots


def build(tmp_path_factory) -> dict[str, Path]:
    """``{"raw", "preprocessed", "results"}`` of the shared tree (trained on first use)."""
    global _ROOTS
    if _ROOTS is not None:
        return _ROOTS
    from conftest import make_synthetic_raw
    from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess
    from samunet.run.train import train

    base = tmp_path_factory.mktemp("trained_tree")
    with pytest.MonkeyPatch.context() as mp:
        roots = make_roots(base, mp)
        make_synthetic_raw(roots["raw"])
        plan_and_preprocess(650, num_processes=1)
        plans_file = roots["preprocessed"] / DATASET / "plans.json"
        plans = json.loads(plans_file.read_text())
        plans["stage1"]["batch_size"] = 2
        plans["stage1"]["num_val_iterations_per_epoch"] = 0  # no pseudo-Dice batches
        plans_file.write_text(json.dumps(plans, indent=2))
        for fold in FOLDS:
            train(650, fold, TRAINER, device="cpu", num_epochs=1, num_iterations=2)
    _ROOTS = roots
    return roots


@contextmanager
def single_thread():
    """Run torch on one thread: on a shared 2-core machine two OpenMP threads that wait for each
    other make a tiny ResNet step ~30x slower than one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def use(tmp_path_factory, monkeypatch) -> dict[str, Path]:
    """Build (once) and point the three SAMUNET_* variables at the shared tree."""
    roots = build(tmp_path_factory)
    for var, sub in (("SAMUNET_raw", "raw"), ("SAMUNET_preprocessed", "preprocessed"), ("SAMUNET_results", "results")):
        monkeypatch.setenv(var, str(roots[sub]))
    return roots


def model_folder(roots) -> Path:
    return roots["results"] / DATASET / f"{TRAINER}__samunetPlans"
