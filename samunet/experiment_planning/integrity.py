"""Check a raw dataset before planning: report every problem at once.

:func:`check_dataset_integrity` returns an :class:`IntegrityReport` listing each
problem with the offending file (relative to the raw folder), what is wrong and how
to fix it. :func:`verify_dataset_integrity` raises :class:`DatasetIntegrityError`
with the whole report when anything is wrong.

Checked:

* ``dataset.json`` loads and validates (if not, nothing else is checked);
* ``imagesTr`` / ``labelsTr`` exist; no unexpected files in them (``.DS_Store`` and
  similar OS clutter are ignored silently);
* case ids are safe file names; every case has a label and every label has images;
  ``numTraining`` equals the number of cases;
* channel files: ``CASE_0000`` ... without gaps, no index beyond ``channel_names``, and
  the total number of channels read (an RGB file counts as three) equals
  ``len(channel_names)``;
* every file is readable (not empty, not corrupt, no NaN/Inf; ``.gz`` streams complete);
* channels and label share shape and, for SimpleITK/nibabel files, spacing, origin
  and direction (natural 2D images: shape only);
* all cases have the same dimensionality (a 3D image with a single slice is 3D);
* label values are declared in ``labels``; at least one label map has foreground;
* ``domains`` (if present) names only existing cases and assigns *every* case: a case
  without a domain is an error, because domain-wise folds need every case assigned.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import multiprocessing
import sys
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from samunet.dataset_conversion.dataset_json import (
    DatasetJsonError,
    is_safe_case_id,
    label_values,
    load_dataset_json,
)
from samunet.imageio import ImageReadError, reader_writer_for

logger = logging.getLogger(__name__)

# files created by operating systems / file managers; never worth a complaint
IGNORED_FILE_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", ".directory"})
# relative tolerance for geometry comparisons: |a - b| <= GEOMETRY_TOLERANCE * max(1, |a|, |b|)
GEOMETRY_TOLERANCE = 1e-4
_MAX_LISTED = 10


class DatasetIntegrityError(ValueError):
    """The raw dataset has problems; the message lists all of them."""

    def __init__(self, message: str, report: "IntegrityReport | None" = None):
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class Problem:
    file: str  # relative to the raw folder where possible
    message: str  # what is wrong and how to fix it
    case: str | None = None

    def format(self) -> str:
        return f"{self.file}: {self.message}"


@dataclass
class IntegrityReport:
    raw_folder: Path
    problems: list[Problem] = field(default_factory=list)
    num_cases: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        return "\n".join(p.format() for p in self.problems)


# --------------------------------------------------------------------------- helpers


def _rel(path: str | Path, root: Path) -> str:
    p = Path(path)
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def _fmt(values: Iterable[float]) -> str:
    vals = [float(v) for v in values]
    return "(" + ", ".join(f"{v:.6g}" for v in vals) + ("," if len(vals) == 1 else "") + ")"


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        return False
    scale = np.maximum(1.0, np.maximum(np.abs(a), np.abs(b)))
    return bool(np.all(np.abs(a - b) <= GEOMETRY_TOLERANCE * scale))


def _list_names(names: Sequence[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def _strip_path(message: str, path: str | Path) -> str:
    """Reader errors start with ``"<path>: "``; drop it, the Problem names the file."""
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


# --------------------------------------------------------------------------- per-case worker


@dataclass(frozen=True)
class _CaseTask:
    raw_folder: str
    case: str
    channel_files: tuple[tuple[int, str], ...]  # (channel index, absolute path), sorted
    label_file: str | None
    file_ending: str
    overwrite_io: str | None
    channel_names: tuple[str, ...]


@dataclass
class _CaseResult:
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
    """Read one file; raise ImageReadError (also for a damaged gzip stream or NaN/Inf in NIfTI)."""
    err = _gzip_error(path)
    if err:
        raise ImageReadError(f"{path}: {err}")
    out = io.read_seg(path) if seg else io.read_images([path])
    if out[1].get("io") == "SimpleITKIO" and str(path).lower().endswith((".nii", ".nii.gz")):
        n = _nifti_nonfinite(path)
        if n:
            what = "label map" if seg else "image"
            raise ImageReadError(
                f"{path}: {n} voxels of the {what} are NaN or Inf (SimpleITK would silently read them as 0). "
                "Replace them (e.g. with the image minimum) before using samunet."
            )
    return out


def _check_case(task: _CaseTask) -> _CaseResult:
    """Read one case and return its problems. Top-level so that spawned workers can use it."""
    root = Path(task.raw_folder)
    io = reader_writer_for(task.file_ending, task.overwrite_io)
    case = task.case
    n_expected = len(task.channel_names)
    problems: list[Problem] = []

    def rel(p):
        return _rel(p, root)

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
            problems.append(Problem(rel(f), _strip_path(str(e), f), case))
            unreadable = True
            continue
        grid = _geometry(props)
        grid["shape"] = tuple(int(s) for s in data.shape[1:])
        grids.append((rel(f), grid, int(data.shape[0])))
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
            problems.append(Problem(label_rel, _strip_path(str(e), task.label_file), case))
        else:
            values = {int(v) for v in np.unique(seg)}
            grid = _geometry(props)
            grid["shape"] = tuple(int(s) for s in seg.shape[1:])
            del seg
            if ref is not None:
                problems.extend(
                    _compare_grids(label_rel, grid, ref_file, ref, "resample the label onto the image grid", case)
                )
    return _CaseResult(case, problems, values, label_rel, ref["dimension"] if ref else None)


# --------------------------------------------------------------------------- folder scanning


def _scan_images(folder: Path, root: Path, file_ending: str) -> tuple[dict[str, dict[int, str]], list[Problem]]:
    cases: dict[str, dict[int, str]] = {}
    problems: list[Problem] = []
    for p in sorted(folder.iterdir()):
        if p.name in IGNORED_FILE_NAMES:
            continue
        r = _rel(p, root)
        if p.is_dir():
            problems.append(Problem(r, "unexpected folder in imagesTr; move it out of the raw dataset"))
            continue
        if not p.name.endswith(file_ending):
            problems.append(
                Problem(
                    r,
                    f"unexpected file: dataset.json file_ending is {file_ending!r}; remove the file or convert it "
                    f"to CASE_XXXX{file_ending}",
                )
            )
            continue
        stem = p.name[: -len(file_ending)]
        case, sep, idx = stem.rpartition("_")
        if not (sep and case and len(idx) == 4 and idx.isdigit()):
            problems.append(
                Problem(
                    r,
                    f"does not match CASE_XXXX{file_ending} (channel index missing); rename it, e.g. to "
                    f"{stem}_0000{file_ending}",
                )
            )
            continue
        cases.setdefault(case, {})[int(idx)] = str(p)
    return cases, problems


def _scan_labels(folder: Path, root: Path, file_ending: str) -> tuple[dict[str, str], list[Problem]]:
    cases: dict[str, str] = {}
    problems: list[Problem] = []
    for p in sorted(folder.iterdir()):
        if p.name in IGNORED_FILE_NAMES:
            continue
        r = _rel(p, root)
        if p.is_dir():
            problems.append(Problem(r, "unexpected folder in labelsTr; move it out of the raw dataset"))
        elif not p.name.endswith(file_ending):
            problems.append(
                Problem(
                    r,
                    f"unexpected file: dataset.json file_ending is {file_ending!r}; remove the file or convert it "
                    f"to CASE{file_ending}",
                )
            )
        else:
            cases[p.name[: -len(file_ending)]] = str(p)
    return cases, problems


def _run_cases(tasks: list[_CaseTask], num_processes: int) -> list[_CaseResult]:
    from tqdm import tqdm

    bar = dict(total=len(tasks), desc="checking cases", unit="case", disable=None)
    if num_processes > 1 and len(tasks) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(num_processes, len(tasks))) as pool:
            return list(tqdm(pool.imap(_check_case, tasks), **bar))
    return [_check_case(t) for t in tqdm(tasks, **bar)]


# --------------------------------------------------------------------------- public API


def check_dataset_integrity(raw_folder: str | Path, num_processes: int = 1) -> IntegrityReport:
    """Check ``raw_folder`` (a ``DatasetXXX_Name`` folder) and return every problem found."""
    root = Path(raw_folder)
    report = IntegrityReport(root)
    problems = report.problems
    logger.info("checking dataset integrity of %s", root)

    try:
        dj = load_dataset_json(root)
    except DatasetJsonError as e:
        problems.append(Problem("dataset.json", _strip_path(str(e), root / "dataset.json")))
        return report
    fe = dj["file_ending"]
    overwrite = dj.get("overwrite_image_reader_writer")
    try:
        reader_writer_for(fe, overwrite)
    except ValueError as e:
        problems.append(Problem("dataset.json", f"{e}; fix file_ending / overwrite_image_reader_writer"))
        return report

    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        problems.append(Problem("imagesTr", f"folder missing; put the training images (CASE_XXXX{fe}) there"))
    if not labels_dir.is_dir():
        problems.append(Problem("labelsTr", f"folder missing; put the training labels (CASE{fe}) there"))
    if not images_dir.is_dir():
        return report

    image_cases, p = _scan_images(images_dir, root, fe)
    problems.extend(p)
    label_cases: dict[str, str] = {}
    if labels_dir.is_dir():
        label_cases, p = _scan_labels(labels_dir, root, fe)
        problems.extend(p)
    report.num_cases = len(image_cases)

    if not image_cases:
        problems.append(Problem("imagesTr", f"holds no training images; name them CASE_0000{fe}, ..."))

    for case in sorted(set(image_cases) | set(label_cases)):
        if not is_safe_case_id(case):
            first = (
                _rel(image_cases[case][min(image_cases[case])], root) if case in image_cases
                else _rel(label_cases[case], root)
            )
            problems.append(
                Problem(
                    first,
                    f"case id {case!r} is not a safe file name; use only letters, digits, '_', '-' and '.' "
                    "(starting with a letter or digit) and rename the case's image and label files",
                    case,
                )
            )

    for case in sorted(set(label_cases) - set(image_cases)):
        hint = ""
        stem, _, idx = case.rpartition("_")
        if stem in image_cases and len(idx) == 4 and idx.isdigit():
            hint = f" (label files carry no channel index: rename it to {stem}{fe})"
        problems.append(
            Problem(
                _rel(label_cases[case], root),
                f"label without images: imagesTr has no {case}_0000{fe}; add the images or remove the label{hint}",
                case,
            )
        )
    if labels_dir.is_dir():
        for case in sorted(set(image_cases) - set(label_cases)):
            problems.append(
                Problem(
                    f"labelsTr/{case}{fe}",
                    f"missing: case {case} has images but no label; add the label or move the images to imagesTs",
                    case,
                )
            )

    if dj["numTraining"] != len(image_cases):
        problems.append(
            Problem(
                "dataset.json",
                f"numTraining is {dj['numTraining']} but imagesTr holds {len(image_cases)} case(s); "
                f"set numTraining to {len(image_cases)}",
            )
        )

    if "domains" in dj:
        domains = dj["domains"]
        unknown = sorted(set(domains) - set(image_cases))
        if unknown:
            problems.append(
                Problem(
                    "dataset.json",
                    f"domains names {len(unknown)} case(s) not in imagesTr: {_list_names(unknown)}; "
                    "remove them from domains or add their images",
                )
            )
        unassigned = sorted(set(image_cases) - set(domains))
        if unassigned:
            problems.append(
                Problem(
                    "dataset.json",
                    f"domains assigns no domain to {len(unassigned)} case(s): {_list_names(unassigned)}; "
                    "add them to domains (domain-wise folds need every case assigned) or remove domains",
                )
            )

    channel_names = tuple(str(dj["channel_names"][k]) for k in sorted(dj["channel_names"], key=int))
    tasks = [
        _CaseTask(
            raw_folder=str(root),
            case=case,
            channel_files=tuple(sorted(image_cases[case].items())),
            label_file=label_cases.get(case),
            file_ending=fe,
            overwrite_io=overwrite,
            channel_names=channel_names,
        )
        for case in sorted(image_cases)
    ]
    results = _run_cases(tasks, max(1, int(num_processes)))
    for r in results:
        problems.extend(r.problems)

    # dataset-level checks on what the workers saw
    dims = Counter(r.dimension for r in results if r.dimension is not None)
    if len(dims) > 1:
        (majority, count), = dims.most_common(1)
        first_file = {t.case: t.channel_files[0][1] for t in tasks}
        for r in results:
            if r.dimension is not None and r.dimension != majority:
                f = _rel(first_file[r.case], root)
                problems.append(
                    Problem(
                        f,
                        f"is {r.dimension}D but {count} of {sum(dims.values())} cases are {majority}D; "
                        "all cases of a dataset must have the same dimensionality (a single-slice 3D image is "
                        "fine): convert it or move it to a separate dataset",
                        r.case,
                    )
                )

    declared = set(label_values(dj))
    for r in results:
        if r.label_values is None:
            continue
        extra = sorted(r.label_values - declared)
        if extra:
            problems.append(
                Problem(
                    r.label_file,
                    f"contains label value(s) {extra} not declared in dataset.json labels "
                    f"{sorted(declared)}; add them to labels or fix the label map",
                    r.case,
                )
            )
    read_labels = [r for r in results if r.label_values is not None]
    if read_labels and all(r.label_values <= {0} for r in read_labels):
        problems.append(
            Problem(
                "labelsTr",
                f"every label map ({len(read_labels)} read) is empty (background 0 only); there is nothing to "
                "learn: check that the right masks were copied and that foreground is stored as 1, 2, ...",
            )
        )

    if report.ok:
        logger.info("dataset OK: %d cases", report.num_cases)
    else:
        logger.warning("%d integrity problem(s) in %s", len(problems), root)
    return report


def format_error(report: IntegrityReport) -> str:
    n = len(report.problems)
    return (
        f"dataset integrity check of {report.raw_folder} found {n} problem{'s' if n != 1 else ''}:\n"
        + report.format()
        + "\nFix them and re-run samunet_check_dataset. (--skip_integrity_check bypasses this check, but it is "
        "unsafe: preprocessing may crash or silently train on wrong data.)"
    )


def verify_dataset_integrity(raw_folder: str | Path, num_processes: int = 1) -> IntegrityReport:
    """Run :func:`check_dataset_integrity`; raise :class:`DatasetIntegrityError` unless it is OK."""
    report = check_dataset_integrity(raw_folder, num_processes)
    if not report.ok:
        raise DatasetIntegrityError(format_error(report), report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="samunet_check_dataset",
        description="Check a raw dataset (dataset.json, file names, readability, geometry, labels) and list "
        "every problem.",
    )
    parser.add_argument("-d", "--dataset", required=True, help="dataset ID (501) or name (Dataset501_Prostate)")
    parser.add_argument("-np", "--num_processes", type=int, default=1, help="processes reading cases (default 1)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")

    from samunet.utilities.dataset_name import raw_dataset_folder

    try:
        folder = raw_dataset_folder(args.dataset)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = check_dataset_integrity(folder, args.num_processes)
    if report.ok:
        print(f"dataset OK: {report.num_cases} cases")
        return 0
    print(format_error(report))
    return 1


if __name__ == "__main__":
    sys.exit(main())
