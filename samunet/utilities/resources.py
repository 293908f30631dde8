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
