"""The frozen SAM image encoder behind a fast runtime: eager PyTorch, ONNX Runtime or OpenVINO.

:func:`build_encoder` returns a :class:`FrozenEncoder`, a callable mapping ``(B, 3, S, S)``
float images in the backbone's input range (what :meth:`SamWrapper.prepare_images` gives) to
the ``(B, 256, 64, 64)`` float32 embedding, on the images' device.

========== ========================= ======================================================
backend    needs                     notes
========== ========================= ======================================================
torch      nothing (always there)    the only backend on CUDA; bf16 via ``torch.autocast``
onnxruntime ``pip install samunet[onnxruntime]``  fp32 only
openvino   ``pip install samunet[openvino]``      fp32, or bf16 via its precision hint
auto       —                         CUDA: torch. CPU: openvino, else onnxruntime, else torch
                                     — the first installed one whose export matches eager
                                     PyTorch within 1e-3 (checked once per export)
========== ========================= ======================================================

Both runtimes read one ONNX export (``torch.onnx.export``, TorchScript exporter, opset 17;
OpenVINO compiles the ONNX file directly, as fast as its own PyTorch conversion and 8x
quicker to make), made once per (model, weights sha256, torch version) and kept in
:func:`encoder_cache_dir` (``~/.cache/samunet/encoders``; ``SAMUNET_encoder_cache`` moves it):
written under a temporary name and renamed, with a lock file so that concurrent processes
export once and the others wait. The result of the parity check (max abs difference to eager
PyTorch on a fixed image) is kept beside it per runtime version. Exported graphs have a fixed
batch of 1 (TinyViT's reshapes bake the batch size into a traced graph); a batch is encoded
slice by slice, which on a CPU costs nothing.

Precision: ``fp32`` (default) or ``bf16``, explicit only, refused unless the device computes
bf16 natively (x86 ``avx512_bf16``/``amx_bf16``, ARM ``bf16``, a CUDA GPU that supports it);
emulated bf16 is slower than fp32. The embedding cache keeps bf16 embeddings in a folder of
their own (``embeddings/<backbone>_bf16``), never mixed with fp32 ones; fp32 backends agree
within 1e-3 and share one cache.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import platform
import threading
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from samunet.utilities.file_io import atomic_path, load_json, save_json
from samunet.utilities.resources import available_cpus

logger = logging.getLogger(__name__)

ENCODER_BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
ENCODER_PRECISIONS = ("fp32", "bf16")
AUTO_ORDER = ("openvino", "onnxruntime")  # fastest first (measured on CPU, LiteMedSAM; see benchmarks/)
PARITY_TOLERANCE = 1e-3
EXPORT_FORMAT_VERSION = 1
INSTALL_HINT = {"onnxruntime": "pip install onnxruntime onnx", "openvino": "pip install openvino onnx"}


class EncoderBackendError(RuntimeError):
    """A requested encoder backend or precision cannot be used here."""


# ---------------------------------------------------------------------------- environment
def backend_installed(backend: str) -> bool:
    if backend == "torch":
        return True
    if backend in ("onnxruntime", "openvino"):  # both run the ONNX export, which needs the onnx package
        return importlib.util.find_spec(backend) is not None and importlib.util.find_spec("onnx") is not None
    raise ValueError(f"unknown encoder backend {backend!r}; choose one of {ENCODER_BACKENDS}")


def _runtime_version(backend: str) -> str:
    dist = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}[backend]
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def cpu_flags() -> set[str]:
    """CPU feature flags from /proc/cpuinfo (``flags`` on x86, ``Features`` on ARM); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_supported(device: torch.device | str = "cpu") -> bool:
    """True when ``device`` computes bf16 natively (not emulated)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    flags = cpu_flags()
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "bf16" in flags
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def check_precision(precision: str, backend: str, device: torch.device | str = "cpu") -> None:
    """Refuse a precision the backend or the device cannot run natively, with the fix."""
    if precision not in ENCODER_PRECISIONS:
        raise EncoderBackendError(f"--encoder_precision must be one of {ENCODER_PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return
    if backend == "onnxruntime":
        raise EncoderBackendError("ONNX Runtime has no bf16 path on the CPU; use --encoder_backend openvino or torch "
                                  "with --encoder_precision bf16, or --encoder_precision fp32")
    if not bf16_supported(device):
        where = "this GPU" if torch.device(device).type == "cuda" else \
            f"this CPU ({platform.processor() or platform.machine()}, no avx512_bf16/amx_bf16 flag in /proc/cpuinfo)"
        raise EncoderBackendError(f"--encoder_precision bf16 is not supported natively by {where}: emulated bf16 "
                                  "would be slower than fp32. Use --encoder_precision fp32 (the default).")


def inference_threads(parallel_workers: int | None = None) -> int:
    """Threads for one inference process when ``parallel_workers`` processes share this
    machine's cores (os.sched_getaffinity), so that they do not oversubscribe the CPU.
    Default: the ranks torchrun started on this machine (``LOCAL_WORLD_SIZE``), else 1."""
    if parallel_workers is None:
        parallel_workers = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, available_cpus() // max(1, int(parallel_workers)))


def encoder_cache_dir() -> Path:
    """Where exported encoders live: ``$SAMUNET_encoder_cache``, else ``$XDG_CACHE_HOME/samunet/
    encoders``, else ``~/.cache/samunet/encoders``. Exports depend on the weights only, not on
    a dataset, so one per machine (or shared folder) serves every dataset and results root."""
    env = os.environ.get("SAMUNET_encoder_cache")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "samunet" / "encoders"


# ---------------------------------------------------------------------------- encoders
class FrozenEncoder:
    """``(B, 3, S, S)`` float images → ``(B, 256, 64, 64)`` float32 embedding (no gradients).

    Attributes: ``backend``, ``precision``, ``input_size`` and ``calls`` (images encoded so far).
    """

    backend = "?"

    def __init__(self, input_size: int, precision: str = "fp32"):
        self.input_size = int(input_size)
        self.precision = precision
        self.calls = 0

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        S = self.input_size
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (S, S):
            raise ValueError(f"images must be (B, 3, {S}, {S}), got {tuple(images.shape)}")
        self.calls += images.shape[0]
        with torch.no_grad():
            return self._run(images)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend!r}, precision={self.precision!r})"


class TorchEncoder(FrozenEncoder):
    """Eager PyTorch on the module's device; bf16 through ``torch.autocast``."""

    backend = "torch"

    def __init__(self, module: torch.nn.Module, input_size: int, precision: str = "fp32"):
        super().__init__(input_size, precision)
        self.module = module

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.module.parameters()).device
        x = images.to(device, torch.float32)
        if self.precision == "bf16":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return self.module(x).float()
        return self.module(x).float()


