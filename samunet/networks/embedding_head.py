"""A light segmentation head on SAM's frozen image embedding.

Input: the cached ``(B, 256, 64, 64)`` image embedding (the frame of SAM's padded
``S × S`` input, content at the top left). Output: ``(B, K', 256, 256)`` logits in the same
frame as the mask decoder's low-resolution masks, so
:meth:`samunet.sam.wrapper.SamWrapper.postprocess_logits` maps them to the slice.
``K'`` follows :func:`samunet.training.losses.num_outputs_for` (1 sigmoid for a binary task,
else one output per label, background included).

The encoder already separates organs, lesions and background; the head only has to read
that out and sharpen the boundary, so it is small (~0.1 M parameters at width 64): a
1×1 reduction with channel dropout (so no single embedding channel — the ones that move
most with scanner appearance — carries the decision), a residual pair of 3×3 blocks at
64², a residual context pair of dilated 3×3 blocks (dilations ``context_dilations``, default 2
and 4: a receptive field of ~25 embedding cells, so a large lesion is read as one object; on
polyp_dev's unseen centre, with test-time flipping, 0.755 → 0.769 chain Dice, 2 seeds), one ×2
upsampling block at 128², a 1×1 output, and bilinear ×2 of the logits to 256²
(full-resolution convolutions would triple the cost of a step on a CPU for a boundary
that SAM's decoder redraws anyway in the chain; a shallow branch on the 256² image, measured on
polyp_dev, lowered the unseen centre: head 0.742 → 0.727, chain 0.758 → 0.740, 2 seeds —
documentation/training.md).
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

EMBEDDING_CHANNELS = 256


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.GroupNorm(min(8, c_out), c_out),
                         nn.GELU())


def _dilated_block(c: int, dilation: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=dilation, dilation=dilation, bias=False),
                         nn.GroupNorm(min(8, c), c), nn.GELU())


class EmbeddingHead(nn.Module):
    def __init__(self, num_outputs: int, width: int = 64, dropout: float = 0.1,
                 in_channels: int = EMBEDDING_CHANNELS, context_dilations=()):
        super().__init__()
        self.config = {"num_outputs": int(num_outputs), "width": int(width), "dropout": float(dropout),
                       "in_channels": int(in_channels), "context_dilations": [int(d) for d in context_dilations]}
        half = max(8, width // 4)
        self.drop = nn.Dropout2d(dropout)
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, width, 1, bias=False), nn.GroupNorm(min(8, width), width),
                                    nn.GELU())
        self.body = nn.Sequential(_block(width, width), _block(width, width))
        self.context = (nn.Sequential(*[_dilated_block(width, d) for d in self.config["context_dilations"]])
                        if self.config["context_dilations"] else None)
        self.up1 = _block(width, half)
        self.out = nn.Conv2d(half, num_outputs, 1)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        if embedding.ndim != 4 or embedding.shape[1] != self.config["in_channels"]:
            raise ValueError(f"EmbeddingHead expects (B, {self.config['in_channels']}, H, W) embeddings, "
                             f"got {tuple(embedding.shape)}")
        x = self.reduce(self.drop(embedding.float()))
        x = x + self.body(x)
        if self.context is not None:
            x = x + self.context(x)
        x = self.up1(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        return F.interpolate(self.out(x), scale_factor=2, mode="bilinear", align_corners=False)


def build_embedding_head(config: dict) -> EmbeddingHead:
    """``context_dilations`` absent (checkpoints written before it): no context blocks, as then."""
    return EmbeddingHead(config["num_outputs"], config.get("width", 64), config.get("dropout", 0.1),
                         config.get("in_channels", EMBEDDING_CHANNELS), config.get("context_dilations", ()))
