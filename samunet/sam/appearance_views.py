"""Appearance views of a slice, for single-source domain generalisation with a frozen SAM encoder.

A frozen foundation encoder's embeddings move with image appearance (contrast, gamma,
noise, blur, bias field, scanner colour), so a decoder trained on the embeddings of one
hospital's scans meets shifted embeddings elsewhere. Showing it several appearance views of
each training slice makes it rely on what stays put. Those views must be made on the image
*before* encoding: SAM pads its input at the bottom and right, so flipping or otherwise
editing the embedding grid is not equivalent to editing the image. The encoded views are
cached, so this runs once per slice, in numpy.

Every transform works on the image rescaled from its own [min, max] to [0, 1] and the
result is mapped back, so views never leave the input's intensity range.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

OPS = ("gin", "remap", "gamma_noise", "location_scale", "blur_lowres", "bias_field")
# per-op probability of being drawn; these average ~2.3 ops per view
OP_PROBS = {"gin": 0.4, "remap": 0.5, "gamma_noise": 0.4, "location_scale": 0.5,
            "blur_lowres": 0.3, "bias_field": 0.3, "colour_jitter": 1.0}


def _curve(rng: np.random.Generator, n: int = 256) -> np.ndarray:
    """A smooth lookup table ``(n,)`` mapping [0, 1] -> [0, 1]; monotonic or not."""
    kind = rng.choice(["monotone", "random", "invert", "fold"], p=[0.35, 0.3, 0.2, 0.15])
    grid = np.linspace(0.0, 1.0, n)
    if kind == "invert":  # full contrast reversal (T1 <-> T2-like)
        return 1.0 - grid
    if kind == "fold":  # partial reversal: the range above (or below) t is mirrored back
        t = rng.uniform(0.3, 0.7)
        lut = np.where(grid < t, grid, 2 * t - grid)
        lut = lut if rng.random() < 0.5 else 1.0 - lut
    else:
        k = int(rng.integers(4, 8))
        vals = rng.uniform(0.0, 1.0, k)
        if kind == "monotone":
            vals = np.sort(vals) if rng.random() < 0.7 else np.sort(vals)[::-1]
        lut = np.interp(grid, np.linspace(0.0, 1.0, k), vals)
    # smoothing removes the kinks of the piecewise-linear curve
    lut = ndimage.gaussian_filter1d(lut, sigma=n / 40, mode="nearest")
    lo, hi = lut.min(), lut.max()
    return (lut - lo) / (hi - lo) if hi - lo > 1e-6 else grid


def remap(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random smooth intensity curve, one for all channels or one per channel; ``(C, Y, X)``."""
    grid = np.linspace(0.0, 1.0, 256)
    if x.shape[0] > 1 and rng.random() < 0.5:
        return np.stack([np.interp(c, grid, _curve(rng)) for c in x])
    return np.interp(x, grid, _curve(rng))


def gamma_noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gamma in [0.5, 2] (log-uniform), then Gaussian or Rician noise with p = 0.5."""
    x = x ** np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
    if rng.random() < 0.5:
        sd = rng.uniform(0.01, 0.06)
        if rng.random() < 0.5:
            x = x + rng.normal(0.0, sd, x.shape)
        else:  # magnitude MR images: noise on both real and imaginary parts
            x = np.sqrt((x + rng.normal(0.0, sd, x.shape)) ** 2 + rng.normal(0.0, sd, x.shape) ** 2)
    return np.clip(x, 0.0, 1.0)


def location_scale(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-channel change of mean and spread (a colour cast when C = 3); ``(C, Y, X)``."""
    mean = x.mean(axis=(1, 2), keepdims=True)
    scale = rng.uniform(0.7, 1.4, (x.shape[0], 1, 1))
    shift = rng.normal(0.0, 0.1, (x.shape[0], 1, 1))
    return np.clip((x - mean) * scale + mean + shift, 0.0, 1.0)