class _OneByOne(FrozenEncoder):
    """Runtimes fed one image at a time from a numpy array (exported graphs have batch 1)."""

    def _infer(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        x = images.detach().to("cpu", torch.float32).numpy()
        out = np.concatenate([self._infer(np.ascontiguousarray(x[i:i + 1])) for i in range(x.shape[0])])
        return torch.from_numpy(out).to(images.device)


class OnnxRuntimeEncoder(_OneByOne):
    backend = "onnxruntime"

    def __init__(self, onnx_file: Path, input_size: int, threads: int):
        super().__init__(input_size, "fp32")
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self._lock = threading.Lock()

    def _infer(self, image: np.ndarray) -> np.ndarray:
        with self._lock:
            return self.session.run(None, {self.input_name: image})[0]


class OpenVINOEncoder(_OneByOne):
    backend = "openvino"

    def __init__(self, onnx_file: Path, input_size: int, threads: int, precision: str = "fp32"):
        super().__init__(input_size, precision)
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(int(threads))}
        self.compiled = ov.Core().compile_model(str(onnx_file), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self._lock = threading.Lock()

    def _infer(self, image: np.ndarray) -> np.ndarray:
        with self._lock:  # one infer request: keep it to one caller at a time
            return np.array(self.request.infer({0: image})[0], dtype=np.float32, copy=True)


# ---------------------------------------------------------------------------- export
def export_file(name: str, weights_sha256: str) -> Path:
    """The ONNX export of model ``name``'s image encoder with these weights."""
    ver = _runtime_version("torch").replace("+", "_")
    return encoder_cache_dir() / f"{name}-{weights_sha256[:16]}-torch{ver}-opset17-v{EXPORT_FORMAT_VERSION}.onnx"


def _example_input(input_size: int) -> torch.Tensor:
    """A fixed, image-like input in [0, 1] (smooth blobs and an edge), for tracing and parity."""
    s = input_size
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
    img = 0.5 + 0.3 * torch.sin(3 * xx) * torch.cos(2 * yy) + 0.2 * (xx + 0.3 * yy > 0.2).float()
    img = (img - img.min()) / (img.max() - img.min())
    return img.expand(1, 3, s, s).contiguous()


def _export(module: torch.nn.Module, input_size: int, target: Path) -> None:
    example = _example_input(input_size)
    with atomic_path(target, suffix=".onnx") as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on TinyViT's shape asserts; parity is checked after
        # the TorchScript-based exporter: no onnxscript needed, and TinyViT traces cleanly
        torch.onnx.export(module.to("cpu").eval(), (example,), str(tmp), dynamo=False, input_names=["images"],
                          output_names=["embeddings"], opset_version=17)


def ensure_export(module: torch.nn.Module, name: str, weights_sha256: str, input_size: int,
                  wait_s: float = 1800.0) -> Path:
    """Export ``module`` to ONNX unless done already; concurrent callers export once."""
    from samunet.sam.embedding_cache import CaseLock

    target = export_file(name, weights_sha256)
    target.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while not target.is_file():
        with CaseLock(target.with_name(target.name + ".lock")) as lock:
            if lock.acquired:
                if not target.is_file():
                    logger.info("exporting the %s image encoder to ONNX (once; kept in %s)", name, target.parent)
                    t = time.perf_counter()
                    _export(module, input_size, target)
                    logger.info("export done in %.0f s", time.perf_counter() - t)
                break
        if time.monotonic() > deadline:
            raise EncoderBackendError(f"waited {wait_s:.0f} s for another process exporting {target}; delete "
                                      f"{target}.lock if no such process runs")
        time.sleep(2.0)  # another process is exporting
    return target


def _open(backend: str, path: Path, input_size: int, threads: int, precision: str) -> FrozenEncoder:
    if backend == "onnxruntime":
        return OnnxRuntimeEncoder(path, input_size, threads)
    return OpenVINOEncoder(path, input_size, threads, precision)


def check_parity(encoder: FrozenEncoder, module: torch.nn.Module, record: Path) -> float:
    """Max abs difference between ``encoder`` and eager fp32 ``module`` on the fixed example
    image; remembered in ``record`` (JSON beside the export) per runtime version."""
    key = {"backend": encoder.backend, "version": _runtime_version(encoder.backend), "precision": encoder.precision}
    if record.is_file():
        try:
            old = load_json(record)
            if {k: old.get(k) for k in key} == key:
                return float(old["max_abs_diff"])
        except (ValueError, KeyError, TypeError):
            pass
    x = _example_input(encoder.input_size)
    with torch.no_grad():
        ref = module.to("cpu").eval()(x).float()
    diff = float((encoder(x).float().cpu() - ref).abs().max())
    save_json({**key, "max_abs_diff": diff, "tolerance": PARITY_TOLERANCE}, record)
    return diff


_ENCODERS: dict[tuple, FrozenEncoder] = {}
_BUILD_LOCK = threading.Lock()


def build_encoder(name: str = "lite_medsam", backend: str = "auto", precision: str = "fp32",
                  device: torch.device | str = "cpu", sam=None, threads: Optional[int] = None,
                  identity: Optional[str] = None) -> FrozenEncoder:
    """The frozen image encoder of ``sam`` (a built :class:`~samunet.sam.wrapper.SamWrapper` of
    registry model ``name``) on ``backend`` (see module doc).

    ``identity``: the weights' sha256 that keys exports and the in-process share (default
    ``sam.weights_identity``, set by :func:`samunet.sam.build_sam`). Encoders are shared within
    the process, so several fold models use one compiled encoder. This module never builds a
    model itself: the caller passes it (no import of the registry, which builds wrappers that
    use this module).
    """
    if sam is None:
        raise TypeError("build_encoder needs the built model: build_encoder(name, backend, sam=build_sam(name, ...))")
    if backend not in ENCODER_BACKENDS:
        raise EncoderBackendError(f"--encoder_backend must be one of {ENCODER_BACKENDS}, got {backend!r}")
    device = torch.device(device)
    if backend in ("onnxruntime", "openvino") and device.type != "cpu":
        raise EncoderBackendError(f"--encoder_backend {backend} runs on the CPU only; on {device} use torch or auto")
    if backend == "auto":
        candidates = ["torch"] if device.type != "cpu" else \
            [b for b in AUTO_ORDER if backend_installed(b) and not (b == "onnxruntime" and precision == "bf16")] + ["torch"]
    else:
        if not backend_installed(backend):
            raise EncoderBackendError(f"--encoder_backend {backend} is not installed; {INSTALL_HINT[backend]} "
                                      "(or pip install 'samunet[fast]'), or use --encoder_backend torch")
        candidates = [backend]
    check_precision(precision, candidates[0] if backend != "auto" else "torch", device)
    threads = int(threads or inference_threads())
    sha = identity or getattr(sam, "weights_identity", None)
    if not sha:
        raise ValueError(f"the {name} model has no weights identity (built outside samunet.sam.build_sam?): "
                         "pass identity=<sha256 of its weights file>")
    with _BUILD_LOCK:
        for cand in candidates:
            key = (name, sha, cand, precision, str(device), threads)
            if key in _ENCODERS:
                return _ENCODERS[key]
            module = sam.image_encoder
            if cand == "torch":
                enc = TorchEncoder(module, sam.input_size, precision)
            else:
                try:
                    path = ensure_export(module, name, sha, sam.input_size)
                    enc = _open(cand, path, sam.input_size, threads, precision)
                    if precision == "fp32":
                        diff = check_parity(enc, module, path.with_name(f"{path.stem}.{cand}.parity.json"))
                        if diff > PARITY_TOLERANCE:
                            msg = (f"the {cand} export {path} differs from eager PyTorch by {diff:.2e} "
                                   f"(> {PARITY_TOLERANCE}); delete it to re-export")
                            if backend != "auto":
                                raise EncoderBackendError(msg)
                            logger.warning("%s; trying the next backend", msg)
                            continue
                except EncoderBackendError:
                    raise
                except Exception as exc:  # an exporter or runtime failure: auto falls back
                    if backend != "auto":
                        raise EncoderBackendError(f"--encoder_backend {cand} failed for {name}: "
                                                  f"{type(exc).__name__}: {exc}") from exc
                    logger.warning("encoder backend %s failed (%s: %s); trying the next one", cand,
                                   type(exc).__name__, exc)
                    continue
            logger.info("image encoder of %s: %s, %s, %d threads", name, cand, precision, threads)
            _ENCODERS[key] = enc
            return enc
    raise EncoderBackendError("no encoder backend could be built")  # unreachable: torch always builds
