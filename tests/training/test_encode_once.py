"""3D prediction encodes each slice at most once per case, whatever the number of classes,
prompts or fold models (the in-memory embedding LRU)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from samunet.sam.box_prompting import slice_boxes
from samunet.sam.embedding_cache import encode_volume
from samunet.sam.embedding_lru import EmbeddingLRU, prediction_lru, slice_key
from samunet.sam.registry import build_sam
from samunet.training.trainers.sam_box_trainer import SAMBoxTrainer

PROMPTING = {"theta1": 0.75, "theta2": 0.5, "mask_downsample_factor": 4, "box_jitter_px": [0, 9],
             "test_time_box_jitter": False, "slice_margin": 1}


class CountingEncoder(nn.Module):
    """Stands in for TinyViT: (B, 3, 256, 256) -> (B, 256, 64, 64), counting images encoded."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 256, 4, stride=4)
        self.images = 0

    def forward(self, x):
        self.images += x.shape[0]
        return self.conv(x)


class GroundTruthStage1:
    """Stage 1 that returns the reference as probabilities (boxes for both labels)."""

    def __init__(self, seg):
        self.seg = seg

    def predict_preprocessed(self, data, **context):  # the stage-1 trainer interface (case=..., ...)
        return np.stack([(self.seg == k).astype(np.float32) for k in (0, 1, 2)])


def _box_trainer(sam, seg) -> SAMBoxTrainer:
    t = SAMBoxTrainer.__new__(SAMBoxTrainer)
    t.device, t.seed, t.options = torch.device("cpu"), 0, {}
    t.plans = {"prompting": PROMPTING, "sam": {"model": "lite_medsam"}}
    t.label_values, t.foreground_labels = [0, 1, 2], [1, 2]
    t.sam, t.stage1, t.cache = sam, GroundTruthStage1(seg), None
    return t


@pytest.fixture
def prostate_case(prostate_runmc6):
    src = prostate_runmc6
    img = sitk.GetArrayFromImage(sitk.ReadImage(str(src / "images" / "Case00.nii.gz"))).astype(np.float32)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(src / "masks" / "Case00_Segmentation.nii.gz")))
    fg = np.flatnonzero((seg == 1).any((1, 2)) & (seg == 2).any((1, 2)))
    empty = np.flatnonzero(~(seg > 0).any((1, 2)))
    assert len(empty) and len(fg) >= 3
    zs = [int(empty[0])] + [int(z) for z in fg[len(fg) // 2 - 1: len(fg) // 2 + 2]]  # empty + 3 with both labels
    img, seg = img[zs, ::2, ::2], seg[zs, ::2, ::2]  # few slices at half resolution: the test counts calls
    return ((img - img.mean()) / img.std())[None], seg


def test_one_encoder_call_per_slice_for_two_classes_and_two_folds(prostate_case):
    data, seg = prostate_case
    assert set(np.unique(seg)) >= {1, 2}
    sam = build_sam("lite_medsam", device="cpu")
    sam.image_encoder = counter = CountingEncoder()
    prediction_lru().clear()
    folds = [_box_trainer(sam, seg), _box_trainer(sam, seg)]  # an ensemble shares the frozen encoder
    prompted = [z for z in range(seg.shape[0])
                if slice_boxes("auto", np.stack([seg[z] == 1, seg[z] == 2]).astype(np.float32), None, [1, 2], PROMPTING)]
    both = [z for z in prompted if (seg[z] == 1).any() and (seg[z] == 2).any()]
    assert both, "the case must have slices with both labels"

    outs = [t.predict_preprocessed(data, prompt="auto") for t in folds]
    # one image per prompted slice in all: not per class, not per fold; unprompted slices skip SAM
    assert counter.images == len(prompted) < seg.shape[0]
    assert np.array_equal(outs[0], outs[1])
    assert outs[0].shape == (3,) + seg.shape
    empty = [z for z in range(seg.shape[0]) if z not in prompted]
    assert np.all(outs[0][1:, empty] == 0)
    # a different prompt mode on the same case still encodes nothing new
    folds[0].predict_preprocessed(data, prompt="gt_box", reference_seg=seg[None])
    assert counter.images == len(prompted) + len([z for z in range(seg.shape[0])
                                                  if (seg[z] > 0).any() and z not in prompted])
    # full_box (no stage 1, no labels needed) prompts every slice: only the new ones are encoded
    full = folds[1].predict_preprocessed(data, prompt="full_box")
    assert counter.images == seg.shape[0] and full.shape == outs[0].shape


def test_encode_volume_lru_hits_are_exact_and_bounded():
    class TinySam(nn.Module):
        input_size = 256

        def __init__(self):
            super().__init__()
            self.image_encoder = CountingEncoder()

        def prepare_images(self, slices):
            x = slices[:, :1].repeat(1, 3, 1, 1)
            return nn.functional.interpolate(x, size=(256, 256)), (200, 256)

        def encode(self, images):
            with torch.no_grad():
                return self.image_encoder(images)

    sam = TinySam()
    rng = np.random.default_rng(0)
    data = rng.random((1, 5, 40, 50), dtype=np.float32)
    per_slice = 256 * 64 * 64 * 4
    lru = EmbeddingLRU(max_bytes=3 * per_slice)
    ref, hw = encode_volume(sam, data)
    assert sam.image_encoder.images == 5
    got, hw2 = encode_volume(sam, data[:, 1:3], lru=lru)
    assert sam.image_encoder.images == 7 and hw2 == hw == (200, 256)
    got, _ = encode_volume(sam, data, lru=lru)  # slices 1, 2 hit; 0, 3, 4 encoded
    assert sam.image_encoder.images == 10
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert len(lru) == 3 and lru.nbytes == 3 * per_slice  # bounded: the oldest were evicted
    # another encoder (or other bytes) is another key
    assert slice_key(sam, data[:, 0]) != slice_key(TinySam(), data[:, 0])
    assert slice_key(sam, data[:, 0]) != slice_key(sam, data[:, 1])
