"""Training augmentation with batchgenerators.

Spatial (rotation, scaling, mirroring) plus the intensity and contrast transforms that
help single-source domain generalisation (a model trained on one scanner meeting
others): gamma and inverted gamma, brightness, contrast, blur, noise and simulated low
resolution. With ``dg_augmentation`` a GIN-style random shallow convolution, a random
(possibly non-monotonic) intensity curve and a location-scale shift are added on top
(:class:`DGAppearanceTransform`). batchgenerators draws from numpy's global RNG, which the
trainer seeds and checkpoints; the DG transform seeds itself from that RNG too.
"""

from __future__ import annotations

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

from samunet.sam.appearance_views import random_appearance

DG_OPS = ("gin", "remap", "location_scale")


class DGAppearanceTransform(AbstractTransform):
    """Per sample, with probability ``p_per_sample``: :func:`random_appearance` restricted to
    ``ops`` (default GIN conv, intensity curve, location-scale) on ``data`` ``(B, C, Y, X)``.

    Each sample keeps its own [min, max]; ``seg`` and other keys pass through untouched.
    """

    def __init__(self, p_per_sample: float = 0.5, ops: tuple[str, ...] = DG_OPS, data_key: str = "data"):
        self.p_per_sample = p_per_sample
        self.ops = tuple(ops)
        self.data_key = data_key

    def __call__(self, **data_dict):
        data = np.array(data_dict[self.data_key], dtype=np.float32)  # a copy: callers' arrays stay intact
        for b in range(data.shape[0]):
            if np.random.uniform() < self.p_per_sample:
                # a generator seeded from the global RNG: trainer seeding and checkpoints cover it
                rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
                data[b] = random_appearance(data[b], rng, ops=self.ops)
        data_dict[self.data_key] = data
        return data_dict


def training_transforms(patch_size, mirror: bool = True, strong_intensity: bool = True,
                        dg_augmentation: bool = True) -> Compose:
    """Spatial + intensity transforms; ``dg_augmentation`` adds :class:`DGAppearanceTransform`
    (p = 0.5 per sample) right after the spatial transform."""
    p_int = 0.25 if strong_intensity else 0.15
    transforms = [
        SpatialTransform(
            patch_size, patch_center_dist_from_border=None, do_elastic_deform=False,
            do_rotation=True, angle_x=(-np.pi / 6, np.pi / 6), angle_y=(0, 0), angle_z=(0, 0),
            do_scale=True, scale=(0.75, 1.3), border_mode_data="constant", border_cval_data=0, order_data=3,
            border_mode_seg="constant", border_cval_seg=0, order_seg=1, random_crop=False,
            p_rot_per_sample=0.25, p_scale_per_sample=0.25,
        ),
        # DG first, so the usual noise / blur / gamma transforms act on the new appearance
        *([DGAppearanceTransform(p_per_sample=0.5)] if dg_augmentation else []),
        GaussianNoiseTransform(noise_variance=(0, 0.01), p_per_sample=0.15),
        GaussianBlurTransform((0.5, 1.25), different_sigma_per_channel=False, p_per_sample=0.2),
        BrightnessMultiplicativeTransform((0.7, 1.3), per_channel=False, p_per_sample=p_int),
        ContrastAugmentationTransform((0.65, 1.5), per_channel=False, p_per_sample=p_int),
        SimulateLowResolutionTransform(zoom_range=(0.5, 1), per_channel=False, order_downsample=0,
                                       order_upsample=3, p_per_sample=p_int),
        GammaTransform((0.7, 1.5), invert_image=True, per_channel=False, retain_stats=True, p_per_sample=0.1),
        GammaTransform((0.7, 1.5), invert_image=False, per_channel=False, retain_stats=True, p_per_sample=0.3),
    ]
    if mirror:
        transforms.append(MirrorTransform(axes=(0, 1), p_per_sample=0.5))
    return Compose(transforms)


def augment(batch: dict, transforms: Compose) -> dict:
    """Apply ``transforms`` to a batch from :class:`SliceDataset` (float32 data, int seg)."""
    out = transforms(data=batch["data"].astype(np.float32), seg=batch["seg"].astype(np.float32))
    out["seg"] = np.rint(out["seg"]).astype(np.int16)
    out["keys"] = batch["keys"]
    return out
