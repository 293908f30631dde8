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
