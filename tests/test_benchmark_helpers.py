"""The generalisation benchmark's per-sequence statistics (benchmarks/bench_generalisation.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_generalisation as bench  # noqa: E402


def test_video_sequences_are_runs_of_consecutive_frame_numbers_per_prefix():
    cases = ["C_104", "C_105", "C_106", "C_200", "C_201", "C_300", "K_107", "K_108", "other"]
    assert bench.video_sequences(cases) == {
        "C 104-106": ["C_104", "C_105", "C_106"], "C 200-201": ["C_200", "C_201"], "K 107-108": ["K_107", "K_108"]}


def test_the_sequence_interval_resamples_whole_sequences():
    sequences = {"a": ["a_1", "a_2", "a_3"], "b": ["b_1", "b_2", "b_3"]}
    alike = {c: 0.8 for cs in sequences.values() for c in cs}
    assert bench.sequence_interval(alike, sequences) == pytest.approx((0.8, 0.8))
    # one good and one bad sequence: resampling whole sequences reaches the extremes (both draws
    # the same sequence in a quarter of the draws), which resampling frames would not
    split = {**{c: 1.0 for c in sequences["a"]}, **{c: 0.0 for c in sequences["b"]}}
    assert bench.sequence_interval(split, sequences) == pytest.approx((0.0, 1.0))


def test_row_keeps_each_case_mean_foreground_dice():
    summary = {"foreground_mean": {"Dice": 0.5}, "metric_per_case": [
        {"case": "x_1", "metrics": {"1": {"Dice": 0.2}, "2": {"Dice": 0.6}}},
        {"case": "x_2", "metrics": {"1": {"Dice": None}, "2": {"Dice": 1.0}}}]}
    r = bench.row(summary)
    assert r["Dice"] == 0.5 and r["per_case"] == pytest.approx({"x_1": 0.4, "x_2": 1.0})
