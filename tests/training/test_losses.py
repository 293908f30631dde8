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
    assert float(l) < first / 3
