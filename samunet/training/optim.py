"""Optimiser and learning-rate schedule factories."""

from __future__ import annotations

import torch


class PolyLR(torch.optim.lr_scheduler.LambdaLR):
    """``lr = initial * (1 - step / total) ** exponent``; stepped once per epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, exponent: float = 0.9):
        self.total_steps, self.exponent = max(1, total_steps), exponent
        super().__init__(optimizer, self._factor)

    def _factor(self, step: int) -> float:
        return max(0.0, 1 - min(step, self.total_steps) / self.total_steps) ** self.exponent


def build_adamw_poly(params, lr: float, weight_decay: float, num_epochs: int):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return opt, PolyLR(opt, num_epochs)
