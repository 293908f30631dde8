"""Every trainer's targets mark nnU-Net v2's ignore pixels, so its loss does not depend on
what the network outputs there (EmbeddingHead, SAMBox, ProMISe, ClassPrompt; ResNet: see
test_ignore_label_training.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ignore_label_data import IGNORE, make_ignore_raw

DATASET = 654


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """4 tiny cases (3 slices of 64², domains A/B) with an ignore band through every blob."""
    from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess

    base = tmp_path_factory.mktemp("ignore_sam")
    with pytest.MonkeyPatch.context() as mp:
        roots = {}
        for var, sub in (("SAMUNET_raw", "raw"), ("SAMUNET_preprocessed", "preprocessed"),
                         ("SAMUNET_results", "results")):
            (base / sub).mkdir()
            mp.setenv(var, str(base / sub))
            roots[sub] = base / sub
        make_ignore_raw(roots["raw"], DATASET, n_cases=4, shape=(3, 64, 64), domains=True)
        plan_and_preprocess(DATASET, num_processes=1)
        plans_file = next(roots["preprocessed"].glob(f"Dataset{DATASET}_*/plans.json"))
        plans = json.loads(plans_file.read_text())
        plans["embedding_head"]["num_views"] = 0  # no appearance views to encode: these tests check targets
        plans_file.write_text(json.dumps(plans))
        yield roots


def assert_blind_to_ignored(loss_of, logits: torch.Tensor, ignored: torch.Tensor) -> None:
    """``loss_of(logits)`` is the same when the logits change on the ignored pixels only (and
    changes when they change on annotated pixels)."""
    assert bool(ignored.any())
    ignored = ignored.expand_as(logits)
    flipped = torch.where(ignored, -30.0 * torch.sign(logits + 1e-3), logits)
    with torch.no_grad():
        base = float(loss_of(logits))
        assert float(loss_of(flipped)) == pytest.approx(base, rel=1e-5, abs=1e-6)
        assert float(loss_of(torch.where(ignored, logits, -logits))) != pytest.approx(base, rel=1e-3)


def test_embedding_head_targets_keep_the_ignore_label(planned):
    from samunet.training.trainers.embedding_head_trainer import EmbeddingHeadTrainer

    t = EmbeddingHeadTrainer(DATASET, "domain_A", device="cpu", num_epochs=1, num_iterations_per_epoch=1)
    t.initialize()
    t.make_datasets()
    batch = t._batch(t.train_slices, 4, np.random.default_rng(0), views=False)
    target = torch.from_numpy(batch["seg"].astype(np.int64))
    assert set(np.unique(batch["seg"])) == {0, 1, IGNORE}
    with torch.no_grad():
        logits = t.network(torch.from_numpy(batch["data"]))
    assert logits.shape[1] == 1  # background / blob: the ignore label is no output
    assert_blind_to_ignored(lambda lg: t.loss(lg, target), logits, target == IGNORE)


def test_sam_box_targets_mark_ignored_pixels(planned):
    from samunet.training.losses import IGNORE_TARGET
    from samunet.training.trainers.sam_box_trainer import SAMBoxTrainer

    t = SAMBoxTrainer(DATASET, "domain_A", device="cpu", num_epochs=1, num_iterations_per_epoch=1,
                      stage1_epochs=1, stage1_iters=1, train_box_source="gt")
    t.ensure_stage1()
    t.initialize()
    t.make_datasets()
    batch = t._batch(t.train_prompts, 4, np.random.default_rng(0), jitter=False)
    target = batch["target"]
    assert set(torch.unique(target).tolist()) == {0.0, 1.0, IGNORE_TARGET}
    with torch.no_grad():
        logits = t._forward(batch)
    assert_blind_to_ignored(lambda lg: t.loss(lg, target), logits, target < 0)


def test_promise_targets_mark_ignored_pixels(planned):
    from samunet.training.trainers.promise_trainer import ProMISeTrainer

    t = ProMISeTrainer(DATASET, "domain_A", device="cpu", num_epochs=1, num_iterations_per_epoch=1, points=3,
                       apm_width=32, apm_depth=10, cache_features=False)
    t.initialize()
    t.make_datasets()
    batch = t._batch(t.train_slices, 2, np.random.default_rng(0))
    target = batch["target"]
    assert target.shape[1] == 1  # one class: blob
    with torch.no_grad():
        logits = t._forward_batch(batch)
    assert_blind_to_ignored(lambda lg: t.loss(lg, target), logits, target < 0)


def test_class_prompt_targets_mark_ignored_pixels(planned):
    from samunet.training.trainers.class_prompt_trainer import ClassPromptTrainer

    t = ClassPromptTrainer(DATASET, "domain_A", device="cpu", num_epochs=1, num_iterations_per_epoch=1)
    t.initialize()
    t.make_datasets()
    assert {lab for _, _, present in t.train_samples for lab in present} == {1}
    batch = t._batch(t.train_samples, 2, np.random.default_rng(0), jitter=False)
    with torch.no_grad():
        sparse, dense, sparse_t, dense_t, logits = t._forward(batch, train=False)
    target, dist = batch["target"], batch["dist"]
    assert_blind_to_ignored(lambda lg: t.loss(sparse, dense, sparse_t, dense_t, lg, target, dist), logits,
                            target < 0)
