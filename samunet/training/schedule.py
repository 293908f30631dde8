"""Time-budgeted training schedules.

Users often train on a 2-core CPU, where a chain of stages has to finish inside a wall-clock
budget (e.g. 30 min). Each stage is sized from a measured throughput (seconds per iteration)
and capped at its full "paper-sized" schedule, so on a GPU the same code yields the full
schedules and only slow devices get shortened ones.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from dataclasses import dataclass
from typing import Callable

_NUM = r"(\d+(?:\.\d*)?|\.\d+)"
# Units in fixed order h, m, s, each at most once, so "1h30m" parses but "30m1h" does not.
_DURATION_RE = re.compile(
    rf"(?:{_NUM}\s*h(?:ours?|rs?)?)?\s*(?:{_NUM}\s*m(?:in(?:ute)?s?)?)?\s*(?:{_NUM}\s*s(?:ec(?:ond)?s?)?)?",
    re.IGNORECASE,
)
_EXAMPLES = '"30m", "1h30m", "90s", "2h", "45min", "1.5h", "1800" (plain number = seconds)'


def parse_duration(text: str | int | float | None) -> float | None:
    """Parse a duration such as ``"1h30m"`` or ``1800`` into seconds; ``None``/``""`` -> ``None``.

    ``"auto"`` is deliberately rejected: deciding what "auto" means is the caller's job.
    Raises ``ValueError`` for unparsable, non-finite or non-positive durations.
    """
    if text is None:
        return None
    bad = ValueError(f"invalid duration {text!r}; expected e.g. {_EXAMPLES}")
    if isinstance(text, bool):  # bool is an int subclass; True must not mean "1 second"
        raise bad
    if isinstance(text, (int, float)):
        seconds = float(text)
    elif not text.strip():
        return None
    elif re.fullmatch(_NUM, text.strip()):
        seconds = float(text)
    else:
        match = _DURATION_RE.fullmatch(text.strip())
        if match is None or not any(match.groups()):
            raise bad
        h, m, s = (float(g) if g else 0.0 for g in match.groups())
        seconds = h * 3600 + m * 60 + s
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"duration must be positive and finite, got {text!r}; expected e.g. {_EXAMPLES}")
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds compactly: ``12.34 -> "12.3s"``, ``95 -> "1m35s"``, ``3725 -> "1h02m05s"``."""
    if not math.isfinite(seconds):
        return str(seconds)
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if round(seconds, 1) < 60:  # compare the rounded value so 59.97 does not print as "60.0s"
        return f"{seconds:.1f}s"
    h, rest = divmod(round(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


@dataclass
class StageSchedule:
    """Sized schedule of one training stage; overheads default to 0 so the estimate is exact."""

    name: str
    num_epochs: int
    iterations_per_epoch: int
    seconds_per_iteration: float
    reason: str
    per_epoch_overhead_s: float = 0.0
    fixed_overhead_s: float = 0.0

    @property
    def total_iterations(self) -> int:
        return self.num_epochs * self.iterations_per_epoch

    @property
    def estimated_seconds(self) -> float:
        epoch = self.iterations_per_epoch * self.seconds_per_iteration + self.per_epoch_overhead_s
        return self.fixed_overhead_s + self.num_epochs * epoch


def size_stage(name: str, budget_s: float, seconds_per_iteration: float, max_epochs: int,
               iterations_per_epoch: int, min_iterations: int = 50, fixed_overhead_s: float = 0.0,
               per_epoch_overhead_s: float = 0.0) -> StageSchedule:
    """Fit a stage into ``budget_s`` seconds (``math.inf`` = no budget, full schedule).

    Rule: with ``cost = iterations_per_epoch * spi + per_epoch_overhead_s`` per full epoch,
    1. cap: if ``max_epochs`` full epochs fit, take them (fast devices reach the full schedule);
    2. else take ``floor((budget - fixed) / cost)`` full epochs (at least one fits);
    3. else one shortened epoch of ``floor((budget - fixed - per_epoch) / spi)`` iterations;
    4. floor: if that is under ``min(min_iterations, cap)`` iterations, use the floor instead
       (1 epoch if it is shorter than an epoch, else whole epochs rounded up); this may exceed
       the budget, and ``reason`` says so. Otherwise the estimate never exceeds the budget.
    """
    if max_epochs < 1 or iterations_per_epoch < 1:
        raise ValueError("max_epochs and iterations_per_epoch must be >= 1")
    if not seconds_per_iteration >= 0 or not fixed_overhead_s >= 0 or not per_epoch_overhead_s >= 0:
        raise ValueError("seconds_per_iteration and overheads must be non-negative")
    if math.isnan(budget_s):
        raise ValueError("budget_s must not be NaN")
    spi, k, cap = seconds_per_iteration, iterations_per_epoch, max_epochs * iterations_per_epoch
    floor_its = min(max(1, min_iterations), cap)
    avail, cost = budget_s - fixed_overhead_s, k * spi + per_epoch_overhead_s
    if cost * max_epochs <= avail:
        epochs, ipe, how = max_epochs, k, "cap reached"
    elif avail >= cost:  # cost > 0 here, otherwise the cap branch would have been taken
        epochs, ipe, how = int(avail // cost), k, "fits"
    else:
        short = (avail - per_epoch_overhead_s) // spi if spi > 0 else 0
        epochs, ipe, how = 1, max(0, int(short)), "fits"
    fitted = epochs * ipe
    if fitted < floor_its:
        epochs, ipe = (1, floor_its) if floor_its <= k else (math.ceil(floor_its / k), k)
        how = f"only {fitted} fit, raised to floor {floor_its}"
    sched = StageSchedule(name, epochs, ipe, spi, "", per_epoch_overhead_s, fixed_overhead_s)
    extras = "".join(f", +{format_duration(v)}{u}" for v, u in
                     ((per_epoch_overhead_s, "/epoch"), (fixed_overhead_s, " fixed")) if v)
    over = f", OVER BUDGET (est. {format_duration(sched.estimated_seconds)})" \
        if sched.estimated_seconds > budget_s else ""
    sched.reason = (f"budget {format_duration(budget_s)} at {spi:.3g} s/it{extras} -> "
                    f"{sched.total_iterations} iterations, {how} (cap {cap} = {max_epochs} x {k}): "
                    f"{epochs} epochs x {ipe}{over}")
    return sched


def split_budget(total_s: float, shares: dict[str, float]) -> dict[str, float]:
    """Split ``total_s`` proportionally to non-negative ``shares`` (they need not sum to 1)."""
    if any(not v >= 0 for v in shares.values()):  # "not >=" also rejects NaN
        raise ValueError(f"shares must be non-negative, got {shares}")
    weight = sum(shares.values())
    if not weight > 0:
        raise ValueError(f"at least one share must be positive, got {shares}")
    # Zero shares get 0 explicitly so an infinite total (no budget) does not yield NaN.
    return {k: total_s * v / weight if v else 0.0 for k, v in shares.items()}


def measure_seconds_per_call(fn: Callable[[], object], warmup: int = 1, repeats: int = 3,
                             clock: Callable[[], float] = time.perf_counter) -> float:
    """Median seconds per ``fn()`` over ``repeats`` timed calls after ``warmup`` untimed ones.

    Warm-up absorbs one-off costs (allocator, autotuning, lazy init); the median resists a
    single slow outlier. On CUDA ``fn`` must synchronise itself, or only launch time is measured.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError("warmup must be >= 0 and repeats >= 1")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def default_time_budget(device) -> float | None:
    """1800 s (30 min) on CPU, ``None`` (no budget: full schedules) on any accelerator.

    Accepts a ``torch.device`` or a string such as ``"cuda:0"``; read via ``.type`` so this
    module does not need to import torch.
    """
    kind = getattr(device, "type", None) or str(device).split(":")[0].strip().lower()
    return 1800.0 if kind == "cpu" else None
