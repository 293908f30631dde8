"""The embedding cache: SAM's frozen image encoder runs once per preprocessed slice.

Layout: ``SAMUNET_preprocessed/DatasetXXX/embeddings/<backbone>/``

- ``meta.json``: backbone name, weights hash, input size, dtype (and the encoder precision
  when it is not fp32, and the plan's SAM input channels when they are not the old default).
  If any of these differ from what is asked for, the folder's entries are stale and are rebuilt.
- ``CASE.npy``: ``(Z, 256, 64, 64)`` float16, one embedding per slice, memory-mapped
  for training;
- ``CASE.json``: the SHA-1 of the preprocessed ``CASE.npz`` it was computed from and the
  scaled slice size inside SAM's padded input. A case whose preprocessed data changed is
  recomputed.

Building is resumable (finished cases are kept; each file is written under a temporary
name then renamed) and parallel-safe (a ``CASE.lock`` file held by one process; a lock
left by a dead process is taken over), so several processes or nodes can share the
work with ``--part/--num_parts`` or simply run at once.

Precision: embeddings of a bf16 encoder live in ``embeddings/<backbone>_bf16/`` with
``"encoder_precision": "bf16"`` in their meta.json, never mixed with fp32 ones. The fp32
backends (eager PyTorch, ONNX Runtime, OpenVINO) agree within 1e-3, far below the fp16
storage step, and share the plain folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from samunet.utilities.file_io import atomic_path, load_json, load_npz, save_json
from samunet.utilities.progress import progress as progress_bar

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1


def file_sha1(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CaseLock:
    """An exclusive lock file; ``acquired`` is False when another live process holds it."""

    def __init__(self, path: Path):
        self.path, self.acquired = path, False

    def __enter__(self):
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                self.acquired = True
                return self
            except FileExistsError:
                try:
                    pid = int(self.path.read_text() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and _pid_alive(pid) and pid != os.getpid():
                    return self
                self.path.unlink(missing_ok=True)  # stale: its process is gone
        return self

    def __exit__(self, *exc):
        if self.acquired:
            self.path.unlink(missing_ok=True)


class EmbeddingCache:
    def __init__(self, preprocessed_dataset_folder: str | Path, data_identifier: str, backbone: str,
                 weights_identity: str, input_size: int, dtype: str = "float16", precision: str = "fp32",
                 variant: str = "", transform=None, sam_input: dict | None = None):
        self.data_folder = Path(preprocessed_dataset_folder) / data_identifier
        self.precision = precision
        suffix = "" if precision == "fp32" else f"_{precision}"
        self.folder = Path(preprocessed_dataset_folder) / "embeddings" / f"{backbone}{suffix}"
        if variant:  # e.g. an appearance view: beside the plain embeddings, removed with them
            self.folder = self.folder / variant
        self.meta = {
            "format_version": CACHE_FORMAT_VERSION, "backbone": backbone, "weights": weights_identity,
            "input_size": int(input_size), "dtype": dtype, "data_identifier": data_identifier,
        }
        if precision != "fp32":  # fp32 caches keep the meta they always had (no rebuild)
            self.meta["encoder_precision"] = precision
        if variant:
            self.meta["variant"] = variant
        # the plan's choice of SAM input channels, when it differs from the old default
        # (samunet.experiment_planning.sam_input.sam_input_cache_key): caches of other choices are stale
        if sam_input is not None:
            self.meta["sam_input"] = dict(sam_input)
        # transform(data (C, Z, Y, X), case) -> data: applied before encoding (appearance views)
        self.transform = transform
        self.dtype = np.dtype(dtype)
        self._maps: dict[str, np.ndarray] = {}
        self._infos: dict[str, dict] = {}

    # ---- validity -----------------------------------------------------------------
    def _check_meta(self) -> None:
        meta_file = self.folder / "meta.json"
        if meta_file.is_file():
            try:
                old = load_json(meta_file)
            except ValueError:
                old = None
            if old == self.meta:
                return
            logger.warning("embedding cache %s was made with %s; rebuilding it for %s", self.folder, old, self.meta)
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        save_json(self.meta, meta_file)

    def is_valid(self, case: str) -> bool:
        js, npy = self.folder / f"{case}.json", self.folder / f"{case}.npy"
        if not (js.is_file() and npy.is_file()):
            return False
        try:
            info = load_json(js)
        except ValueError:
            return False
        return info.get("source_sha1") == file_sha1(self.data_folder / f"{case}.npz")

    # ---- building -----------------------------------------------------------------
    def build(self, cases, sam, batch_size: int | None = None, part: int = 0, num_parts: int = 1,
              progress: bool = True) -> int:
        """Encode every slice of ``cases`` not cached yet, ``batch_size`` slices per encoder call
        (default: the SAM's ``encoder_batch_size``, the plan's); returns how many cases were encoded."""
        batch_size = encoder_batch_size(sam, batch_size)
        encoder_precision = getattr(sam, "encoder_precision", "fp32")
        if encoder_precision != self.precision:
            raise ValueError(f"embedding cache {self.folder} holds {self.precision} embeddings but the SAM image "
                             f"encoder runs in {encoder_precision}; make the cache with precision="
                             f"{encoder_precision!r} (--encoder_precision selects both)")
        self._check_meta()
        todo = [c for i, c in enumerate(sorted(cases)) if i % num_parts == part and not self.is_valid(c)]
        done = 0
        for case in progress_bar(todo, desc=f"embedding cache ({self.meta['backbone']})", unit="case",
                                 disable=not progress or not todo):
            with CaseLock(self.folder / f"{case}.lock") as lock:
                if not lock.acquired:
                    logger.info("%s is being encoded by another process; skipped", case)
                    continue
                if self.is_valid(case):
                    continue
                self._encode_case(case, sam, batch_size)
                done += 1
        return done

    def _encode_case(self, case: str, sam, batch_size: int) -> None:
        npz = self.data_folder / f"{case}.npz"
        sha = file_sha1(npz)
        data = load_npz(npz)["data"]
        if self.transform is not None:
            data = self.transform(data, case)
        emb, scaled_hw = encode_volume(sam, data, batch_size)
        (self.folder / f"{case}.json").unlink(missing_ok=True)
        with atomic_path(self.folder / f"{case}.npy", suffix=".npy") as tmp:
            np.save(tmp, emb.astype(self.dtype))
        save_json({"source_sha1": sha, "shape": list(emb.shape), "scaled_hw": list(scaled_hw),
                   "slice_hw": list(data.shape[2:])}, self.folder / f"{case}.json")
        self._maps.pop(case, None)
        self._infos.pop(case, None)

    # ---- reading ------------------------------------------------------------------
    def load(self, case: str) -> np.ndarray:
        """``(Z, 256, 64, 64)`` memory map of a cached case."""
        if case not in self._maps:
            f = self.folder / f"{case}.npy"
            if not f.is_file():
                raise FileNotFoundError(f"{f}: no cached embedding; build the cache first")
            self._maps[case] = np.load(f, mmap_mode="r")
        return self._maps[case]

    def info(self, case: str) -> dict:
        """``CASE.json`` of a cached case (read once; batches ask for it per sample)."""
        if case not in self._infos:
            self._infos[case] = load_json(self.folder / f"{case}.json")
        return self._infos[case]

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("*.npy"))


def encoder_batch_size(sam, batch_size: int | None = None) -> int:
    """``batch_size`` if given, else the SAM's ``encoder_batch_size`` (plans.json
    ``sam.encoder_batch_size``, set by ``SamWrapper.configure_from_plan``), else 4."""
    from samunet.experiment_planning.method_defaults import ENCODER_BATCH_SIZE

    return int(batch_size or getattr(sam, "encoder_batch_size", None) or ENCODER_BATCH_SIZE)


def prepared_batches(sam, data: np.ndarray, slices, batch_size: int | None = None):
    """Yield ``(zs, images (B, 3, S, S), scaled_hw)``: the slices ``slices`` of ``(C, Z, Y, X)``
    data, ``batch_size`` at a time (default :func:`encoder_batch_size`), prepared as SAM's
    encoder input on its device."""
    batch_size = encoder_batch_size(sam, batch_size)
    device = next(sam.image_encoder.parameters()).device
    slices = list(slices)
    for start in range(0, len(slices), batch_size):
        zs = slices[start:start + batch_size]
        sl = torch.from_numpy(np.ascontiguousarray(data[:, zs].transpose(1, 0, 2, 3)))
        images, scaled = sam.prepare_images(sl.to(device, torch.float32))
        yield zs, images, scaled


@torch.no_grad()
def encode_volume(sam, data: np.ndarray, batch_size: int | None = None,
                  lru=None) -> tuple[np.ndarray, tuple[int, int]]:
    """Encode every slice of ``(C, Z, Y, X)`` data once, ``batch_size`` slices per encoder call
    (default :func:`encoder_batch_size`). Returns ``(Z, 256, 64, 64)`` float32 and the slice's
    scaled size inside SAM's padded input.

    ``lru``: an :class:`~samunet.sam.embedding_lru.EmbeddingLRU`; slices found there are not
    encoded again, and new ones are added (prediction; cache building passes None)."""
    from samunet.sam.embedding_lru import slice_key

    batch_size = encoder_batch_size(sam, batch_size)
    z_count = data.shape[1]
    out: list = [None] * z_count
    scaled = None
    keys = [slice_key(sam, data[:, z]) for z in range(z_count)] if lru is not None else None
    todo = list(range(z_count))
    if lru is not None:
        for z in range(z_count):
            hit = lru.get(keys[z])
            if hit is not None:
                out[z], scaled = hit
        todo = [z for z in range(z_count) if out[z] is None]
    for zs, images, scaled in prepared_batches(sam, data, todo, batch_size):
        emb = sam.encode(images).float().cpu().numpy()
        for i, z in enumerate(zs):
            out[z] = emb[i]
            if lru is not None:
                lru.put(keys[z], emb[i], scaled)
    return np.stack(out), tuple(int(s) for s in scaled)
