"""Stage 1: a 2D coarse segmenter with a ResNet backbone, trained from scratch.

Two families, chosen by ``plans["stage1"]["backbone"]``:

- ``resnet18`` / ``resnet34`` / ``resnet50``: torchvision ResNet encoder + a light U-Net
  decoder (skip connections at strides 2-32), full-resolution logits.
- ``deeplabv3_resnet50``: torchvision DeepLabV3-ResNet50 (output stride 8, ASPP), as in
  the SAMMed paper, logits upsampled bilinearly to the input size.

No pretrained weights are loaded (nothing can be downloaded at run time).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18, resnet34, resnet50
from torchvision.models.segmentation import deeplabv3_resnet50

_RESNETS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}
BACKBONES = tuple(_RESNETS) + ("deeplabv3_resnet50",)


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _UpBlock(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.conv = nn.Sequential(_conv_bn_relu(cin + cskip, cout), _conv_bn_relu(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], 1))


class ResNetUNet(nn.Module):
    """ResNet encoder + U-Net decoder down to stride 2. ``(B, C_in, H, W) -> (B, K, H, W)`` logits.

    ``base_width`` scales the decoder (the encoder widths are ResNet's own).
    """

    def __init__(self, in_channels: int, num_outputs: int, backbone: str = "resnet18", base_width: int = 32):
        super().__init__()
        enc = _RESNETS[backbone](weights=None)
        if in_channels != 3:
            enc.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.stem = nn.Sequential(enc.conv1, enc.bn1, enc.relu)  # stride 2, 64 ch
        self.pool = enc.maxpool
        self.layers = nn.ModuleList([enc.layer1, enc.layer2, enc.layer3, enc.layer4])  # strides 4..32
        expansion = 4 if backbone == "resnet50" else 1
        chans = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
        w = base_width
        self.up4 = _UpBlock(chans[3], chans[2], 8 * w)
        self.up3 = _UpBlock(8 * w, chans[1], 4 * w)
        self.up2 = _UpBlock(4 * w, chans[0], 2 * w)
        self.up1 = _UpBlock(2 * w, 64, w)
        self.head = nn.Conv2d(w, num_outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.stem(x)
        feats = []
        h = self.pool(s1)
        for layer in self.layers:
            h = layer(h)
            feats.append(h)
        d = self.up4(feats[3], feats[2])
        d = self.up3(d, feats[1])
        d = self.up2(d, feats[0])
        d = self.up1(d, s1)
        # logits at stride 2, upsampled: a full-resolution decoder stage would double the
        # CPU cost for a coarse mask whose job is to locate the object
        return F.interpolate(self.head(d), size=x.shape[-2:], mode="bilinear", align_corners=False)


class DeepLabV3ResNet50(nn.Module):
    """torchvision DeepLabV3-ResNet50 (output stride 8). ``(B, C_in, H, W) -> (B, K, H, W)``."""

    def __init__(self, in_channels: int, num_outputs: int):
        super().__init__()
        self.net = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=num_outputs, aux_loss=False)
        if in_channels != 3:
            self.net.backbone.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def build_stage1_network(backbone: str, in_channels: int, num_outputs: int, base_width: int = 32) -> nn.Module:
    if backbone == "deeplabv3_resnet50":
        return DeepLabV3ResNet50(in_channels, num_outputs)
    if backbone in _RESNETS:
        return ResNetUNet(in_channels, num_outputs, backbone, base_width)
    raise ValueError(f"unknown stage-1 backbone {backbone!r} in plans.json; choose one of {BACKBONES}")
