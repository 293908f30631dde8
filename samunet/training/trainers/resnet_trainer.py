"""Stage 1 of SAMMed: a ResNet coarse segmenter trained from scratch."""

from __future__ import annotations

import numpy as np
import torch

from samunet.training.slice_inference import predict_volume_slices
from samunet.networks.resnet_segmenter import build_stage1_network
from samunet.training.augmentation import training_transforms
from samunet.experiment_planning.method_defaults import STAGE1_LOSS
from samunet.training.losses import num_outputs_for, stage1_loss
from samunet.training.optim import build_adamw_poly
from samunet.training.trainer_base import BaseTrainer


class ResNetTrainer(BaseTrainer):
    """ResNet encoder + U-Net decoder (or DeepLabV3-ResNet50), Dice + CE (``stage1.loss``), AdamW + poly LR.

    Backbone, width, patch and batch size, epochs and learning rate come from
    ``plans["stage1"]``, as does ``dg_augmentation`` (default on: GIN-style random
    convolution, intensity curves and location-scale on half the training samples).
    """

    def make_datasets(self) -> None:
        super().make_datasets()
        # same patch as the base class; only the DG switch differs
        cfg = self.plans[self.plans_section]
        patch = cfg.get("patch_size", self.plans["stage1"]["patch_size"])
        self.transforms = training_transforms(
            patch, dg_augmentation=bool(self.plans["stage1"].get("dg_augmentation", True)))

    def network_config(self) -> dict:
        cfg = self.plans["stage1"]
        return {
            "backbone": cfg["backbone"],
            "base_width": cfg.get("base_width", 32),
            "in_channels": self.plans["num_channels"],
            "num_outputs": num_outputs_for(self.label_values),
        }

    def build_network(self) -> torch.nn.Module:
        c = self.network_config()
        return build_stage1_network(c["backbone"], c["in_channels"], c["num_outputs"], c["base_width"])

    def build_loss(self) -> torch.nn.Module:
        return stage1_loss(self.plans["stage1"].get("loss", STAGE1_LOSS), self.ignore_label)

    def configure_optimizers(self):
        cfg = self.plans["stage1"]
        return build_adamw_poly(self.network.parameters(), cfg["initial_lr"], cfg["weight_decay"], self.num_epochs)

    def predict_preprocessed(self, data: np.ndarray, **context) -> np.ndarray:
        return predict_volume_slices(self.network, data, self.device, batch_size=max(1, self.batch_size // 2))


class ResNetTrainer_DeepLabV3(ResNetTrainer):
    """DeepLabV3-ResNet50 (output stride 8) as in the SAMMed paper."""

    def network_config(self) -> dict:
        c = super().network_config()
        c["backbone"] = "deeplabv3_resnet50"
        return c


class ResNetTrainer_5epochs(ResNetTrainer):
    """A short schedule for smoke runs (same as ``--epochs 5``)."""

    def __init__(self, *args, **kwargs):
        kwargs["num_epochs"] = kwargs.get("num_epochs") or 5
        super().__init__(*args, **kwargs)
