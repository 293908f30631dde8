"""Progress bars on a terminal, a few plain lines in a log file.

:func:`progress` replaces ``tqdm(...)``. On a terminal it returns a real tqdm bar. When the
bar's stream (``file=``, default stderr, where tqdm writes) is not a terminal, e.g.
``samunet_train ... > train.log 2>&1`` or ``| tee``, it returns a :class:`PlainProgress`
with the same interface that writes whole lines, never ``\\r``:

- ``leave=True`` (the default): a start line (``desc: 0/N``), a line at each 10 % of the
  total (elapsed, time left, rate, postfix) but no closer than 10 s apart, and an end line
  (``desc: N/N (100%) done in ...``); a short loop writes only its start and end lines.
  With an unknown total, at most one line per 30 s between start and end;
- ``leave=False`` (transient bars such as the per-epoch bar, whose caller logs its own
  summary line): nothing for a loop that ends within 30 s; after that the 10 % lines (or
  one per 30 s), so a long loop still shows it is moving.

``SAMUNET_PROGRESS=0`` turns progress output off (bars and lines; logging is untouched),
``SAMUNET_PROGRESS=1`` gives tqdm bars even when the stream is not a terminal.

Only the standard library and tqdm: this module is imported by every layer of samunet.
"""

from __future__ import annotations

import os
import sys
import time

PROGRESS_ENV = "SAMUNET_PROGRESS"
STEP_FRACTION = 0.1  # one line per 10 % of a loop with a known total ...
STEP_MIN_INTERVAL_S = 10.0  # ... but not closer than this: a short loop gets its start and end lines only
MIN_INTERVAL_S = 30.0  # unknown total: at most one line per this many seconds
TRANSIENT_AFTER_S = 30.0  # leave=False: silent for loops shorter than this

_OFF = ("0", "false", "no", "off")
_ON = ("1", "true", "yes", "on")


def progress_mode(stream=None) -> str:
    """``"bar"``, ``"lines"`` or ``"off"`` for ``stream`` (default stderr) and ``SAMUNET_PROGRESS``."""
    value = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if value in _OFF:
        return "off"
    if value in _ON:
        return "bar"
    return "bar" if _isatty(sys.stderr if stream is None else stream) else "lines"


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def progress(iterable=None, total=None, desc: str = "", unit: str = "it", leave: bool = True,
             disable: bool | None = False, file=None, **kwargs):
    """A tqdm bar on a terminal, a :class:`PlainProgress` otherwise (see the module docstring).

    Same arguments as ``tqdm`` (other keyword arguments go to tqdm only); ``disable=True``
    gives a silent object that still iterates. ``disable=None`` (tqdm's "off when not a
    terminal") is treated like ``False``: the choice between bar and lines is made here."""
    stream = sys.stderr if file is None else file
    mode = "off" if disable else progress_mode(stream)
    if mode == "bar":
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=stream, **kwargs)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, leave=leave, file=stream,
                         silent=mode == "off")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class PlainProgress:
    """The part of tqdm's interface samunet uses, writing a few whole lines (or nothing)."""

    def __init__(self, iterable=None, total=None, desc: str = "", unit: str = "it", leave: bool = True,
                 file=None, silent: bool = False, step_fraction: float = STEP_FRACTION,
                 step_min_interval: float = STEP_MIN_INTERVAL_S, min_interval: float = MIN_INTERVAL_S,
                 transient_after: float = TRANSIENT_AFTER_S):
        if total is None and iterable is not None:
            try:
                total = len(iterable)
            except (TypeError, AttributeError):
                total = None
        self.iterable = iterable
        self.total = total
        self.desc = desc or ""
        self.unit = unit
        self.leave = leave
        self.file = file
        self.silent = silent
        self.step_fraction = step_fraction
        self.step_min_interval = step_min_interval
        self.min_interval = min_interval
        self.transient_after = transient_after
        self.n = 0
        self.postfix = ""
        self.disable = silent
        self.start_t = self._last_t = time.monotonic()
        self._last_step = 0  # index of the last 10 % step written
        self._closed = False
        if self.leave:
            self._emit(f"0/{self.total:g}" if self.total is not None else "started")

    # ---- tqdm interface --------------------------------------------------------------
    def __iter__(self):
        if self.iterable is None:
            raise TypeError("PlainProgress without an iterable is not iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        if self.total is not None:
            return int(self.total)
        return len(self.iterable)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def update(self, n: int | float = 1) -> None:
        self.n += n
        if self.silent or self._closed:
            return
        now = time.monotonic()
        elapsed = now - self.start_t
        if not self.leave and elapsed < self.transient_after:
            return
        if self.total is not None:
            if self.n >= self.total:
                return  # close() writes the 100 % line
            step = int(self.n / self.total / self.step_fraction + 1e-9)
            if step > self._last_step and now - self._last_t >= self.step_min_interval:
                self._last_step = step
                self._last_t = now
                self._emit(self._status(now))
        elif now - self._last_t >= self.min_interval:
            self._last_t = now
            self._emit(self._status(now))

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def set_description_str(self, desc: str | None = None, refresh: bool = True) -> None:
        self.set_description(desc)

    def refresh(self, *args, **kwargs) -> None:
        pass

    def clear(self, *args, **kwargs) -> None:
        pass

    def write(self, s: str, file=None, end: str = "\n", nolock: bool = False) -> None:
        """Like ``tqdm.write``: one message line (also when progress output is off)."""
        stream = file or self.file or sys.stderr
        stream.write(f"{s}{end}")
        stream.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.silent:
            return
        now = time.monotonic()
        elapsed = now - self.start_t
        if not self.leave and elapsed < self.transient_after:
            return
        if self.total is not None and self.n >= self.total:
            self._emit(f"{self._count()} done in {_duration(elapsed)}{self._rate(elapsed)}{self._postfix()}")
        elif self.total is not None:
            self._emit(f"stopped at {self._count()} after {_duration(elapsed)}{self._postfix()}")
        else:
            self._emit(f"{self.n:g} {self.unit} done in {_duration(elapsed)}{self._rate(elapsed)}{self._postfix()}")

    # ---- lines -----------------------------------------------------------------------
    def _count(self) -> str:
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total > 0 else ""
        return f"{self.n:g}/{self.total:g}{pct}"

    def _rate(self, elapsed: float) -> str:
        if self.n <= 0 or elapsed <= 0:
            return ""
        rate = self.n / elapsed
        return f", {rate:.2f} {self.unit}/s" if rate >= 1 else f", {1 / rate:.2f} s/{self.unit}"

    def _postfix(self) -> str:
        return f", {self.postfix}" if self.postfix else ""

    def _status(self, now: float) -> str:
        elapsed = now - self.start_t
        if self.total is not None:
            left = elapsed * (self.total - self.n) / self.n if self.n else 0.0
            return (f"{self._count()} after {_duration(elapsed)}, ~{_duration(left)} left"
                    f"{self._rate(elapsed)}{self._postfix()}")
        return f"{self.n:g} {self.unit} after {_duration(elapsed)}{self._rate(elapsed)}{self._postfix()}"

    def _emit(self, text: str) -> None:
        if self.silent:
            return
        stream = self.file or sys.stderr
        try:
            stream.write(f"{self.desc}: {text}\n" if self.desc else f"{text}\n")
            stream.flush()
        except (ValueError, OSError):  # a closed or broken stream must not stop the work
            pass
