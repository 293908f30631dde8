"""Tests for time-budgeted training schedules (samunet.training.schedule)."""

from __future__ import annotations

import math

import pytest
import torch

from samunet.training.schedule import (
    StageSchedule,
    default_time_budget,
    format_duration,
    measure_seconds_per_call,
    parse_duration,
    size_stage,
    split_budget,
)


@pytest.mark.parametrize("text, seconds", [
    ("30m", 1800.0), ("1h30m", 5400.0), ("90s", 90.0), ("2h", 7200.0), ("1800", 1800.0),
    (1800, 1800.0), (12.5, 12.5), ("45min", 2700.0), ("1.5h", 5400.0), (" 1h 2m 5s ", 3725.0),
    ("10 minutes", 600.0), ("2H", 7200.0),
])
def test_parse_duration_valid(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", [None, "", "   "])
def test_parse_duration_empty_is_none(text):
    assert parse_duration(text) is None


@pytest.mark.parametrize("text", ["auto", "abc", "30x", "m", "30m1h", "1h1h", "-5", "5ms", "inf", True])
def test_parse_duration_rejects_garbage_and_shows_examples(text):
    with pytest.raises(ValueError) as err:
        parse_duration(text)
    assert repr(text) in str(err.value) and "1h30m" in str(err.value)


@pytest.mark.parametrize("text", [0, "0", "0m", -3, -0.5, math.inf, math.nan])
def test_parse_duration_rejects_non_positive_and_non_finite(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("seconds, text", [
    (95, "1m35s"), (3725, "1h02m05s"), (12.34, "12.3s"), (720, "12m00s"), (7200, "2h00m00s"),
    (59.97, "1m00s"), (0.04, "0.0s"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [90, 95, 720, 3725, 5400, 7200, 86399])
def test_format_parse_round_trip(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


def test_size_stage_exact_fit():
    s = size_stage("fine", 600, 0.5, max_epochs=40, iterations_per_epoch=50)
    assert (s.num_epochs, s.iterations_per_epoch, s.total_iterations) == (24, 50, 1200)
    assert s.estimated_seconds == 600
    assert s.name == "fine" and "24 epochs x 50" in s.reason and "cap 2000 = 40 x 50" in s.reason


def test_size_stage_per_epoch_overhead_costs_epochs():
    s = size_stage("fine", 600, 0.5, max_epochs=40, iterations_per_epoch=50, per_epoch_overhead_s=5)
    assert s.num_epochs == 20 and s.iterations_per_epoch == 50  # 600 / (25 + 5)
    assert s.estimated_seconds <= 600


def test_size_stage_fixed_overhead_is_subtracted_first():
    s = size_stage("fine", 600, 0.5, max_epochs=40, iterations_per_epoch=50, fixed_overhead_s=100)
    assert s.num_epochs == 20 and s.estimated_seconds == 600


def test_size_stage_fast_device_reaches_cap():
    s = size_stage("fine", 600, 0.001, max_epochs=40, iterations_per_epoch=50)
    assert (s.num_epochs, s.iterations_per_epoch) == (40, 50) and "cap reached" in s.reason
    unlimited = size_stage("fine", math.inf, 0.5, max_epochs=40, iterations_per_epoch=50)
    assert unlimited.num_epochs == 40


def test_size_stage_partial_epoch_when_less_than_one_fits():
    s = size_stage("fine", 20, 0.5, max_epochs=40, iterations_per_epoch=50, min_iterations=10)
    assert (s.num_epochs, s.iterations_per_epoch) == (1, 40) and s.estimated_seconds <= 20


def test_size_stage_tiny_budget_applies_floor_and_says_so():
    s = size_stage("fine", 5, 0.5, max_epochs=40, iterations_per_epoch=50, min_iterations=30)
    assert (s.num_epochs, s.total_iterations) == (1, 30)
    assert "floor 30" in s.reason and "OVER BUDGET" in s.reason
    big_floor = size_stage("fine", 5, 0.5, max_epochs=40, iterations_per_epoch=20, min_iterations=50)
    assert (big_floor.num_epochs, big_floor.iterations_per_epoch) == (3, 20)
    zero = size_stage("fine", -10, 0.5, max_epochs=2, iterations_per_epoch=10, min_iterations=500)
    assert zero.total_iterations == 20  # the floor never exceeds the full schedule


@pytest.mark.parametrize("budget", [1, 37, 100, 599, 600, 1234, 5000])
@pytest.mark.parametrize("overhead", [0.0, 3.0])
def test_size_stage_invariants(budget, overhead):
    s = size_stage("x", budget, 0.37, max_epochs=40, iterations_per_epoch=50, min_iterations=1,
                   per_epoch_overhead_s=overhead)
    assert s.num_epochs >= 1 and s.iterations_per_epoch >= 1 and s.num_epochs <= 40
    if s.total_iterations > 1:  # above the floor the budget must hold
        assert s.estimated_seconds <= budget
        assert "OVER BUDGET" not in s.reason


def test_size_stage_rejects_bad_arguments():
    with pytest.raises(ValueError):
        size_stage("x", 600, -0.5, 40, 50)
    with pytest.raises(ValueError):
        size_stage("x", 600, 0.5, 0, 50)


def test_stage_schedule_properties():
    s = StageSchedule("a", 3, 10, 0.5, "r", per_epoch_overhead_s=2.0, fixed_overhead_s=1.0)
    assert s.total_iterations == 30 and s.estimated_seconds == 1 + 3 * (5 + 2)


def test_split_budget_proportions():
    assert split_budget(1800, {"a": 1, "b": 2, "c": 0}) == {"a": 600.0, "b": 1200.0, "c": 0.0}
    assert split_budget(100, {"a": 0.25, "b": 0.25}) == {"a": 50.0, "b": 50.0}
    assert split_budget(math.inf, {"a": 1, "b": 0}) == {"a": math.inf, "b": 0.0}


@pytest.mark.parametrize("shares", [{}, {"a": 0, "b": 0}, {"a": 1, "b": -1}, {"a": math.nan}])
def test_split_budget_rejects_bad_shares(shares):
    with pytest.raises(ValueError):
        split_budget(100, shares)


def test_measure_seconds_per_call_median_and_call_count():
    ticks = iter([0.0, 1.0, 10.0, 13.0, 20.0, 20.5, 30.0, 40.0])  # durations 1, 3, 0.5, 10
    calls = []
    result = measure_seconds_per_call(lambda: calls.append(1), warmup=2, repeats=4, clock=lambda: next(ticks))
    assert len(calls) == 6 and result == 2.0  # median of (1, 3, 0.5, 10)
    ticks = iter([0.0, 1.0, 10.0, 13.0, 20.0, 20.5])
    assert measure_seconds_per_call(lambda: None, warmup=0, repeats=3, clock=lambda: next(ticks)) == 1.0
    with pytest.raises(ValueError):
        measure_seconds_per_call(lambda: None, repeats=0)


def test_default_time_budget():
    assert default_time_budget("cpu") == 1800.0
    assert default_time_budget(torch.device("cpu")) == 1800.0
    assert default_time_budget("cuda") is None
    assert default_time_budget(torch.device("cuda", 0)) is None
    assert default_time_budget("cuda:1") is None
