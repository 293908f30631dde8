import pytest
import torch

from samunet.training.losses import DiceCELoss, logits_to_probabilities, num_outputs_for


def test_num_outputs():
    assert num_outputs_for([0, 1]) == 1
    assert num_outputs_for([0, 1, 2]) == 3


def test_perfect_logits_give_low_loss_and_wrong_high():
    target = torch.zeros(2, 1, 16, 16, dtype=torch.long)
    target[:, :, 4:10, 4:10] = 1
    good = (target.float() * 40 - 20)
    bad = -good
    loss = DiceCELoss()
    assert loss(good, target) < 0.01
    assert loss(bad, target) > 1.5


def test_softmax_branch_and_probabilities_sum_to_one():
    target = torch.randint(0, 3, (2, 1, 8, 8))
    logits = torch.nn.functional.one_hot(target[:, 0], 3).permute(0, 3, 1, 2).float() * 30
    assert DiceCELoss()(logits, target) < 0.01
    p = logits_to_probabilities(torch.randn(2, 3, 4, 4))
    torch.testing.assert_close(p.sum(1), torch.ones(2, 4, 4))
    p1 = logits_to_probabilities(torch.randn(2, 1, 4, 4))
    assert p1.shape == (2, 2, 4, 4)


def test_loss_decreases_when_optimised():
    torch.manual_seed(0)
    target = torch.zeros(2, 1, 16, 16, dtype=torch.long)
    target[:, :, 3:9, 5:12] = 1
    logits = torch.zeros(2, 1, 16, 16, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.5)
    loss = DiceCELoss()
    first = float(loss(logits, target).detach())
    for _ in range(30):
        opt.zero_grad()
        l = loss(logits, target)
        l.backward()
        opt.step()
    assert float(l.detach()) < first / 3


# ---- nnU-Net v2's ignore label: its pixels contribute nothing ---------------------------------


def _ignore_case(num_outputs: int, ignore: int):
    """Target with label 1 (and 2), a band of ignore pixels; logits right on the annotated pixels."""
    torch.manual_seed(0)
    target = torch.zeros(2, 1, 16, 16, dtype=torch.long)
    target[:, :, 3:10, 4:12] = 1
    if num_outputs > 1:
        target[:, :, 11:14, 2:6] = 2
    ignored = torch.zeros_like(target, dtype=torch.bool)
    ignored[:, :, 6:9, :] = True  # across the object and background
    target[ignored] = ignore
    k = max(num_outputs, 2)
    base = torch.randn(2, num_outputs, 16, 16)
    return target, ignored, base, k


@pytest.mark.parametrize("num_outputs", [1, 3])
def test_dice_ce_loss_ignores_the_ignore_label(num_outputs):
    ignore = 2 if num_outputs == 1 else 3
    target, ignored, logits, _ = _ignore_case(num_outputs, ignore)
    loss = DiceCELoss(ignore_label=ignore)
    other = logits.clone()
    other[ignored.expand_as(other)] = torch.randn(int(ignored.expand_as(other).sum())) * 50
    assert float(loss(other, target)) == pytest.approx(float(loss(logits, target)), rel=1e-6)
    # no gradient reaches an ignored pixel, annotated pixels get one
    x = logits.clone().requires_grad_(True)
    loss(x, target).backward()
    g = x.grad.abs().sum(1, keepdim=True)
    assert float(g[ignored].max()) == 0.0 and float(g[~ignored].max()) > 0
    # the loss differs from the loss on the target with ignore pixels set to background
    as_background = torch.where(ignored, torch.zeros_like(target), target)
    assert float(DiceCELoss()(logits, as_background)) != pytest.approx(float(loss(logits, target)), rel=1e-3)


def test_dice_ce_loss_without_ignored_pixels_is_unchanged():
    target, _, logits, _ = _ignore_case(3, 3)
    target[target == 3] = 0
    assert float(DiceCELoss(ignore_label=3)(logits, target)) == pytest.approx(float(DiceCELoss()(logits, target)),
                                                                              rel=1e-6)


@pytest.mark.parametrize("loss_name", ["dice_bce", "promise", "uncertainty"])
def test_binary_sam_losses_skip_ignore_target_pixels(loss_name):
    from samunet.training.losses import IGNORE_TARGET, DiceBCEWithLogits, mark_ignored
    from samunet.training.trainers.promise_trainer import ProMISeLoss
    from samunet.training.uncertainty_weighted_loss import UncertaintyWeightedLoss

    torch.manual_seed(1)
    target = torch.zeros(2, 1, 32, 32)
    target[:, :, 8:20, 6:24] = 1
    ignored = torch.zeros_like(target, dtype=torch.bool)
    ignored[:, :, 12:16, :] = True
    t = mark_ignored(target, ignored)
    assert float(t[ignored].max()) == IGNORE_TARGET and torch.equal(t[~ignored], target[~ignored])
    logits = torch.randn(2, 1, 32, 32)
    other = logits.clone()
    other[ignored] = 30.0  # confidently foreground where nothing is annotated

    if loss_name == "uncertainty":
        u = UncertaintyWeightedLoss()
        sparse, dense = torch.zeros(2, 2, 256), torch.zeros(2, 256, 64, 64)

        def fn(lg, tg):
            return u(sparse, dense, sparse, dense, lg, tg)
    else:
        fn = DiceBCEWithLogits() if loss_name == "dice_bce" else ProMISeLoss()
    assert float(fn(other, t).detach()) == pytest.approx(float(fn(logits, t).detach()), rel=1e-6)
    assert float(fn(other, target).detach()) != pytest.approx(float(fn(logits, target).detach()), rel=1e-3)  # counted without ignore
    x = logits.clone().requires_grad_(True)
    fn(x, t).backward()
    assert float(x.grad[ignored].abs().max()) == 0.0 and float(x.grad[~ignored].abs().max()) > 0
