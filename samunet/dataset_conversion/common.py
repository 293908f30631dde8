"""Helpers shared by the dataset converters.

* :class:`ConversionError` -- every problem a converter detects in its input;
  the message names the file(s) and the fix.
* :func:`sanitise_case_id` / :func:`assign_case_ids` -- safe, unique case ids.
* :func:`read_domains_csv` / :func:`read_groups_csv` / :func:`group_from_pattern` -- the
  optional ``domains`` and ``groups`` of dataset.json from a CSV or the file names.
* :func:`target_dataset_folder` -- refuse to clobber an existing dataset.
* :func:`staged_dataset_folder` -- build into a hidden temporary folder beside the
  target and rename it at the end, so a failed conversion leaves nothing behind.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from samunet.dataset_conversion.dataset_json import DatasetJsonError, is_safe_case_id
from samunet.imageio.base import ImageReadError
from samunet.paths import raw_root
from samunet.utilities.dataset_name import dataset_folder_name

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-.]")


class ConversionError(ValueError):
    """The input cannot be converted; the message names the file(s) and the fix."""


def sanitise_case_id(text: str) -> str:
    """Replace characters outside ``[A-Za-z0-9_-.]`` by ``_`` and make the id safe.

    Runs of dots become ``_`` (no ``..``) and leading ``_ - .`` are dropped, since a
    case id must start with a letter or digit.
    """
    s = _UNSAFE.sub("_", str(text))
    s = re.sub(r"\.{2,}", "_", s)
    s = s.lstrip("_-.")
    if not s or not is_safe_case_id(s):
        raise ConversionError(
            f"cannot make a safe case id from {text!r}: rename the file so its name contains letters or digits."
        )
    return s


def assign_case_ids(raw_ids: Iterable[str], what: Callable[[str], str] | None = None) -> dict[str, str]:
    """Map each raw id to a sanitised one; error if two raw ids collapse to the same id.

    ``what(raw)`` describes a raw id in the error (e.g. its file path).
    """
    raw_ids = list(raw_ids)
    out: dict[str, str] = {}
    by_id: dict[str, list[str]] = {}
    for raw in raw_ids:
        cid = sanitise_case_id(raw)
        out[raw] = cid
        by_id.setdefault(cid, []).append(raw)
    clashes = {cid: raws for cid, raws in by_id.items() if len(raws) > 1}
    if clashes:
        describe = what or (lambda r: repr(r))
        lines = [f"  {cid}: " + ", ".join(describe(r) for r in raws) for cid, raws in sorted(clashes.items())]
        raise ConversionError(
            "these inputs give the same case id after replacing unsafe characters with '_':\n"
            + "\n".join(lines)
            + "\nRename the files so their names differ in letters or digits."
        )
    changed = {r: c for r, c in out.items() if r != c}
    if changed:
        sample = ", ".join(f"{r!r} -> {c!r}" for r, c in list(changed.items())[:5])
        logger.info("%d case id(s) sanitised, e.g. %s", len(changed), sample)
    return out


def target_dataset_folder(dataset_id: int, name: str, overwrite: bool = False) -> Path:
    """Return ``SAMUNET_raw/DatasetXXX_Name``, refusing if it (or the ID) is taken.

    With ``overwrite`` an existing folder of that exact name will be replaced (by
    :func:`staged_dataset_folder`); other folders are never touched. A different
    folder with the same ID is left in place and a warning says so, because
    resolving the dataset by ID alone is then ambiguous.
    """
    try:
        folder_name = dataset_folder_name(dataset_id, name)
    except ValueError as e:
        raise ConversionError(f"{e}.") from None
    root = raw_root()
    target = root / folder_name
    prefix = f"Dataset{int(dataset_id):03d}_"
    others = sorted(
        p for p in (root.iterdir() if root.is_dir() else [])
        if p.name.startswith(prefix) and p.name != folder_name
    )
    if not overwrite:
        if target.exists():
            raise ConversionError(
                f"{target} already exists. Pass --overwrite (overwrite=True) to replace it, "
                "or choose another dataset ID/name."
            )
        if others:
            raise ConversionError(
                f"dataset ID {int(dataset_id)} is already used by {', '.join(str(p) for p in others)}. "
                "Choose another ID, remove that folder, or pass --overwrite to write anyway."
            )
    elif others:
        logger.warning(
            "dataset ID %d is also used by %s; it is left untouched, but selecting the dataset by ID is now "
            "ambiguous. Remove it or use the full name %s.",
            int(dataset_id), ", ".join(str(p) for p in others), folder_name,
        )
    return target


@contextmanager
def staged_dataset_folder(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty hidden temporary folder beside ``target``; on success rename it to ``target``.

    On any exception the temporary folder is removed and ``target`` is left as it was.
    With ``overwrite`` an existing ``target`` is replaced (moved aside first, deleted last).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".converting", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            if not overwrite:
                raise ConversionError(f"{target} appeared while converting; pass --overwrite to replace it.")
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / target.name)
        try:
            os.replace(tmp, target)
        except BaseException:
            if old is not None:  # put the previous dataset back
                os.replace(old / target.name, target)
                shutil.rmtree(old, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _read_case_csv(csv_path: str | os.PathLike, case_ids: dict[str, str | None], column: str) -> dict[str, str]:
    """Read ``case,<column>`` rows (header optional) and return ``{case_id: value}``.

    ``case_ids`` maps names as they may appear in the CSV (original names, sanitised ids,
    source file names) to case ids; ``None`` marks a name that fits several cases. Every
    listed case must exist and every case must be listed."""
    path = Path(csv_path)
    if not path.is_file():
        raise ConversionError(f"{path}: {column}s CSV not found.")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]
    if rows and rows[0][0].strip() not in case_ids and rows[0][0].strip().lower() in {
        "case", "case_id", "caseid", "id", "subject", "name", "identifier", "file", "filename", "source",
    }:
        rows = rows[1:]
    values: dict[str, str] = {}
    unknown: list[str] = []
    ambiguous: list[str] = []
    for row in rows:
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise ConversionError(f"{path}: row {row!r} must have two non-empty columns: case,{column}.")
        key, value = row[0].strip(), row[1].strip()
        if key not in case_ids:
            unknown.append(key)
            continue
        cid = case_ids[key]
        if cid is None:
            ambiguous.append(key)
            continue
        if cid in values and values[cid] != value:
            raise ConversionError(f"{path}: case {key!r} is given two {column}s, {values[cid]!r} and {value!r}.")
        values[cid] = value
    if ambiguous:
        raise ConversionError(
            f"{path}: these names fit several cases: {', '.join(sorted(ambiguous))}. Use the case id "
            "(e.g. as printed in dataset.json) or the file's path relative to the input folder instead."
        )
    if unknown:
        raise ConversionError(
            f"{path}: these cases are not in the dataset: {', '.join(sorted(unknown))}. "
            "Fix their names or remove those rows."
        )
    all_ids = sorted({c for c in case_ids.values() if c is not None})
    missing = [c for c in all_ids if c not in values]
    if missing:
        shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise ConversionError(
            f"{path}: these cases have no {column}: {shown}. Add a 'case,{column}' row for each"
            + (" (a case that is a patient of its own gets its own name as group)." if column == "group" else ".")
        )
    return values


def read_domains_csv(csv_path: str | os.PathLike, case_ids: dict[str, str | None]) -> dict[str, str]:
    """Read ``case,domain`` rows (header optional) and return ``{case_id: domain}``; see :func:`_read_case_csv`."""
    return _read_case_csv(csv_path, case_ids, "domain")


def read_groups_csv(csv_path: str | os.PathLike, case_ids: dict[str, str | None]) -> dict[str, str]:
    """Read ``case,group`` rows (group = patient or video sequence; header optional) and
    return ``{case_id: group}``; see :func:`_read_case_csv`."""
    return _read_case_csv(csv_path, case_ids, "group")


def case_name_lookup(names: Iterable[tuple[str, str]]) -> dict[str, str | None]:
    """``{name: case_id}`` from ``(name, case_id)`` pairs; a name given for two cases maps to ``None``."""
    out: dict[str, str | None] = {}
    for name, cid in names:
        out[name] = cid if out.get(name, cid) == cid else None
    return out


def compile_group_pattern(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ConversionError(f"--group_pattern '{pattern}' is not a valid regular expression ({e}).") from None


def group_from_pattern(regex: re.Pattern, stem: str, file: str | os.PathLike) -> str:
    """The patient/sequence part of a source file stem: ``regex``'s first capture group, or the
    whole match when it has none (``re.search``, so anchor with ``^`` where needed)."""
    m = regex.search(stem)
    value = None
    if m:
        value = m.group(1) if regex.groups else m.group(0)
    if not value:
        raise ConversionError(
            f"{file}: --group_pattern '{regex.pattern}' does not match its name {stem!r}"
            + (" (the capture group is empty)" if m else "")
            + ". Fix the pattern, e.g. '^(\\d+)_' for patient_slice names like 00_07, or use --groups CSV."
        )
    return value


def list_files(folder: Path, endings: Sequence[str]) -> list[Path]:
    """Non-hidden files directly in ``folder`` whose lower-case name ends with one of ``endings``."""
    out = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        if any(p.name.lower().endswith(e) for e in endings):
            out.append(p)
    return out


def strip_ending(path: Path, endings: Sequence[str]) -> str:
    name = path.name
    low = name.lower()
    for e in sorted(endings, key=len, reverse=True):
        if low.endswith(e):
            return name[: -len(e)]
    return path.stem


def run_cli(func: Callable[[], object]) -> object:
    """Run a converter from a CLI: log to stderr, turn known errors into ``SystemExit``."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        return func()
    except (ConversionError, DatasetJsonError, ImageReadError) as e:
        raise SystemExit(f"error: {e}") from None
