"""AutoMedSAM's joint loss (METHODS.md §3.3): five terms weighted by learnable uncertainties.

``L = Σ_j [ L_j / (2 λ_j²) + log(1 + λ_j²) ]`` over

=========  ======================================================================
``mse_sparse``  MSE between the predicted sparse prompt ``P_s (B, 2, 256)`` and SAM's own
                prompt-encoder tokens for the (jittered) GT box
``mse_dense``   MSE between ``P_d (B, 256, 64, 64)`` and SAM's dense embedding for that box
                (the broadcast no-mask embedding)
``bce``         pixel-wise BCE on the decoder logits ``(B, 1, 256, 256)``
``dice``        soft Dice with squared denominators, pooled over batch and channels (Eq. 14)
``shape``       shape-distance loss (Eq. 16), see :func:`shape_distance_loss`
=========  ======================================================================

The λ's are initialised to 1 ([R]) and belong in an optimiser group without weight decay;
``1 / (2 λ²)`` (:meth:`UncertaintyWeightedLoss.term_weights`) is what gets logged.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from samunet.training.losses import masked_mean, split_ignored

TERMS = ("mse_sparse", "mse_dense", "bce", "dice", "shape")


def distance_map(mask: np.ndarray, normalise: bool = True) -> np.ndarray:
    """``D(M)`` for a binary mask ``(..., H, W)``: the Euclidean distance of every foreground
    pixel to the nearest background pixel (0 on the background), computed per 2D image
    with ``scipy.ndimage.distance_transform_edt``; with ``normalise`` divided by its
    per-image maximum (so it lies in [0, 1]; an empty mask stays 0). float32."""
    m = np.asarray(mask).astype(bool)
    flat = m.reshape(-1, *m.shape[-2:])
    out = np.zeros(flat.shape, dtype=np.float32)
    for i, im in enumerate(flat):
        if not im.any():
            continue
        if im.all():  # no background at all: distance to the image border instead of undefined
            im = np.pad(im, 1)
            d = ndimage.distance_transform_edt(im)[1:-1, 1:-1]
        else:
            d = ndimage.distance_transform_edt(im)
        if normalise:
            d = d / d.max()
        out[i] = d
    return out.reshape(m.shape)


def shape_distance_loss(prob: torch.Tensor, dist: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 16: per sample and channel ``f = Σ|D(M) − M̂| / (ΣM̂ + ε)``, averaged.

    ``prob`` ``(B, C, H, W)``: predicted probabilities M̂; ``dist`` ``(B, C, H, W)``: D(M)."""
    num = (dist - prob).abs().sum((-2, -1))
    den = prob.sum((-2, -1)) + eps
    return (num / den).mean()


def squared_dice_loss(prob: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 14: ``1 − 2 Σ p g / (Σ p² + Σ g² + ε)``, pooled over batch, channels and pixels."""
    inter = (prob * target).sum()
    return 1 - 2 * inter / ((prob * prob).sum() + (target * target).sum() + eps)


class UncertaintyWeightedLoss(nn.Module):
    """Five-term loss with learnable weights ``λ (5,)`` (init 1).

    ``forward(sparse, dense, sparse_target, dense_target, logits, target, dist=None)``:

    - ``sparse``/``sparse_target`` ``(B, 2, 256)``; ``dense``/``dense_target`` ``(B, 256, 64, 64)``
      (targets may broadcast, e.g. ``(1, 256, 64, 64)``);
    - ``logits``/``target`` ``(B, 1, 256, 256)``, target in {0, 1}, or
      :data:`~samunet.training.losses.IGNORE_TARGET` for unannotated pixels (no contribution);
    - ``dist`` ``(B, 1, 256, 256)``: D(M) of the target (:func:`distance_map`); computed from
      ``target`` when None (with ``unnormalised`` honoured);
    - ``present`` ``(B,)`` bool, optional: False for a sample prompting a class absent from its
      slice (empty target, no box). Such a sample has no sparse-MSE target and its shape term
      is ≈ 1 whatever is predicted (Σ|0 − M̂| / ΣM̂), a constant that would only inflate the
      term, so both average over the present samples (0 when there is none). BCE, the pooled
      Dice (its predicted foreground enlarges the denominator) and the dense MSE (box-free
      target) count every sample. An all-absent batch gives Dice 1 without gradient, not NaN.

    Returns the total; the last unweighted term values are kept in ``self.last_terms``.
    ``unnormalised=True`` uses the raw distance transform in the shape term.
    """

    def __init__(self, init: float = 1.0, unnormalised: bool = False, eps: float = 1e-6):
        super().__init__()
        self.lambdas = nn.Parameter(torch.full((len(TERMS),), float(init)))
        self.unnormalised = bool(unnormalised)
        self.eps = float(eps)
        self.last_terms: dict[str, float] = {}

    def terms(self, sparse, dense, sparse_target, dense_target, logits, target, dist=None,
              present=None) -> torch.Tensor:
        """The five unweighted terms ``(5,)`` in the order of ``TERMS``."""
        target, valid = split_ignored(target.to(logits.dtype))  # IGNORE_TARGET pixels count for nothing
        if dist is None:
            dist = torch.from_numpy(distance_map(target.detach().cpu().numpy() > 0.5,
                                                 normalise=not self.unnormalised)).to(logits)
        prob = torch.sigmoid(logits)
        bce = masked_mean(F.binary_cross_entropy_with_logits(logits, target, reduction="none"), valid)
        dist = dist.to(logits)
        if valid is not None:
            prob, dist = prob * valid, dist * valid
        mse_sparse = F.mse_loss(sparse, sparse_target.expand_as(sparse), reduction="none")
        if present is None or bool(present.all()):  # every sample has a box: exactly as before
            mse_sparse, shape = mse_sparse.mean(), shape_distance_loss(prob, dist, self.eps)
        elif bool(present.any()):
            mse_sparse = mse_sparse[present].mean()
            shape = shape_distance_loss(prob[present], dist[present], self.eps)
        else:  # nothing present: the two terms are undefined, they count for nothing
            mse_sparse, shape = sparse.sum() * 0, prob.sum() * 0
        return torch.stack([
            mse_sparse,
            F.mse_loss(dense, dense_target.expand_as(dense)),
            bce,
            squared_dice_loss(prob, target, self.eps),
            shape,
        ])

    def combine(self, terms: torch.Tensor) -> torch.Tensor:
        """``Σ_j L_j / (2 λ_j²) + log(1 + λ_j²)``."""
        lam2 = self.lambdas.to(terms) ** 2
        return (terms / (2 * lam2) + torch.log1p(lam2)).sum()

    def forward(self, sparse, dense, sparse_target, dense_target, logits, target, dist=None,
                present=None) -> torch.Tensor:
        t = self.terms(sparse, dense, sparse_target, dense_target, logits, target, dist, present)
        self.last_terms = {k: float(v) for k, v in zip(TERMS, t.detach())}
        return self.combine(t)

    @torch.no_grad()
    def term_weights(self) -> dict[str, float]:
        """``{term: 1 / (2 λ²)}``, the effective weight of every term (what gets logged)."""
        return {k: float(1 / (2 * l ** 2)) for k, l in zip(TERMS, self.lambdas.detach().cpu())}