def blur_lowres(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur (sigma 0.5-2 px) or down-sampling by 2-4 and back (order 1)."""
    if rng.random() < 0.5:
        return ndimage.gaussian_filter(x, sigma=(0.0, *[rng.uniform(0.5, 2.0)] * 2), mode="nearest")
    f = rng.uniform(2.0, 4.0)
    small = ndimage.zoom(x, (1.0, 1.0 / f, 1.0 / f), order=1, mode="nearest")
    up = ndimage.zoom(small, (1.0, x.shape[1] / small.shape[1], x.shape[2] / small.shape[2]),
                      order=1, mode="nearest")
    out = np.zeros_like(x)  # zoom's rounding may miss by a pixel: crop / edge-pad to fit
    up = up[:, : x.shape[1], : x.shape[2]]
    out[:] = np.pad(up, [(0, 0), (0, x.shape[1] - up.shape[1]), (0, x.shape[2] - up.shape[2])], mode="edge")
    return np.clip(out, 0.0, 1.0)


def bias_field(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative smooth field ``1 + a * p(y, x)``, p a random cubic polynomial, |a| <= 0.4."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, x.shape[1]), np.linspace(-1, 1, x.shape[2]), indexing="ij")
    field = np.zeros_like(yy)
    for i in range(4):
        for j in range(4 - i):
            field += rng.normal() * yy ** i * xx ** j
    field -= field.mean()
    peak = np.abs(field).max()
    field = field / peak if peak > 1e-8 else field
    return np.clip(x * (1.0 + rng.uniform(0.1, 0.4) * field), 0.0, 1.0)


def gin(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random shallow conv net (GIN, Ouyang et al. 2022) blended with the input; ``(C, Y, X)``.

    1-3 layers of random 3x3 / 1x1 kernels mixing channels, leaky ReLU between layers;
    each output channel is min-max rescaled to [0, 1], then alpha-blended with ``x``.
    """
    c = x.shape[0]
    n_layers = int(rng.integers(1, 4))
    widths = [c] + [int(rng.integers(2, 9)) for _ in range(n_layers - 1)] + [c]
    h = x
    for layer in range(n_layers):
        k = 3 if rng.random() < 0.7 else 1
        w = rng.normal(0.0, 1.0, (widths[layer + 1], widths[layer], k, k)) / np.sqrt(widths[layer] * k * k)
        h = np.stack([sum(ndimage.correlate(h[i], w[o, i], mode="reflect") for i in range(widths[layer]))
                      + rng.normal(0.0, 0.1) for o in range(widths[layer + 1])])
        if layer < n_layers - 1:
            h = np.where(h > 0, h, 0.2 * h)
    lo, hi = h.min(axis=(1, 2), keepdims=True), h.max(axis=(1, 2), keepdims=True)
    h = np.where(hi - lo > 1e-8, (h - lo) / np.maximum(hi - lo, 1e-8), x)
    alpha = rng.uniform(0.3, 1.0)
    return np.clip(alpha * h + (1.0 - alpha) * x, 0.0, 1.0)


def colour_jitter(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A camera's or a light source's change, natural colours kept: brightness x 0.7-1.3, contrast
    x 0.7-1.3 around the mean, gamma 0.75-1.33 (log-uniform) and, for a colour image (3 channels
    that differ), a gamma per channel, saturation x 0.6-1.4 and a hue rotation of up to +-18
    degrees; ``(C, Y, X)`` in [0, 1]. A grey image stays grey."""
    coloured = x.shape[0] == 3 and float(np.ptp(x, axis=0).max()) > 1e-3  # grey stored as RGB stays grey
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.7, 1.3) + mean * rng.uniform(0.7, 1.3)
    gamma = np.exp(rng.uniform(np.log(0.75), np.log(4 / 3), (x.shape[0] if coloured else 1, 1, 1)))
    x = np.clip(x, 0.0, 1.0) ** gamma
    if coloured:
        grey = x.mean(axis=0, keepdims=True)
        x = grey + (x - grey) * rng.uniform(0.6, 1.4)
        # hue: rotate the chroma around the grey axis (Rodrigues' formula with axis (1,1,1)/sqrt 3)
        a = np.deg2rad(rng.uniform(-18.0, 18.0))
        c, s = np.cos(a), np.sin(a)
        k = np.ones((3, 3)) / 3.0
        cross = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / np.sqrt(3.0)
        rot = c * np.eye(3) + s * cross + (1 - c) * k
        x = np.einsum("ij,jyx->iyx", rot, x)
    return np.clip(x, 0.0, 1.0)


_FUNCS = {"gin": gin, "remap": remap, "gamma_noise": gamma_noise, "location_scale": location_scale,
          "blur_lowres": blur_lowres, "bias_field": bias_field,
          "colour_jitter": colour_jitter}


def random_appearance(image: np.ndarray, rng: np.random.Generator, *, ops: tuple[str, ...] = OPS) -> np.ndarray:
    """One random appearance view of ``image`` ``(C, Y, X)`` -> ``(C, Y, X)`` float32.

    Each op in ``ops`` is drawn with its :data:`OP_PROBS` probability (one at random if
    none is), and the drawn ops run in random order. Deterministic for a given ``rng``
    state; the output stays within the input's [min, max]; a constant image is returned
    unchanged.
    """
    x = np.asarray(image, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"expected (C, Y, X), got shape {x.shape}")
    lo, hi = float(x.min()), float(x.max())
    span = hi - lo
    chosen = [op for op in ops if rng.random() < OP_PROBS[op]]
    if not chosen:
        chosen = [ops[int(rng.integers(len(ops)))]]
    if not np.isfinite(span) or span <= 1e-8:  # constant (nothing to remap; avoids 0 / 0)
        return x.astype(np.float32)
    u = (x - lo) / span
    for i in rng.permutation(len(chosen)):
        u = _FUNCS[chosen[i]](u, rng)
    return np.clip(u * span + lo, lo, hi).astype(np.float32)


def appearance_views(image: np.ndarray, k: int, seed: int, ops: tuple[str, ...] = OPS) -> np.ndarray:
    """``k`` appearance views ``(k, C, Y, X)`` float32 of one slice ``(C, Y, X)``; same seed, same views."""
    rng = np.random.default_rng(seed)
    return np.stack([random_appearance(image, rng, ops=ops) for _ in range(k)]) if k > 0 else \
        np.zeros((0, *np.shape(image)), dtype=np.float32)
