"""Segmentation losses on logits.

A dataset with one foreground label is trained with a single sigmoid output; several
mutually exclusive labels use softmax over ``K = num labels`` outputs (background
included). Either way the loss is soft Dice (foreground classes, batch-pooled) plus
cross-entropy, weighted 1:1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def num_outputs_for(label_values: list[int]) -> int:
    """1 (sigmoid) for a binary task, else one output per label including background."""
    return 1 if len(label_values) == 2 else len(label_values)


def logits_to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``(B, K', H, W)`` logits -> ``(B, K, H, W)`` class probabilities with background first."""
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], 1)
    return torch.softmax(logits, 1)


class DiceCELoss(nn.Module):
    """``loss(logits (B, K', H, W), target (B, 1, H, W) int labels 0..K-1)``."""

    def __init__(self, smooth: float = 1e-5, weight_ce: float = 1.0, weight_dice: float = 1.0):
        super().__init__()
        self.smooth, self.weight_ce, self.weight_dice = smooth, weight_ce, weight_dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target[:, 0].long()
        if logits.shape[1] == 1:
            t = (target > 0).float()
            ce = F.binary_cross_entropy_with_logits(logits[:, 0], t)
            probs = torch.sigmoid(logits[:, 0])[:, None]
            onehot = t[:, None]
        else:
            ce = F.cross_entropy(logits, target)
            probs = torch.softmax(logits, 1)[:, 1:]
            onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()[:, 1:]
        dims = (0, 2, 3)  # pooled over the batch: stable when a class is absent in one image
        inter = (probs * onehot).sum(dims)
        denom = probs.sum(dims) + onehot.sum(dims)
        dice = (2 * inter + self.smooth) / (denom + self.smooth)
        return self.weight_ce * ce + self.weight_dice * (1 - dice.mean())


class DiceBCEWithLogits(torch.nn.Module):
    """Per-sample soft Dice + BCE on logits, 1:1 (MedSAM style). ``(B, 1, H, W)`` both."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits, target)
        p = torch.sigmoid(logits)
        inter = (p * target).sum((1, 2, 3))
        dice = (2 * inter + 1e-5) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1e-5)
        return bce + (1 - dice).mean()
