"""Per-case part of the integrity check: read one case's files and compare their grids.

:func:`check_case` reads the channel files and the label of one case and returns its
problems (unreadable, empty, corrupt or truncated files, NaN/Inf voxels, constant
images, channel numbering and count, shape and geometry mismatches) together with what
the dataset-level checks in :mod:`samunet.experiment_planning.integrity` need (label
values, dimensionality). :func:`check_cases` runs it over many cases, in worker
processes if asked.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from samunet.imageio import ImageReadError, reader_writer_for

# relative tolerance for geometry comparisons: |a - b| <= GEOMETRY_TOLERANCE * max(1, |a|, |b|)
GEOMETRY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Problem:
    file: str  # relative to the raw folder where possible
    message: str  # what is wrong and how to fix it
    case: str | None = None

    def format(self) -> str:
        return f"{self.file}: {self.message}"


def rel_path(path: str | Path, root: Path) -> str:
    """``path`` relative to ``root`` (POSIX), or unchanged when outside it."""
    p = Path(path)
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def strip_path(message: str, path: str | Path) -> str:
    """Reader errors start with ``"<path>: "``; drop it, the Problem names the file."""
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _fmt(values: Iterable[float]) -> str:
    vals = [float(v) for v in values]
    return "(" + ", ".join(f"{v:.6g}" for v in vals) + ("," if len(vals) == 1 else "") + ")"


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        return False
    scale = np.maximum(1.0, np.maximum(np.abs(a), np.abs(b)))
    return bool(np.all(np.abs(a - b) <= GEOMETRY_TOLERANCE * scale))


@dataclass(frozen=True)
class CaseTask:
    raw_folder: str
    case: str
    channel_files: tuple[tuple[int, str], ...]  # (channel index, absolute path), sorted
    label_file: str | None
    file_ending: str
    overwrite_io: str | None
    channel_names: tuple[str, ...]


@dataclass
class CaseResult:
    case: str
    problems: list[Problem]
    label_values: set[int] | None  # None when the label was not read
    label_file: str | None  # relative
    dimension: int | None  # of the image (2 or 3), None when unreadable


def _geometry(props: dict) -> dict:
    """Dimension plus whatever geometry the reader provides (natural images: none)."""
    if "sitk_geometry" in props:
        g = props["sitk_geometry"]
        return {
            "dimension": int(g["dimension"]),
            "spacing": list(g["spacing"]),
            "origin": list(g["origin"]),
            "direction": list(g["direction"]),
        }
    if "nibabel_affine" in props:
        # split the affine like SimpleITK does: spacing (x, y, z) = column norms, direction, origin
        affine = np.asarray(props["nibabel_affine"], dtype=float)
        m = affine[:3, :3]
        norms = np.linalg.norm(m, axis=0)
        safe = np.where(norms > 0, norms, 1.0)
        return {
            "dimension": int(props["nibabel_ndim"]),
            "spacing": norms.tolist(),
            "origin": affine[:3, 3].tolist(),
            "direction": (m / safe).ravel().tolist(),
        }
    return {"dimension": 2}


def _compare_grids(
    what_file: str, what: dict, ref_file: str, ref: dict, fix: str, case: str
) -> list[Problem]:
    """Problems of ``what`` (shape + geometry) relative to the reference grid."""
    if what["dimension"] != ref["dimension"]:
        return [
            Problem(
                what_file,
                f"is {what['dimension']}D but {ref_file} is {ref['dimension']}D; {fix}",
                case,
            )
        ]
    if tuple(what["shape"]) != tuple(ref["shape"]):
        return [
            Problem(
                what_file,
                f"array shape {tuple(what['shape'])} differs from {ref_file} {tuple(ref['shape'])}; {fix}",
                case,
            )
        ]
    problems = []
    for key in ("spacing", "origin", "direction"):
        if key in what and key in ref and not _close(what[key], ref[key]):
            problems.append(
                Problem(what_file, f"{key} {_fmt(what[key])} differs from {ref_file} {_fmt(ref[key])}; {fix}", case)
            )
    return problems


def _gzip_error(path: str | Path) -> str | None:
    """SimpleITK reads a truncated ``.gz`` without complaint (zero-filling the rest): check the stream."""
    if not str(path).lower().endswith(".gz") or not Path(path).is_file() or Path(path).stat().st_size == 0:
        return None
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 22):
                pass
    except (EOFError, OSError, zlib.error) as e:
        return (
            f"gzip stream is truncated or corrupt ({e}); readers may silently fill the missing part with zeros. "
            "Re-export or re-copy the file."
        )
    return None


def _nifti_nonfinite(path: str | Path) -> int:
    """Number of NaN/Inf voxels of a floating-point NIfTI, read with nibabel.

    ITK's NIfTI reader (SimpleITK 2.5 / ITK 5.4) turns NaN and Inf into 0 without a
    word, so the SimpleITK reader cannot see them; integer files cannot hold them.
    """
    import nibabel as nib

    try:
        img = nib.load(str(path))
        if not np.issubdtype(img.header.get_data_dtype(), np.floating):
            return 0
        data = np.asanyarray(img.dataobj)
    except Exception:  # the actual reader reports unreadable files
        return 0
    return int(data.size - np.count_nonzero(np.isfinite(data)))


def _read(io, path: str, seg: bool):
    """Read one file; raise ImageReadError (also for a damaged gzip stream or NaN/Inf in NIfTI).

    The reader goes first: it refuses an image beyond the memory budget from its header
    alone, before the gzip stream is decompressed.
    """
    out = io.read_seg(path) if seg else io.read_images([path])
    err = _gzip_error(path)
    if err:
        raise ImageReadError(f"{path}: {err}")
    if out[1].get("io") == "SimpleITKIO" and str(path).lower().endswith((".nii", ".nii.gz")):
        n = _nifti_nonfinite(path)
        if n:
            what = "label map" if seg else "image"
            raise ImageReadError(
                f"{path}: {n} voxels of the {what} are NaN or Inf (SimpleITK would silently read them as 0). "
                "Replace them (e.g. with the image minimum) before using samunet."
            )
    return out


def _constant_value(data: np.ndarray) -> float | None:
    """The single value of ``data`` if every element equals it, else None."""
    if data.size == 0:
        return None
    first = data.flat[0]
    return float(first) if bool(np.all(data == first)) else None


def check_case(task: CaseTask) -> CaseResult:
    """Read one case and return its problems. Top-level so that spawned workers can use it."""
    root = Path(task.raw_folder)
    io = reader_writer_for(task.file_ending, task.overwrite_io)
    case = task.case
    n_expected = len(task.channel_names)
    problems: list[Problem] = []

    def rel(p):
        return rel_path(p, root)

    def image_path(index: int) -> str:
        return f"imagesTr/{case}_{index:04d}{task.file_ending}"

    files = dict(task.channel_files)
    for idx in sorted(i for i in files if i >= n_expected):
        problems.append(
            Problem(
                rel(files[idx]),
                f"extra channel file: channel_names lists {n_expected} channel(s) "
                f"({', '.join(task.channel_names)}), so indices stop at _{n_expected - 1:04d}; "
                "remove the file or add the channel to channel_names",
                case,
            )
        )
    valid = {i: f for i, f in files.items() if i < n_expected}
    gaps = [i for i in range(max(valid) + 1 if valid else 1) if i not in valid]
    for idx in gaps:
        problems.append(
            Problem(
                image_path(idx),
                f"missing channel file of case {case} (channel {idx} "
                f"'{task.channel_names[idx]}'); add it or fix the numbering of the case's files",
                case,
            )
        )

    # read each channel file on its own: per-file errors and per-file channel counts
    grids: list[tuple[str, dict, int]] = []  # (relative file, grid, number of channels)
    unreadable = False
    for idx in sorted(valid):
        f = valid[idx]
        try:
            data, props = _read(io, f, seg=False)
        except ImageReadError as e:
            problems.append(Problem(rel(f), strip_path(str(e), f), case))
            unreadable = True
            continue
        grid = _geometry(props)
        grid["shape"] = tuple(int(s) for s in data.shape[1:])
        grids.append((rel(f), grid, int(data.shape[0])))
        value = _constant_value(data)
        if value is not None:
            problems.append(
                Problem(
                    rel(f),
                    f"every voxel is {value:g} (a constant image): there is nothing to learn from or segment; "
                    "check that the right file was exported (not a blank or empty series), or remove the case",
                    case,
                )
            )
        del data

    if grids and not unreadable and not gaps:
        total = sum(n for _, _, n in grids)
        if total < n_expected:
            last = max(valid)
            missing = [image_path(i) for i in range(last + 1, last + 1 + n_expected - total)]
            problems.append(
                Problem(
                    missing[0],
                    f"missing: channel_names lists {n_expected} channel(s) ({', '.join(task.channel_names)}) "
                    f"but case {case} has {total} (in {', '.join(g[0] for g in grids)}); "
                    f"add {', '.join(Path(m).name for m in missing)}",
                    case,
                )
            )
        elif total > n_expected:
            multi = [g for g in grids if g[2] > 1]
            culprit = multi[0] if multi else grids[-1]
            problems.append(
                Problem(
                    culprit[0],
                    f"case {case} has {total} channels ({culprit[0]} holds {culprit[2]}) but channel_names "
                    f"lists {n_expected} ({', '.join(task.channel_names)}); list every channel in channel_names "
                    "(an RGB file counts as 3, e.g. R, G, B) or convert the file to one channel",
                    case,
                )
            )

    ref_file, ref = (grids[0][0], grids[0][1]) if grids else (None, None)
    for f, g, _ in grids[1:]:
        problems.extend(_compare_grids(f, g, ref_file, ref, f"resample the channel onto the grid of {ref_file}", case))

    values: set[int] | None = None
    label_rel = rel(task.label_file) if task.label_file else None
    if task.label_file is not None:
        try:
            seg, props = _read(io, task.label_file, seg=True)
        except ImageReadError as e:
            problems.append(Problem(label_rel, strip_path(str(e), task.label_file), case))
        else:
            values = {int(v) for v in np.unique(seg)}
            grid = _geometry(props)
            grid["shape"] = tuple(int(s) for s in seg.shape[1:])
            del seg
            if ref is not None:
                problems.extend(
                    _compare_grids(label_rel, grid, ref_file, ref, "resample the label onto the image grid", case)
                )
    return CaseResult(case, problems, values, label_rel, ref["dimension"] if ref else None)


def check_cases(tasks: list[CaseTask], num_processes: int) -> list[CaseResult]:
    """:func:`check_case` for every task, in order; ``num_processes > 1`` uses spawned workers."""
    from samunet.utilities.resources import map_with_progress

    return map_with_progress(check_case, tasks, num_processes, "checking cases")
