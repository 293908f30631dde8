"""AutoMedSAM's diffusion-based class-prompt encoder (Huang et al., arXiv 2502.06817; METHODS.md §3.2).

From a frozen image embedding ``F_I (B, 256, 64, 64)`` and a class index ``c`` (the raw
label value as a float scalar, not one-hot) it produces the two prompt embeddings SAM's
mask decoder expects, replacing boxes or points:

- sparse ``P_s (B, 2, 256)`` (two tokens, like a box),
- dense ``P_d (B, 256, 64, 64)`` (in place of the no-mask embedding).

Steps (shapes for B images):

1. class projection: ``c (B, 1) -> Linear(1 -> 64·64) -> c_proj (B, 1, 64, 64)``; one layer
   shared by the diffusion and the network input;
2. forward conditional diffusion (no network in the loop): ``x ← x + ε_t + c_proj`` for
   ``t = T, …, 1`` with ``ε_t ~ N(0, (1/(t+1))²)`` and ``c_proj`` broadcast over the 256
   channels, i.e. ``x = F_I + T·c_proj + ε`` with ``ε ~ N(0, Σ_t 1/(t+1)²)`` (std ≈ 0.80 for
   T = 100). The sum of independent Gaussians is drawn in one go by default
   (``noise_sampling="closed_form"``, same distribution, T times fewer random numbers);
   ``"loop"`` draws every ε_t like the reference code;
3. "reverse diffusion" = one network pass on ``[x, c_proj] (B, 257, 64, 64)``:
   encoder with skips and no downsampling — enc1 (257→64→64), enc2 (64→128→128),
   middle (128→256→128), 3×3 convs each followed by ReLU;
4. dense branch: ``a = conv1×1([middle, c]) (129→128)`` (activation ``none`` as in the code,
   or ``relu``/``sigmoid``), ``middle·a`` → concat enc2 → dec1 (256→128→64) → concat enc1 →
   dec2 (128→64→256) → ``P_d``. The reference ends with a ReLU, which makes ``P_d ≥ 0`` while
   its MSE target (SAM's no-mask embedding) is signed: off by default (``final_relu=False``,
   METHODS.md [R]); ``final_relu=True`` is the code-faithful variant;
5. sparse branch: ``w = sigmoid(conv1×1(GAP([middle, c])))`` (B, 128, 1, 1) channel weights,
   ``middle·w`` → a decoder of the same form (own weights) → (B, 256, 64, 64) →
   AdaptiveAvgPool2d((2, 1)) → ``P_s (B, 2, 256)``. No ``squeeze``: works for B = 1 (the
   reference crashes there).

``width`` scales the hidden widths (64/128/256 → round(w·64)/…); 1.0 (default) is the
paper/code network. The convs all run at 64×64 (about 8.5 GMAC per sample at width 1), so
on a CPU a smaller width (e.g. 0.25) makes training affordable; see the trainer's docs.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

ATTENTION_ACTIVATIONS = ("none", "relu", "sigmoid")
NOISE_SAMPLING = ("closed_form", "loop")


def diffusion_noise_std(steps: int) -> float:
    """Std of ``Σ_{t=1..T} ε_t`` with ``ε_t ~ N(0, (1/(t+1))²)``: ``sqrt(Σ 1/(t+1)²)``."""
    return math.sqrt(sum(1.0 / (t + 1) ** 2 for t in range(1, int(steps) + 1)))


def _double_conv(c_in: int, c_mid: int, c_out: int, final_relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_mid, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c_mid, c_out, 3, padding=1)]
    if final_relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ClassPromptEncoder(nn.Module):
    """Class index → SAM prompt embeddings via forward conditional diffusion + a dual-branch U-Net.

    Args:
        embed_dim: channels of the image embedding and of the prompt embeddings (256).
        embedding_hw: spatial size of the image embedding (64, 64).
        steps: T, the number of forward-diffusion steps (100; the reference demo uses 7;
            ``1`` is the paper's single-step Eq. 5).
        width: multiplier of the hidden widths (1.0 = paper widths 64/128/256).
        attention_activation: activation of the dense element-wise attention map:
            ``none`` (reference code), ``relu`` (paper's σ) or ``sigmoid``.
        final_relu: ReLU after the last conv of both decoders (reference code); default off.
        noise_sampling: ``closed_form`` (one draw of the summed noise) or ``loop``.

    Forward: ``(embedding (B, 256, 64, 64), class_index (B,) or (B, 1))`` →
    ``(sparse (B, 2, 256), dense (B, 256, 64, 64))``.
    """

    def __init__(self, embed_dim: int = 256, embedding_hw: tuple[int, int] = (64, 64), steps: int = 100,
                 width: float = 1.0, attention_activation: str = "none", final_relu: bool = False,
                 noise_sampling: str = "closed_form"):
        super().__init__()
        if attention_activation not in ATTENTION_ACTIVATIONS:
            raise ValueError(f"attention_activation must be one of {ATTENTION_ACTIVATIONS}, got {attention_activation!r}")
        if noise_sampling not in NOISE_SAMPLING:
            raise ValueError(f"noise_sampling must be one of {NOISE_SAMPLING}, got {noise_sampling!r}")
        if int(steps) < 0:
            raise ValueError("steps must be >= 0")
        if width <= 0:
            raise ValueError("width must be > 0")
        self.embed_dim = int(embed_dim)
        self.embedding_hw = (int(embedding_hw[0]), int(embedding_hw[1]))
        self.steps = int(steps)
        self.width = float(width)
        self.attention_activation = attention_activation
        self.final_relu = bool(final_relu)
        self.noise_sampling = noise_sampling
        c1, c2, c3 = (max(1, int(round(width * c))) for c in (64, 128, 256))
        h, w = self.embedding_hw
        E = self.embed_dim

        self.class_projection = nn.Linear(1, h * w)
        self.enc1 = _double_conv(E + 1, c1, c1)
        self.enc2 = _double_conv(c1, c2, c2)
        self.middle = _double_conv(c2, c3, c2)
        # dense branch
        self.dense_attention = nn.Conv2d(c2 + 1, c2, 1)
        self.dense_dec1 = _double_conv(2 * c2, c2, c1)
        self.dense_dec2 = _double_conv(2 * c1, c1, E, final_relu=self.final_relu)
        # sparse branch
        self.sparse_attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c2 + 1, c2, 1), nn.Sigmoid())
        self.sparse_dec1 = _double_conv(2 * c2, c2, c1)
        self.sparse_dec2 = _double_conv(2 * c1, c1, E, final_relu=self.final_relu)
        self.sparse_pool = nn.AdaptiveAvgPool2d((2, 1))

    # ------------------------------------------------------------------ pieces
    def project_class(self, class_index: torch.Tensor) -> torch.Tensor:
        """``(B,)``/``(B, 1)`` class scalars → ``c_proj (B, 1, H, W)``."""
        c = class_index.to(self.class_projection.weight).reshape(-1, 1)
        return self.class_projection(c).view(c.shape[0], 1, *self.embedding_hw)

    def diffuse(self, embedding: torch.Tensor, c_proj: torch.Tensor, noise: bool = True,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Forward conditional diffusion: ``F_I + T·c_proj (+ Σ_t ε_t if noise)``, ``(B, 256, H, W)``."""
        x = embedding + self.steps * c_proj
        if not noise or self.steps == 0:
            return x
        if self.noise_sampling == "loop":
            for t in range(self.steps, 0, -1):
                x = x + torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) / (t + 1)
            return x
        std = diffusion_noise_std(self.steps)
        return x + std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def _activate(self, a: torch.Tensor) -> torch.Tensor:
        if self.attention_activation == "relu":
            return torch.relu(a)
        if self.attention_activation == "sigmoid":
            return torch.sigmoid(a)
        return a

    # ------------------------------------------------------------------ forward
    def forward(self, embedding: torch.Tensor, class_index: torch.Tensor, noise: bool = True,
                generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``embedding (B, 256, 64, 64)``, ``class_index (B,)`` or ``(B, 1)`` float →
        ``sparse (B, 2, 256)``, ``dense (B, 256, 64, 64)``.

        ``noise=False`` drops ε (deterministic); ``generator`` seeds the noise (eval noise)."""
        if embedding.ndim != 4 or embedding.shape[1] != self.embed_dim or tuple(embedding.shape[-2:]) != self.embedding_hw:
            raise ValueError(f"embedding must be (B, {self.embed_dim}, {self.embedding_hw[0]}, {self.embedding_hw[1]}), "
                             f"got {tuple(embedding.shape)}")
        B = embedding.shape[0]
        c = torch.as_tensor(class_index, device=embedding.device, dtype=embedding.dtype).reshape(-1)
        if c.numel() == 1 and B > 1:
            c = c.expand(B)
        if c.numel() != B:
            raise ValueError(f"class_index has {c.numel()} entries for a batch of {B}")
        c_proj = self.project_class(c)                                     # (B, 1, H, W)
        x = self.diffuse(embedding, c_proj, noise, generator)              # (B, 256, H, W)
        x = torch.cat([x, c_proj], 1)                                      # (B, 257, H, W)
        e1 = self.enc1(x)                                                  # (B, c1, H, W)
        e2 = self.enc2(e1)                                                 # (B, c2, H, W)
        mid = self.middle(e2)                                              # (B, c2, H, W)
        c_map = c.view(B, 1, 1, 1).expand(B, 1, *mid.shape[-2:])
        mid_c = torch.cat([mid, c_map], 1)                                 # (B, c2 + 1, H, W)

        dense = mid * self._activate(self.dense_attention(mid_c))          # element-wise attention
        dense = self.dense_dec1(torch.cat([dense, e2], 1))                 # (B, c1, H, W)
        dense = self.dense_dec2(torch.cat([dense, e1], 1))                 # (B, 256, H, W)

        sparse = mid * self.sparse_attention(mid_c)                        # channel attention (B, c2, 1, 1)
        sparse = self.sparse_dec1(torch.cat([sparse, e2], 1))
        sparse = self.sparse_dec2(torch.cat([sparse, e1], 1))              # (B, 256, H, W)
        sparse = self.sparse_pool(sparse).flatten(2).transpose(1, 2)       # (B, 2, 256)
        return sparse, dense

    def extra_repr(self) -> str:
        return (f"steps={self.steps}, width={self.width}, attention_activation={self.attention_activation!r}, "
                f"final_relu={self.final_relu}, noise_sampling={self.noise_sampling!r}")
