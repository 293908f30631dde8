"""A bounded in-memory LRU of slice embeddings for prediction.

At prediction time the frozen encoder is the whole cost of the SAM stage, and the same
preprocessed slice reaches it several times: once per fold model of an ensemble (every fold
shares the frozen encoder), once per prompt mode or class request. Entries are keyed by
what determines the embedding — the encoder (model, weights file, backend, precision, input channels) and
the slice's bytes — so a hit is exact whatever case name, fold or trainer asks.

The bound is in bytes (``SAMUNET_embedding_lru_mb``, default 256 MiB: one LiteMedSAM slice is
4 MiB in float32, so ~2.5 cases of 24 slices), which keeps a prediction worker's memory flat
however many cases it processes.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict

import numpy as np

DEFAULT_LRU_MB = 256


def encoder_identity(sam) -> tuple:
    """What makes two encoders give the same embedding for the same image."""
    path = getattr(sam, "checkpoint_path", None)
    # which slice channels reach the encoder (the plan's sam.input_channels) changes the embedding
    # and the canvas (sam.canvas_px) the scale of the slice in SAM's input
    channels = (getattr(sam, "input_channels", None), getattr(sam, "input_channel_mode", None),
                getattr(sam, "canvas_px", None))
    if path is None:  # stand-ins without weights files (tests): this very object
        return ("object", id(sam), *channels)
    return (getattr(sam, "name", "?"), os.path.realpath(path), getattr(sam, "encoder_backend", "torch"),
            getattr(sam, "encoder_precision", "fp32"), int(getattr(sam, "input_size", 0)), *channels)


def slice_key(sam, slice_data: np.ndarray) -> tuple:
    """``(encoder identity, shape, dtype, sha1 of the bytes)`` of one ``(C, Y, X)`` slice."""
    a = np.ascontiguousarray(slice_data)
    return encoder_identity(sam), a.shape, a.dtype.str, hashlib.sha1(a.view(np.uint8)).hexdigest()


class EmbeddingLRU:
    """``key -> (embedding (256, 64, 64) float32, scaled_hw)``, least recently used evicted
    first once ``max_bytes`` is exceeded. Thread-safe."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[tuple, tuple[np.ndarray, tuple[int, int]]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key):
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key, embedding: np.ndarray, scaled_hw) -> None:
        if embedding.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[0].nbytes
            self._items[key] = (embedding, tuple(int(s) for s in scaled_hw))
            self._bytes += embedding.nbytes
            while self._bytes > self.max_bytes:
                _, (e, _) = self._items.popitem(last=False)
                self._bytes -= e.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)


_DEFAULT: EmbeddingLRU | None = None


def prediction_lru() -> EmbeddingLRU:
    """The process-wide LRU used by the trainers' ``predict_preprocessed``."""
    global _DEFAULT
    if _DEFAULT is None:
        mb = float(os.environ.get("SAMUNET_embedding_lru_mb", DEFAULT_LRU_MB))
        _DEFAULT = EmbeddingLRU(int(mb * 2**20))
    return _DEFAULT
