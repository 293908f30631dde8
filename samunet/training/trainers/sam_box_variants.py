"""Variants of :class:`~samunet.training.trainers.sam_box_trainer.SAMBoxTrainer` (found by the
trainer registry like every module here)."""

from __future__ import annotations

from samunet.training.trainers.sam_box_trainer import SAMBoxTrainer


class SAMBoxTrainer_GTBoxes(SAMBoxTrainer):
    """Decoder fine-tuned on jittered reference boxes instead of stage-1 boxes."""

    def make_datasets(self) -> None:
        self.options.setdefault("train_box_source", "gt")
        super().make_datasets()
