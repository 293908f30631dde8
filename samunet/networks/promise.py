"""ProMISe (Wang et al., arXiv 2403.04164): the Auto-Prompting Module (APM) and the Pattern
Embedding (PaE) that drives Incremental Pattern Shifting (IPS), on a fully frozen SAM.

Everything here is trainable; SAM itself is never touched. The data flow per slice:

1. The frozen image encoder gives the final embedding ``(B, 256, 64, 64)`` and a few
   intermediate feature maps (:func:`apm_feature_spec` says which, see below).
2. :class:`AutoPromptingModule` turns the intermediate features into ``N`` point
   coordinates ``(B, K, N, 2)`` in the S frame (SAM's padded square input, side
   ``input_size``); their positive/negative labels are fixed by configuration
   (:func:`point_labels`). The points go through SAM's frozen prompt encoder, which is
   differentiable w.r.t. the coordinates, so the APM learns point positions end to end from
   the mask loss alone (there is no loss on the points).
3. :class:`PatternEmbedding` turns the final embedding into ``(B, K, 4, 256)`` offsets that
   are added to the decoder's 4 mask-token embeddings (not the IoU token) before the frozen
   two-way transformer (``SamWrapper.decode(..., mask_token_offsets=...)``).

Intermediate stages (the reference uses ViT-B blocks 6, 9 and 12 of 12, i.e. the outputs
at 1/2, 3/4 and the end of the encoder, each ``(B, 768, 64, 64)``):

- **ViT backbones** (``vit_b/l/h``, ``medsam_vit_b``): the outputs of the blocks at 1/2, 3/4
  and 4/4 of the depth (ViT-B: blocks 6, 9, 12 → 3 × 768 = 2304 channels, exactly the
  reference).
- **TinyViT** (``lite_medsam``): LiteMedSAM's TinyViT also has 12 blocks
  (depths 2 + 2 + 6 + 2: stage 0 MBConv blocks 1-2 at 256², stage 1 attention blocks 3-4 at
  128², stage 2 blocks 5-10 at 64² with 160 channels, stage 3 blocks 11-12 at 64² with 320
  channels; the patch merging after stage 2 has stride 1). The same fractions of the depth
  are therefore blocks 6, 9, 12 = ``layers[2].blocks[1]``, ``layers[2].blocks[4]`` and
  ``layers[3].blocks[1]``, all natively 64² (no resizing), 160 + 160 + 320 = 640 channels.
  The alternative "last output of stages 1, 2, 3" was rejected: stage 1 ends at 128² in
  the token grid before its patch merging (so it would need downsampling) and would put two
  of the three taps within one block of each other at the end of the network, while the
  block-count mapping keeps the reference's early/middle/late spread. The final tap is the
  token output before the neck (as ViT block 12 is the output before SAM's neck).

Multi-class datasets: **one head per foreground class on a shared trunk**. The three
reducing convolutions and the ResNet trunk (which hold almost all of the APM's compute) are
shared; the final ``Linear`` predicts ``K × N`` points (N per class) and the PaE's last
``Linear`` ``K × 4`` tokens, so every class gets its own points and its own pattern shift and
is decoded as its own prompt. For K = 1 this is exactly the reference. A class-conditioned
head (class id as an input) was not chosen: it would need K trunk passes or a FiLM-style
conditioning the reference does not have, for no gain at the sizes used here.

ResNet trunk depth: the reference uses a ResNet-34 ([3, 4, 6, 3] BasicBlocks). On the CPU
most of the APM's cost is in the three 3×3 convolutions at 64² (the trunk runs at 32² and
below), so the depth is configurable (``depth`` 10, 18 or 34) and defaults to 18.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: number of points -> (positive, negative), positives first (ProMISe 3P/5P/16P).
POINT_CONFIGS = {3: (1, 2), 5: (2, 3), 16: (8, 8)}

#: ResNet trunk depth -> BasicBlocks per stage.
RESNET_DEPTHS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def point_labels(num_points: int) -> list[int]:
    """Fixed labels for ``num_points`` learned points: ``1`` positive then ``0`` negative
    (3 → 1+2, 5 → 2+3, 16 → 8+8)."""
    if num_points not in POINT_CONFIGS:
        raise ValueError(f"ProMISe supports {sorted(POINT_CONFIGS)} points (1+2, 2+3, 8+8 positive+negative), "
                         f"got {num_points}")
    pos, neg = POINT_CONFIGS[num_points]
    return [1] * pos + [0] * neg


# ---------------------------------------------------------------------------- encoder taps
def apm_feature_spec(sam) -> dict:
    """Which encoder modules the APM reads, for a :class:`~samunet.sam.wrapper.SamWrapper`.

    Returns ``{"modules": [nn.Module, ...], "names": [...], "channels": [...], "layout": str}``;
    ``layout`` is ``"tokens"`` (TinyViT blocks: ``(B, L, C)``) or ``"bhwc"`` (ViT blocks:
    ``(B, H, W, C)``).
    """
    enc = sam.image_encoder
    if hasattr(enc, "layers") and hasattr(enc, "neck") and not hasattr(enc, "blocks"):  # TinyViT
        depths = [len(layer.blocks) for layer in enc.layers]
        blocks = [(i, j) for i, d in enumerate(depths) for j in range(d)]  # global block order
        total = len(blocks)
        picks = [blocks[round(total * f) - 1] for f in (0.5, 0.75, 1.0)]
        modules = [enc.layers[i].blocks[j] for i, j in picks]
        channels = [enc.layers[i].dim for i, _ in picks]
        names = [f"layers.{i}.blocks.{j}" for i, j in picks]
        return {"modules": modules, "names": names, "channels": channels, "layout": "tokens"}
    if hasattr(enc, "blocks"):  # segment_anything ImageEncoderViT
        total = len(enc.blocks)
        idx = [round(total * f) - 1 for f in (0.5, 0.75, 1.0)]
        modules = [enc.blocks[i] for i in idx]
        dim = enc.blocks[0].norm1.normalized_shape[0]
        return {"modules": modules, "names": [f"blocks.{i}" for i in idx], "channels": [dim] * 3, "layout": "bhwc"}
    raise TypeError(f"no APM feature taps known for image encoder {type(enc).__name__}")


def _to_map(x: torch.Tensor, layout: str, size: int = 64) -> torch.Tensor:
    """A tapped block output → ``(B, C, size, size)``."""
    if layout == "tokens" and x.ndim == 3:
        b, n, c = x.shape
        side = int(round(n ** 0.5))
        x = x.transpose(1, 2).reshape(b, c, side, side)
    elif layout == "bhwc" or (x.ndim == 4 and x.shape[1] == x.shape[2] and x.shape[3] != x.shape[1]):
        x = x.permute(0, 3, 1, 2)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


@torch.no_grad()
def encode_with_features(sam, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One frozen encoder pass: ``(B, 3, S, S)`` → ``embedding (B, 256, 64, 64)`` and the APM
    features ``(B, C_apm, 64, 64)`` (the taps of :func:`apm_feature_spec` concatenated in order
    of depth; 640 channels for TinyViT, 2304 for ViT-B)."""
    spec = apm_feature_spec(sam)
    grabbed: list[torch.Tensor] = [None] * len(spec["modules"])  # type: ignore[list-item]

    def hook(i):
        def fn(_m, _inp, out):
            grabbed[i] = out
        return fn

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(spec["modules"])]
    try:
        emb = sam.encode(images, eager=True)  # the taps are forward hooks: PyTorch's own encoder must run
    finally:
        for h in handles:
            h.remove()
    feats = torch.cat([_to_map(g, spec["layout"]) for g in grabbed], dim=1)
    return emb, feats


