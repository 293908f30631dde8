"""Keep glibc's allocator from handing big tensors back to the kernel after every use.

PyTorch on CPU allocates and frees large activation buffers at every layer. glibc serves
blocks above its (dynamic, at most 32 MiB) mmap threshold with fresh ``mmap`` calls and
returns them with ``munmap``, so every forward pass page-faults its activations in again:
measured on a 2-core EPYC, the LiteMedSAM encoder spent 6.4 s of system time per 4 slices
(1.7 million minor page faults) and ran 1.6x slower than with the settings below. nnU-Net
users get the same effect from ``MALLOC_MMAP_THRESHOLD_``-style environment variables; those
only work when set before the interpreter starts, so samunet sets the equivalent with
``mallopt`` when it is imported:

- ``M_MMAP_MAX = 0``: large blocks come from the heap (kept for reuse) instead of ``mmap``;
- ``M_TRIM_THRESHOLD = 1 GiB``: free memory at the top of the heap is returned to the kernel
  only when it exceeds 1 GiB.

The cost is that memory freed inside a process is reused by that process rather than
returned at once: a phase's high-water mark stays resident after it ends, so a long job's
later phases run on top of it. :func:`trim_heap` hands the free memory back (glibc's
``malloc_trim``); a trainer calls it when its training loop ends, so its final validation
and whatever the process does next (the demo predicts in the same process) start from what
is in use, not from the loop's high-water mark. Linux/glibc only; ``SAMUNET_MALLOC_TUNING=0``
turns it off.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
TRIM_THRESHOLD = 1 << 30
ENV = "SAMUNET_MALLOC_TUNING"

_applied: bool | None = None
_libc = None


def tune_malloc() -> bool:
    """Apply the settings once per process; returns whether they are in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        _applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        global _libc
        _libc = libc if _applied else None
    except (OSError, AttributeError):  # no libc.so.6 or no mallopt: leave the allocator alone
        _applied = False
    return _applied


def trim_heap() -> bool:
    """Return the heap's free memory to the kernel (after a phase that allocated a lot, e.g. a
    training loop), when the settings above are in effect; True if anything was released."""
    if not _applied or _libc is None:
        return False
    import gc

    gc.collect()
    try:
        return bool(_libc.malloc_trim(0))
    except AttributeError:
        return False
