"""Atomic writers: every output goes to a temporary name in the same folder, then
is renamed, so a killed process never leaves a half-written file under the final name."""

from __future__ import annotations

import glob
import json
import os
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` on success.

    ``suffix`` is kept at the end of the temporary name because some writers
    (SimpleITK, numpy) choose the format from the file ending.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def remove_stale_temp_files(final: str | os.PathLike) -> int:
    """Delete the temporary files :func:`atomic_path` left beside ``final`` when a process was
    killed mid-write (hidden ``.NAME.*.tmp*`` files, never read). Call it only where no other
    process can be writing ``final`` at the same time. Returns how many were removed."""
    final = Path(final)
    removed = 0
    if final.parent.is_dir():
        for p in final.parent.glob(f".{glob.escape(final.name)}.*.tmp*"):
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def save_json(obj: Any, path: str | os.PathLike, indent: int = 2) -> None:
    """Write JSON atomically (numpy scalars and arrays are converted)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent, default=_json_default, ensure_ascii=False)
            f.write("\n")


def load_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serialisable")


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` through a temporary name."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


class CorruptFileError(ValueError):
    """A file on disk is truncated or damaged; the message names it and the fix."""


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` written by :func:`save_npz` (no pickle).

    A truncated or damaged file (zip directory missing, CRC mismatch) raises
    :class:`CorruptFileError` instead of being read.
    """
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise CorruptFileError(
                f"{path}: holds pickled Python objects, which samunet never loads (unpickling can run code). "
                "Delete it and rerun the command that wrote it."
            ) from None
        raise CorruptFileError(
            f"{path}: is truncated or corrupt (ValueError: {e}). Delete it and rerun the command that wrote it "
            "(samunet_plan_and_preprocess redoes missing cases)."
        ) from None
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
        raise CorruptFileError(
            f"{path}: is truncated or corrupt ({type(e).__name__}: {e}). Delete it and rerun the command that "
            "wrote it (samunet_plan_and_preprocess redoes missing cases)."
        ) from None


def npz_is_complete(path: str | os.PathLike, required: tuple[str, ...] = ()) -> bool:
    """Cheap check that an ``.npz`` was written completely: its zip directory (at the end of the
    file) is readable and lists ``required`` arrays. Does not decompress the arrays."""
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError, EOFError):
        return False
    return all(f"{name}.npy" in names for name in required)
