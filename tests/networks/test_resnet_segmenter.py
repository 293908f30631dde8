import pytest
import torch

from samunet.networks.resnet_segmenter import build_stage1_network


@pytest.mark.parametrize("backbone,cin,k", [("resnet18", 1, 1), ("resnet34", 3, 3), ("resnet50", 2, 4),
                                            ("deeplabv3_resnet50", 1, 3)])
def test_output_shape_any_size(backbone, cin, k):
    net = build_stage1_network(backbone, cin, k, base_width=8).eval()
    with torch.no_grad():
        out = net(torch.rand(2, cin, 96, 64))
    assert out.shape == (2, k, 96, 64)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="resnet18"):
        build_stage1_network("vgg", 1, 1)


def test_gradients_reach_first_layer():
    net = build_stage1_network("resnet18", 1, 2, base_width=8)
    net(torch.rand(2, 1, 64, 64)).sum().backward()
    first = next(net.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.learns
def test_resnet18_fits_a_bright_square():
    """Beyond shapes: the segmenter's output follows the image content. 40 Adam steps on
    4 noisy 32² images with a bright square reach Dice > 0.9 on 4 new ones (untrained: ~0)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)

    def images(n):
        x = 0.3 * torch.randn(n, 1, 32, 32, generator=gen)
        y = torch.zeros(n, 1, 32, 32)
        for i in range(n):
            r, c = torch.randint(4, 20, (2,), generator=gen).tolist()
            y[i, 0, r:r + 9, c:c + 9] = 1
        return x + y, y

    net = build_stage1_network("resnet18", 1, 1, base_width=8)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y = images(4)
    for _ in range(40):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(net(x), y).backward()
        opt.step()
    net.eval()
    x, y = images(4)
    with torch.no_grad():
        pred = net(x) > 0
    dice = 2 * float((pred & (y > 0)).sum()) / float(pred.sum() + y.sum())
    assert dice > 0.9
