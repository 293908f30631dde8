"""Worker counts bounded by memory (with a message) and thread counts split between workers."""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk

from samunet.inference.predictor import input_case_bytes
from samunet.utilities import resources


def test_workers_capped_by_available_memory(monkeypatch, caplog):
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 10 * 2**30)
    with caplog.at_level(logging.WARNING):
        assert resources.cap_workers_by_memory(8, 3 * 2**30, "preprocessing workers") == 2  # 0.7 * 10 GiB // 3 GiB
    assert "using 2 preprocessing workers instead of 8" in caplog.text and "3.0 GiB" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert resources.cap_workers_by_memory(2, 2**30, "preprocessing workers") == 2
        assert resources.cap_workers_by_memory(4, 64 * 2**30, "preprocessing workers") == 1  # never 0
    assert "instead of 2" not in caplog.text and "using 1 preprocessing workers instead of 4" in caplog.text


def test_prediction_worker_memory_estimate_reads_headers(tmp_path):
    img = sitk.GetImageFromArray(np.zeros((24, 384, 384), np.int16))
    f = tmp_path / "case_0000.nii.gz"
    sitk.WriteImage(img, str(f))
    assert f.stat().st_size < 384 * 384 * 24  # compressed: the file size would underestimate
    assert input_case_bytes([f]) == 24 * 384 * 384 * 4
    png = tmp_path / "x_0000.png"
    png.write_bytes(b"\0" * 1000)
    assert input_case_bytes([png]) == 8000


def test_prediction_prefetch_is_bounded():
    import multiprocessing as mp
    import time

    from samunet.inference.predictor import bounded_imap

    with mp.get_context("fork").Pool(2) as pool:
        gen = bounded_imap(pool, time.sleep, [0.0] * 6, ahead=2)
        first = next(gen)
        assert first is None
        # consumer holds one result: only `ahead` more may have been submitted
        assert len(gen.gi_frame.f_locals["pending"]) <= 2
        assert list(gen) == [None] * 5


def test_torchrun_ranks_share_the_cores(monkeypatch):
    from samunet.sam import encoder_backends as eb

    monkeypatch.setattr(eb, "available_cpus", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert eb.inference_threads() == 2
