"""What every SAM-stage trainer shares: which backbone, which weights, per-method settings."""

from __future__ import annotations

import numpy as np


class SAMTrainerMixin:
    """Mix into a :class:`~samunet.training.trainer_base.BaseTrainer` subclass.

    ``settings_section`` names an optional plans.json section with the method's own
    settings; :meth:`setting` looks in the trainer options first, then there, then in
    the class's ``DEFAULTS``.
    """

    settings_section: str | None = None
    DEFAULTS: dict = {}
    OPTIONS = frozenset({"sam", "sam_checkpoint"})

    @property
    def sam_name(self) -> str:
        return self.options.get("sam") or self.plans["sam"]["model"]

    @property
    def sam_checkpoint(self):
        return self.options.get("sam_checkpoint")

    def setting(self, key: str):
        if self.options.get(key) is not None:
            return self.options[key]
        section = self.plans.get(self.settings_section) or {} if self.settings_section else {}
        if section.get(key) is not None:
            return section[key]
        return self.DEFAULTS[key]

    @property
    def theta2(self) -> float:
        return float((self.plans.get("prompting") or {}).get("theta2", 0.5))

    def empty_label_scores(self, data_shape) -> np.ndarray:
        """``(K, Z, Y, X)`` scores for ``(C, Z, Y, X)`` data: channel 0 holds θ2, foreground
        channels start at 0 and receive SAM probabilities, so the argmax is the label above θ2."""
        _, z, y, x = data_shape
        out = np.zeros((len(self.foreground_labels) + 1, z, y, x), dtype=np.float32)
        out[0] = self.theta2
        return out
