"""Training on a dataset with nnU-Net v2's ``ignore`` label: the network predicts no ignore
class, its loss skips the ignored pixels, and it still learns the annotated object."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ignore_label_data import IGNORE, make_ignore_raw
from samunet.evaluation.metrics import case_metrics
from samunet.training.losses import DiceCELoss


def _images(n: int, rng: np.random.Generator):
    """``(n, 1, 32, 32)`` noisy images with a bright square (label 1), an ignore band through
    it and an unannotated bright decoy (ignore) in a corner."""
    x = rng.normal(0, 0.3, (n, 1, 32, 32)).astype(np.float32)
    y = np.zeros((n, 1, 32, 32), np.int64)
    for i in range(n):
        r, c = rng.integers(6, 18, 2)
        y[i, 0, r:r + 9, c:c + 9] = 1
        x[i, 0, r:r + 9, c:c + 9] += 1.0
        y[i, 0, r + 3:r + 6, :] = IGNORE
        y[i, 0, 0:5, 26:31] = IGNORE
        x[i, 0, 0:5, 26:31] += 1.0
    return torch.from_numpy(x), torch.from_numpy(y)


@pytest.mark.learns
def test_loss_with_ignore_label_learns_and_evaluation_masks_it():
    """A short run of a small CNN with :class:`DiceCELoss` (ignore label) on synthetic images
    reaches Dice > 0.9 on the annotated pixels of new images (:func:`case_metrics` masking)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss = DiceCELoss(ignore_label=IGNORE)
    for _ in range(60):
        x, y = _images(8, rng)
        opt.zero_grad()
        loss(net(x), y).backward()
        opt.step()
    x, y = _images(4, rng)
    with torch.no_grad():
        pred = (net(x)[:, 0] > 0).long().numpy()
    for p, ref in zip(pred, y[:, 0].numpy()):
        assert case_metrics(p[None], ref[None], [1], ignore_label=IGNORE)[1]["Dice"] > 0.9


@pytest.mark.slow
@pytest.mark.learns
def test_resnet_trainer_learns_with_an_ignore_label(samunet_roots):
    """The whole path: plan (label list without the ignore label), ResNetTrainer targets and
    loss, prediction (no ignore class), evaluation masked. ~25 s of CPU."""
    from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess
    from samunet.preprocessing.preprocessor import load_preprocessed_case
    from samunet.training.trainers.resnet_trainer import ResNetTrainer

    make_ignore_raw(samunet_roots["raw"], 651, n_cases=6)
    plan_and_preprocess(651, num_processes=1)
    torch.set_num_threads(1)
    t = ResNetTrainer(651, 0, device="cpu", num_epochs=5, num_iterations_per_epoch=10, num_val_iterations=1,
                      batch_size=8)
    t.plans["stage1"].update(base_width=16, dg_augmentation=False)  # small and quick: a CPU test
    assert t.ignore_label == IGNORE and t.label_values == [0, 1]
    assert t.network_config()["num_outputs"] == 1  # binary: the ignore label is no output
    t.run_training()
    assert t.loss.ignore_label == IGNORE
    dices = []
    for case in t.split["val"] + t.split["train"][:1]:
        data, seg, _ = load_preprocessed_case(t.data_folder, case)
        pred = np.asarray(t.label_values)[t.predict_preprocessed(data).argmax(0)]
        assert IGNORE not in np.unique(pred)
        dices.append(case_metrics(pred, seg[0], [1], ignore_label=IGNORE)[1]["Dice"])
    assert min(dices) > 0.75, dices  # measured 0.81-0.82 (untrained: < 0.1)


def test_a_plan_from_before_the_ignore_label_is_refused(samunet_roots):
    """A plan written before samunet knew the ignore label would train it as a class: refused."""
    import json

    from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess
    from samunet.training.trainers.resnet_trainer import ResNetTrainer

    make_ignore_raw(samunet_roots["raw"], 651, n_cases=4)
    plan_and_preprocess(651, num_processes=1)
    plans_file = next(samunet_roots["preprocessed"].glob("Dataset651_*/plans.json"))
    plans = json.loads(plans_file.read_text())
    plans["label_values"] = [0, 1, IGNORE]
    del plans["ignore_label"]
    plans_file.write_text(json.dumps(plans))
    with pytest.raises(ValueError, match=r"plans\.json .*ignore.*re-plan"):
        ResNetTrainer(651, 0, device="cpu")
