"""Worker counts bounded by cores and available memory."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux); total physical memory elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 1024**3


MEMORY_BUDGET_ENV = "SAMUNET_MEMORY_BUDGET_GB"
MEMORY_BUDGET_FRACTION = 0.8


def total_memory_bytes() -> int:
    """Physical memory, or the cgroup (container) limit when that is lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 * 1024**3
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def format_bytes(n: float) -> str:
    """``1.5 GiB``, ``12.0 MiB``, ``800 bytes``."""
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size / 10:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def memory_budget_bytes() -> tuple[int, str]:
    """``(bytes, how it was chosen)``: ``SAMUNET_MEMORY_BUDGET_GB`` if set, else 80% of total memory.

    Total rather than available memory, so that whether an image is accepted does not
    depend on what else happens to run at the moment.
    """
    text = os.environ.get(MEMORY_BUDGET_ENV, "").strip()
    if text:
        try:
            gb = float(text)
            if not gb > 0:
                raise ValueError
        except ValueError:
            raise ValueError(f"{MEMORY_BUDGET_ENV}={text!r} is not a positive number of GB, e.g. 16") from None
        return int(gb * 1024**3), f"set by {MEMORY_BUDGET_ENV}"
    total = total_memory_bytes()
    return int(total * MEMORY_BUDGET_FRACTION), (
        f"{MEMORY_BUDGET_FRACTION:.0%} of the {format_bytes(total)} of memory; set {MEMORY_BUDGET_ENV} to change it"
    )


def available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def default_num_processes() -> int:
    return min(available_cpus(), 8)


def cap_workers_by_memory(requested: int, bytes_per_worker: int, what: str = "workers", fraction: float = 0.7) -> int:
    """Lower ``requested`` so that workers fit in ``fraction`` of available memory; says so when it does."""
    avail = available_memory_bytes()
    fit = max(1, int(avail * fraction // max(bytes_per_worker, 1)))
    if fit < requested:
        logger.warning(
            "using %d %s instead of %d: each needs about %.1f GiB and %.1f GiB of memory is available",
            fit, what, requested, bytes_per_worker / 1024**3, avail / 1024**3,
        )
        return fit
    return requested


def map_with_progress(fn, tasks: list, num_processes: int, desc: str, unit: str = "case") -> list:
    """``[fn(t) for t in tasks]`` in order with a progress bar; ``num_processes > 1`` runs ``fn``
    in spawned workers (``fn`` must be a module-level function)."""
    import multiprocessing

    from samunet.utilities.progress import progress

    bar = dict(total=len(tasks), desc=desc, unit=unit)
    if num_processes > 1 and len(tasks) > 1:
        with multiprocessing.get_context("spawn").Pool(min(num_processes, len(tasks))) as pool:
            return list(progress(pool.imap(fn, tasks), **bar))
    return [fn(t) for t in progress(tasks, **bar)]
