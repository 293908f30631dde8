"""Embedding cache: hit, miss, invalidation, locks (with a tiny stand-in encoder for speed)."""

import os

import numpy as np
import pytest
import torch
from torch import nn

from samunet.sam.embedding_cache import CaseLock, EmbeddingCache
from samunet.utilities.file_io import save_npz


class TinySam(nn.Module):
    """Same interface as SamWrapper.prepare_images/encode, cheap enough for unit tests."""

    input_size = 256

    def __init__(self):
        super().__init__()
        self.image_encoder = nn.Conv2d(3, 256, 4, stride=4)
        self.calls = 0

    def prepare_images(self, slices):
        x = slices[:, :1].repeat(1, 3, 1, 1)
        return nn.functional.interpolate(x, size=(256, 256)), (256, 256)

    @torch.no_grad()
    def encode(self, images):
        self.calls += images.shape[0]
        return self.image_encoder(images)


def _dataset(tmp_path, n=3):
    folder = tmp_path / "Dataset001_X" / "plans_2d"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        save_npz(folder / f"c{i}.npz", data=rng.random((1, 2, 40, 30), dtype=np.float32),
                 seg=np.zeros((1, 2, 40, 30), np.int16))
    return tmp_path / "Dataset001_X"


def test_hit_miss_and_invalidation(tmp_path):
    ds = _dataset(tmp_path)
    sam = TinySam()
    cache = EmbeddingCache(ds, "plans_2d", "tiny", "weights-v1", 256)
    assert cache.build(["c0", "c1", "c2"], sam, progress=False) == 3
    assert sam.calls == 6  # 3 cases x 2 slices, each encoded once
    emb = cache.load("c1")
    assert emb.shape == (2, 256, 64, 64) and emb.dtype == np.float16
    assert cache.build(["c0", "c1", "c2"], sam, progress=False) == 0  # all hits
    assert sam.calls == 6
    # the preprocessed data of one case changes -> only that case is recomputed
    save_npz(ds / "plans_2d" / "c2.npz", data=np.ones((1, 2, 40, 30), np.float32), seg=np.zeros((1, 2, 40, 30), np.int16))
    assert not cache.is_valid("c2") and cache.is_valid("c0")
    assert cache.build(["c0", "c1", "c2"], sam, progress=False) == 1
    # other weights -> everything is rebuilt
    other = EmbeddingCache(ds, "plans_2d", "tiny", "weights-v2", 256)
    assert other.build(["c0", "c1", "c2"], sam, progress=False) == 3
    assert 0 <= cache.size_bytes() - 3 * 2 * 256 * 64 * 64 * 2 < 3 * 1024  # fp16 payload + .npy headers


def test_part_of_num_parts_and_locks(tmp_path):
    ds = _dataset(tmp_path, n=4)
    cache = EmbeddingCache(ds, "plans_2d", "tiny", "w", 256)
    assert cache.build(["c0", "c1", "c2", "c3"], TinySam(), part=0, num_parts=2, progress=False) == 2
    cache.folder.mkdir(parents=True, exist_ok=True)
    # a lock held by a live process is respected; one left by a dead process is taken over
    (cache.folder / "c1.lock").write_text(str(os.getppid()))
    (cache.folder / "c3.lock").write_text("999999999")
    assert cache.build(["c0", "c1", "c2", "c3"], TinySam(), progress=False) == 1
    assert not cache.is_valid("c1") and cache.is_valid("c3")
    with CaseLock(cache.folder / "x.lock") as lock:
        assert lock.acquired and (cache.folder / "x.lock").read_text() == str(os.getpid())
    assert not (cache.folder / "x.lock").exists()


def test_missing_entry_is_explained(tmp_path):
    cache = EmbeddingCache(_dataset(tmp_path), "plans_2d", "tiny", "w", 256)
    with pytest.raises(FileNotFoundError, match="build the cache"):
        cache.load("c0")
