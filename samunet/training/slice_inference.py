"""Whole-slice inference for 2D networks on a preprocessed volume."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from samunet.training.losses import logits_to_probabilities


@torch.inference_mode()
def predict_volume_slices(network: torch.nn.Module, data: np.ndarray, device: torch.device,
                          batch_size: int = 4, divisor: int = 32, mirror: bool = False) -> np.ndarray:
    """``data`` ``(C, Z, Y, X)`` -> class probabilities ``(K, Z, Y, X)`` float32.

    Each slice is padded to a multiple of ``divisor`` (the network's total stride),
    predicted whole, and cropped back. ``mirror`` averages over flips (slower, smoother).
    """
    network.eval()
    c, z, y, x = data.shape
    py, px = (-y) % divisor, (-x) % divisor
    out = None
    for start in range(0, z, batch_size):
        sl = torch.from_numpy(np.ascontiguousarray(data[:, start:start + batch_size].transpose(1, 0, 2, 3)))
        sl = F.pad(sl.to(device, torch.float32), (0, px, 0, py))
        probs = logits_to_probabilities(network(sl))
        if mirror:
            for dims in ((2,), (3,), (2, 3)):
                probs += torch.flip(logits_to_probabilities(network(torch.flip(sl, dims))), dims)
            probs /= 4
        probs = probs[:, :, :y, :x].float().cpu().numpy().transpose(1, 0, 2, 3)
        if out is None:
            out = np.empty((probs.shape[0], z, y, x), dtype=np.float32)
        out[:, start:start + probs.shape[1]] = probs
    return out
