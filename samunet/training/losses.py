"""Segmentation losses on logits.

A dataset with one foreground label is trained with a single sigmoid output; several
mutually exclusive labels use softmax over ``K = num labels`` outputs (background
included). Either way the loss is soft Dice (foreground classes, batch-pooled) plus
cross-entropy, weighted 1:1.

Unannotated pixels (nnU-Net v2's ``ignore`` label) contribute nothing, as in nnU-Net: the
cross-entropy is averaged over annotated pixels only and the Dice sums skip the ignored ones.
Integer label maps carry the ignore label's value (``DiceCELoss(ignore_label=K)``); the binary
float targets of the SAM-stage trainers carry :data:`IGNORE_TARGET` there (see
:func:`mark_ignored`, :func:`split_ignored`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


#: Value of an ignored pixel in a binary (0/1) float target
IGNORE_TARGET = -1.0


def mark_ignored(target: torch.Tensor, ignored: torch.Tensor | None) -> torch.Tensor:
    """``target`` (float, 0/1) with :data:`IGNORE_TARGET` where ``ignored`` (same shape,
    bool or float > 0.5); unchanged when ``ignored`` is None."""
    if ignored is None:
        return target
    ignored = ignored > 0.5 if ignored.dtype != torch.bool else ignored
    return torch.where(ignored, torch.full_like(target, IGNORE_TARGET), target)


def split_ignored(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(target with ignored pixels set to 0, float weight 1 annotated / 0 ignored)``; the
    weight is None when no pixel is ignored (so such batches compute exactly as before)."""
    ignored = target < 0
    if not bool(ignored.any()):
        return target, None
    return target.masked_fill(ignored, 0.0), (~ignored).to(target.dtype)


def masked_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` over the pixels with weight 1 (all pixels when ``weight`` is None); 0 if none."""
    if weight is None:
        return values.mean()
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


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
    """``loss(logits (B, K', H, W), target (B, 1, H, W) int labels 0..K-1)``; pixels whose
    target is ``ignore_label`` (nnU-Net v2's ignore label, if any) count for nothing."""

    def __init__(self, smooth: float = 1e-5, weight_ce: float = 1.0, weight_dice: float = 1.0,
                 ignore_label: int | None = None):
        super().__init__()
        self.smooth, self.weight_ce, self.weight_dice = smooth, weight_ce, weight_dice
        self.ignore_label = None if ignore_label is None else int(ignore_label)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target[:, 0].long()
        valid = None
        if self.ignore_label is not None:
            annotated = target != self.ignore_label
            target = torch.where(annotated, target, torch.zeros_like(target))
            valid = annotated.to(logits.dtype)
        if logits.shape[1] == 1:
            t = (target > 0).float()
            ce = masked_mean(F.binary_cross_entropy_with_logits(logits[:, 0], t, reduction="none"), valid)
            probs = torch.sigmoid(logits[:, 0])[:, None]
            onehot = t[:, None]
        else:
            ce = masked_mean(F.cross_entropy(logits, target, reduction="none"), valid)
            probs = torch.softmax(logits, 1)[:, 1:]
            onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()[:, 1:]
        if valid is not None:
            probs, onehot = probs * valid[:, None], onehot * valid[:, None]
        dims = (0, 2, 3)  # pooled over the batch: stable when a class is absent in one image
        inter = (probs * onehot).sum(dims)
        denom = probs.sum(dims) + onehot.sum(dims)
        dice = (2 * inter + self.smooth) / (denom + self.smooth)
        return self.weight_ce * ce + self.weight_dice * (1 - dice.mean())


# plans.json stage1.loss -> (weight_ce, weight_dice) of DiceCELoss
STAGE1_LOSSES = {"dice_ce": (1.0, 1.0), "ce": (1.0, 0.0), "dice": (0.0, 1.0)}


def stage1_loss(name: str, ignore_label: int | None = None, where: str = "plans.json") -> DiceCELoss:
    """The stage-1 loss the plan names (``stage1.loss``): ``dice_ce``, ``ce`` or ``dice``."""
    if name not in STAGE1_LOSSES:
        raise ValueError(f"{where}: stage1.loss is {name!r}; choose one of {sorted(STAGE1_LOSSES)}")
    weight_ce, weight_dice = STAGE1_LOSSES[name]
    return DiceCELoss(weight_ce=weight_ce, weight_dice=weight_dice, ignore_label=ignore_label)


class DiceBCEWithLogits(torch.nn.Module):
    """Soft Dice per (sample, channel) + BCE on logits, 1:1 (MedSAM style), on ``(B, K, H, W)``
    logits and binary targets of the same shape; target pixels equal to :data:`IGNORE_TARGET`
    count for nothing. ``legacy_double_sigmoid``: ProMISe's reference defect (the output is
    passed through a sigmoid and then treated as logits again)."""

    def __init__(self, smooth: float = 1e-5, legacy_double_sigmoid: bool = False):
        super().__init__()
        self.smooth, self.legacy_double_sigmoid = float(smooth), bool(legacy_double_sigmoid)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.legacy_double_sigmoid:
            logits = torch.sigmoid(logits)
        target, valid = split_ignored(target)
        bce = masked_mean(F.binary_cross_entropy_with_logits(logits, target, reduction="none"), valid)
        p = torch.sigmoid(logits)
        if valid is not None:
            p = p * valid
        inter = (p * target).sum((2, 3))
        dice = (2 * inter + self.smooth) / (p.sum((2, 3)) + target.sum((2, 3)) + self.smooth)
        return bce + (1 - dice).mean()


class ProMISeLoss(DiceBCEWithLogits):
    """ProMISe's BCE + Dice: Dice per (sample, class) as in the reference, ``2(I+1)/(P+G+1)``."""

    def __init__(self, legacy_double_sigmoid: bool = False):
        super().__init__(smooth=1.0, legacy_double_sigmoid=legacy_double_sigmoid)


def confusion_counts(pred: torch.Tensor, target: torch.Tensor, dims=None) -> tuple:
    """``(tp, fp, fn)`` of boolean ``pred`` against boolean ``target`` (summed over ``dims``, or
    everything: ints), for pseudo-Dice during validation."""
    pred, target = pred.bool(), target.bool()
    counts = [(pred & target), (pred & ~target), (~pred & target)]
    if dims is None:
        return tuple(int(c.sum()) for c in counts)
    return tuple(c.sum(dims).cpu().numpy() for c in counts)
