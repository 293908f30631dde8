"""Segment Anything backbones (LiteMedSAM, SAM ViT-B/L/H, MedSAM ViT-B) and prompt utilities."""

from .prompts import (
    full_box,
    jitter_box,
    largest_component_box,
    make_mosaic,
    mask_box,
    mosaic_box,
    split_mosaic,
    unfiltered_box,
)
from .registry import (
    EXPECTED_CHECKPOINT_FILES,
    SAM_MODELS,
    SamCheckpointError,
    build_sam,
    lite_medsam_checkpoint_path,
    load_state_dict_file,
    weights_identity,
)
from .encoder_backends import build_encoder
from .wrapper import SamWrapper

__all__ = [
    "EXPECTED_CHECKPOINT_FILES",
    "SAM_MODELS",
    "SamCheckpointError",
    "SamWrapper",
    "build_encoder",
    "build_sam",
    "full_box",
    "jitter_box",
    "largest_component_box",
    "lite_medsam_checkpoint_path",
    "load_state_dict_file",
    "make_mosaic",
    "mask_box",
    "mosaic_box",
    "split_mosaic",
    "unfiltered_box",
    "weights_identity",
]