# ---------------------------------------------------------------------------- building blocks
class BasicBlock(nn.Module):
    """ResNet BasicBlock: two 3×3 conv-BN, identity (or 1×1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class ResNetTrunk(nn.Module):
    """``(B, C_in, 64, 64)`` → ``(B, 512)``: stem conv (stride 1) + BN + ReLU + max-pool /2, four
    stages of BasicBlocks (widths 64/128/256/512, strides 1/2/2/2: 32² → 4²), global average
    pooling. ``depth`` 10, 18 or 34 (BasicBlocks per stage, see ``RESNET_DEPTHS``)."""

    def __init__(self, in_channels: int = 256, depth: int = 18, widths: Sequence[int] = (64, 128, 256, 512)):
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"APM trunk depth must be one of {sorted(RESNET_DEPTHS)}, got {depth}")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages, cin = [], widths[0]
        for i, (n, w) in enumerate(zip(RESNET_DEPTHS[depth], widths)):
            blocks = [BasicBlock(cin, w, 1 if i == 0 else 2)] + [BasicBlock(w, w) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean((2, 3))


# ---------------------------------------------------------------------------- APM
class AutoPromptingModule(nn.Module):
    """Predicts point prompts from frozen encoder features.

    Args:
        in_channels: channels of the concatenated encoder taps (640 for TinyViT, 2304 for ViT-B).
        num_points: N, one of 3, 5, 16 (labels from :func:`point_labels`).
        num_classes: K foreground classes, one linear head (N points) per class.
        input_size: S, the side of SAM's square input; points are ``sigmoid(·) × S``.
        width: channels of the three 3×3 reducing convolutions (reference 256).
        depth: ResNet trunk depth, 10/18/34 (reference 34).

    Shapes:
        ``features (B, in_channels, 64, 64)`` (other sizes are resized to 64²) →
        ``points (B, K, N, 2)`` ``(x, y)`` in the S frame, each in ``[0, S]``.
    """

    def __init__(self, in_channels: int, num_points: int = 16, num_classes: int = 1, input_size: int = 256,
                 width: int = 256, depth: int = 18):
        super().__init__()
        self.num_points, self.num_classes, self.input_size = int(num_points), int(num_classes), int(input_size)
        self.register_buffer("labels", torch.tensor(point_labels(self.num_points), dtype=torch.long), persistent=False)
        self.reduce = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, 1, 1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, 1, 1),
        )
        self.trunk = ResNetTrunk(width, depth)
        self.head = nn.Linear(self.trunk.out_channels, self.num_classes * self.num_points * 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if tuple(features.shape[-2:]) != (64, 64):
            features = F.interpolate(features, size=(64, 64), mode="bilinear", align_corners=False)
        z = self.trunk(self.reduce(features))
        pts = torch.sigmoid(self.head(z)) * self.input_size
        return pts.view(-1, self.num_classes, self.num_points, 2)

    def point_labels(self, batch: int) -> torch.Tensor:
        """``(batch, N)`` long labels (1 positive, 0 negative), positives first."""
        return self.labels.unsqueeze(0).expand(batch, -1)


# ---------------------------------------------------------------------------- PaE
class PatternEmbedding(nn.Module):
    """PaE: global average pooling of the image embedding → Linear 256→1024 → GELU →
    Linear 1024→K·1024 → ``(B, K, 4, 256)`` offsets for the 4 mask tokens (one set per class).

    Shapes: ``embedding (B, 256, 64, 64)`` → ``(B, K, num_mask_tokens, 256)``.
    """

    def __init__(self, embed_dim: int = 256, hidden: int = 1024, num_mask_tokens: int = 4, num_classes: int = 1):
        super().__init__()
        self.num_mask_tokens, self.embed_dim, self.num_classes = num_mask_tokens, embed_dim, int(num_classes)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, self.num_classes * num_mask_tokens * embed_dim))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        z = self.mlp(embedding.mean((2, 3)))
        return z.view(-1, self.num_classes, self.num_mask_tokens, self.embed_dim)

