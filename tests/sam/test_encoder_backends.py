"""Frozen-encoder backends: parity with eager PyTorch on real slices, precision checks, exports."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from samunet.demo_data import PROSTATE_RUNMC6
from samunet.sam import encoder_backends as eb
from samunet.sam.embedding_cache import EmbeddingCache
from samunet.sam.encoder_backends import EncoderBackendError, build_encoder, check_precision


@pytest.fixture(scope="module")
def lite_sam():
    from samunet.sam.registry import build_sam

    return build_sam("lite_medsam", device="cpu")


@pytest.fixture(scope="module")
def prostate_images(lite_sam):
    """Three real T2w slices of the bundled prostate case, as LiteMedSAM input (3, 3, 256, 256)."""
    vol = sitk.GetArrayFromImage(sitk.ReadImage(str(PROSTATE_RUNMC6 / "images" / "Case00.nii.gz"))).astype(np.float32)
    zs = [vol.shape[0] // 4, vol.shape[0] // 2, 3 * vol.shape[0] // 4]
    sl = torch.from_numpy((vol[zs] - vol.mean()) / vol.std())[:, None]
    images, _ = lite_sam.prepare_images(sl)
    return images


@pytest.mark.slow  # first run exports the encoder to ONNX (~10-30 s); later runs reuse the export
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_backend_matches_eager_pytorch_on_real_slices(backend, lite_sam, prostate_images):
    if not eb.backend_installed(backend):
        pytest.skip(f"{backend} not installed ({eb.INSTALL_HINT[backend]})")
    enc = build_encoder("lite_medsam", backend, sam=lite_sam)
    assert enc.backend == backend
    ref = lite_sam.encode(prostate_images)
    out = enc(prostate_images)
    assert out.shape == (3, 256, 64, 64) and out.dtype == torch.float32
    assert float((out - ref).abs().max()) <= 1e-3
    # the wrapper routes encode() to the configured backend and keeps the eager path on request
    lite_sam.configure_encoder(backend)
    try:
        calls = enc.calls
        assert float((lite_sam.encode(prostate_images[:1]) - ref[:1]).abs().max()) <= 1e-3
        assert enc.calls == calls + 1
        lite_sam.encode(prostate_images[:1], eager=True)
        assert enc.calls == calls + 1
    finally:
        lite_sam.configure_encoder("torch")


def test_auto_prefers_an_installed_fast_backend_and_torch_on_cuda(monkeypatch, lite_sam):
    monkeypatch.setattr(eb, "backend_installed", lambda b: b == "torch")
    enc = build_encoder("lite_medsam", "auto", sam=lite_sam)
    assert enc.backend == "torch"
    with pytest.raises(EncoderBackendError, match="pip install openvino"):
        build_encoder("lite_medsam", "openvino", sam=lite_sam)
    with pytest.raises(EncoderBackendError, match="CPU only"):
        build_encoder("lite_medsam", "onnxruntime", device="cuda", sam=lite_sam)


def test_bf16_refused_without_native_support(monkeypatch):
    monkeypatch.setattr(eb, "cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setattr(eb.platform, "machine", lambda: "x86_64")
    with pytest.raises(EncoderBackendError, match="bf16 is not supported natively.*--encoder_precision fp32"):
        check_precision("bf16", "openvino")
    check_precision("fp32", "openvino")  # fp32 always runs
    with pytest.raises(EncoderBackendError, match="fp32, bf16|one of"):
        check_precision("fp16", "torch")
    monkeypatch.setattr(eb, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    check_precision("bf16", "torch")
    check_precision("bf16", "openvino")
    with pytest.raises(EncoderBackendError, match="ONNX Runtime has no bf16"):
        check_precision("bf16", "onnxruntime")


def test_bf16_torch_encoder_is_close_but_cached_apart(monkeypatch, tmp_path):
    monkeypatch.setattr(eb, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setattr(eb.platform, "machine", lambda: "x86_64")
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 256, 4, stride=4), nn.GELU()).eval()
    x = torch.rand(2, 3, 256, 256)
    fp32, bf16 = eb.TorchEncoder(module, 256, "fp32")(x), eb.TorchEncoder(module, 256, "bf16")(x)
    assert fp32.dtype == bf16.dtype == torch.float32
    diff = float((fp32 - bf16).abs().max())
    assert 0 < diff < 0.1  # reduced precision: close, not equal
    ds = tmp_path / "Dataset001_X"
    a = EmbeddingCache(ds, "plans_2d", "lite_medsam", "w", 256)
    b = EmbeddingCache(ds, "plans_2d", "lite_medsam", "w", 256, precision="bf16")
    assert a.folder != b.folder and b.folder.name == "lite_medsam_bf16"
    assert "encoder_precision" not in a.meta and b.meta["encoder_precision"] == "bf16"

    class Fp32Sam:
        encoder_precision = "fp32"

    with pytest.raises(ValueError, match="holds bf16 embeddings but the SAM image encoder runs in fp32"):
        b.build([], Fp32Sam(), progress=False)


def test_inference_threads_split_the_cores(monkeypatch):
    monkeypatch.setattr(eb, "available_cpus", lambda: 8)
    assert eb.inference_threads() == 8
    assert eb.inference_threads(3) == 2
    assert eb.inference_threads(16) == 1


@pytest.mark.skipif(not eb.backend_installed("onnxruntime"), reason="onnxruntime/onnx not installed")
def test_export_is_made_once_and_reused(monkeypatch, tmp_path):
    monkeypatch.setenv("SAMUNET_encoder_cache", str(tmp_path / "enc"))
    module = nn.Conv2d(3, 256, 4, stride=4).eval()
    exports = []
    real = eb._export
    monkeypatch.setattr(eb, "_export", lambda *a: (exports.append(a[-1]), real(*a))[1])
    (tmp_path / "enc").mkdir()
    first = eb.export_file("tiny", "ab" * 32)
    (first.parent / (first.name + ".lock")).write_text("999999999")  # left by a dead process: taken over
    p1 = eb.ensure_export(module, "tiny", "ab" * 32, 256)
    p2 = eb.ensure_export(module, "tiny", "ab" * 32, 256)
    assert p1 == p2 == first and p1.is_file() and len(exports) == 1
    assert not list(p1.parent.glob(".*tmp*")) and not (p1.parent / (p1.name + ".lock")).exists()
    enc = eb.OnnxRuntimeEncoder(p1, 256, threads=1)
    x = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        assert float((enc(x) - module(x)).abs().max()) <= 1e-4
    record = tmp_path / "parity.json"
    assert eb.check_parity(enc, module, record) <= 1e-4 and record.is_file()


def test_trainer_settings_strict_in_training_lenient_for_loaded_checkpoints(monkeypatch):
    from samunet.training.trainers.sam_box_trainer import SAMBoxTrainer

    monkeypatch.setattr(eb, "backend_installed", lambda b: b == "torch")
    t = SAMBoxTrainer.__new__(SAMBoxTrainer)
    t.device, t.plans = torch.device("cpu"), {"sam": {"model": "lite_medsam", "encoder_precision": "fp32"}}
    t.options = {"encoder_backend": "openvino"}
    assert t.encoder_settings == ("openvino", "fp32")
    sam = t.make_sam()  # loaded from a checkpoint (no output folder): falls back, with a warning
    assert (sam.encoder_backend, sam.encoder_precision) == ("auto", "fp32")
    t.output_folder = "fold_0"  # training: what was asked must run
    with pytest.raises(EncoderBackendError, match="openvino is not installed"):
        t.make_sam()
