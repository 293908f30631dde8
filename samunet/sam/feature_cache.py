"""The APM feature cache: intermediate encoder features for ProMISe's Auto-Prompting Module.

Layout: ``SAMUNET_preprocessed/DatasetXXX/embeddings/<backbone>_apm/``, with the same
conventions as :class:`~samunet.sam.embedding_cache.EmbeddingCache` (it is a subclass):

- ``meta.json``: backbone, weights hash, input size, dtype, data identifier and the tapped
  encoder blocks (``taps``); any difference → the folder is rebuilt;
- ``CASE.npy``: ``(Z, C_apm, 64, 64)`` float16 (C_apm = 640 for LiteMedSAM's TinyViT:
  blocks 6, 9, 12 = 160 + 160 + 320 channels; 2304 for ViT-B), memory-mapped;
- ``CASE.json``: SHA-1 of the preprocessed ``CASE.npz``, scaled slice size, shape.

Resumable and parallel-safe (per-case lock files, atomic renames) like the embedding cache.

One encoder pass yields both the final embedding and the intermediate features, so when a
case is encoded here its entry in the companion :class:`EmbeddingCache` (``embeddings/
<backbone>/``) is written too if it is missing or stale: building both caches costs one
encoder pass per slice, not two.

Why cache rather than recompute (measured on the 2-core CPU box, LiteMedSAM, 256² input,
under a load average of ~5): the TinyViT encoder costs ~5-7 s per slice, i.e. ~40-55 s per
batch of 8 if recomputed every iteration, while a cached slice is 5.2 MB (fp16) read from
a memory map in milliseconds (plus 2.1 MB for the final embedding). A 3D prostate case of
~20 slices thus takes ~105 MB of APM features; ViT-B taps would be 18.9 MB per slice.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from samunet.sam.embedding_cache import (CaseLock, EmbeddingCache, encoder_batch_size, file_sha1,
                                         prepared_batches)
from samunet.utilities.file_io import atomic_path, load_npz, save_json

logger = logging.getLogger(__name__)


class FeatureCache(EmbeddingCache):
    """APM features per preprocessed slice; keyed like the embedding cache plus the taps.

    Args:
        preprocessed_dataset_folder, data_identifier, backbone, weights_identity, input_size,
        dtype: as for :class:`EmbeddingCache` (``backbone`` is the SAM registry name; the
            folder is ``embeddings/<backbone>_apm``).
        taps: names of the tapped encoder blocks (part of the cache key).
        embedding_cache: companion embedding cache filled as a by-product, or None.
    """

    def __init__(self, preprocessed_dataset_folder: str | Path, data_identifier: str, backbone: str,
                 weights_identity: str, input_size: int, dtype: str = "float16", taps=(),
                 embedding_cache: EmbeddingCache | None = None, precision: str | None = None,
                 sam_input: dict | None = None):
        # features come from the eager encoder (forward hooks), in the SAM's configured precision;
        # the companion embedding cache must hold embeddings of that same precision
        precision = precision or (embedding_cache.precision if embedding_cache is not None else "fp32")
        if embedding_cache is not None and embedding_cache.precision != precision:
            raise ValueError(f"feature cache ({precision}) and embedding cache {embedding_cache.folder} "
                             f"({embedding_cache.precision}) must have the same encoder precision")
        super().__init__(preprocessed_dataset_folder, data_identifier, f"{backbone}_apm", weights_identity,
                         input_size, dtype, precision, sam_input=sam_input)
        self.meta["taps"] = list(taps)
        self.embedding_cache = embedding_cache

    def build(self, cases, sam, batch_size: int | None = None, part: int = 0, num_parts: int = 1,
              progress: bool = True) -> int:
        if self.embedding_cache is not None:
            self.embedding_cache._check_meta()  # before anything is written into its folder
        return super().build(cases, sam, batch_size, part, num_parts, progress)

    def _encode_case(self, case: str, sam, batch_size: int) -> None:
        npz = self.data_folder / f"{case}.npz"
        sha = file_sha1(npz)
        data = load_npz(npz)["data"]
        emb, feats, scaled_hw = encode_volume_with_features(sam, data, batch_size, self.dtype)
        info = {"source_sha1": sha, "shape": list(feats.shape), "scaled_hw": list(scaled_hw),
                "slice_hw": list(data.shape[2:])}
        (self.folder / f"{case}.json").unlink(missing_ok=True)
        with atomic_path(self.folder / f"{case}.npy", suffix=".npy") as tmp:
            np.save(tmp, feats)
        save_json(info, self.folder / f"{case}.json")
        self._maps.pop(case, None)
        ec = self.embedding_cache
        if ec is not None and not ec.is_valid(case):
            with CaseLock(ec.folder / f"{case}.lock") as lock:
                if lock.acquired and not ec.is_valid(case):
                    (ec.folder / f"{case}.json").unlink(missing_ok=True)
                    with atomic_path(ec.folder / f"{case}.npy", suffix=".npy") as tmp:
                        np.save(tmp, emb.astype(ec.dtype))
                    save_json({**info, "shape": list(emb.shape)}, ec.folder / f"{case}.json")
                    ec._maps.pop(case, None)

    def load(self, case: str) -> np.ndarray:
        """``(Z, C_apm, 64, 64)`` memory map of a cached case."""
        return super().load(case)


@torch.no_grad()
def encode_volume_with_features(sam, data: np.ndarray, batch_size: int | None = None, dtype=np.float16):
    """Encode every slice of ``(C, Z, Y, X)`` data once (``batch_size`` slices per call, default the
    SAM's ``encoder_batch_size``). Returns ``embeddings (Z, 256, 64, 64)`` float32, ``features
    (Z, C_apm, 64, 64)`` in ``dtype`` and the scaled slice size."""
    from samunet.networks.promise import encode_with_features

    batch_size = encoder_batch_size(sam, batch_size)
    embs, feats, scaled = [], [], None
    for _, images, scaled in prepared_batches(sam, data, range(data.shape[1]), batch_size):
        e, f = encode_with_features(sam, images)
        embs.append(e.float().cpu().numpy())
        feats.append(f.cpu().numpy().astype(dtype))
    return np.concatenate(embs), np.concatenate(feats), tuple(int(s) for s in scaled)
