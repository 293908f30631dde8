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
* every file is readable (not empty, not corrupt, no NaN/Inf; ``.gz`` streams complete;
  within the memory budget) and no image is constant;
* channels and label share shape and, for SimpleITK/nibabel files, spacing, origin
  and direction (natural 2D images: shape only);
* all cases have the same dimensionality (a 3D image with a single slice is 3D);
* label values are declared in ``labels``; at least one label map has foreground;
* ``domains`` (if present) names only existing cases and assigns *every* case: a case
  without a domain is an error, because domain-wise folds need every case assigned;
* ``groups`` (if present) names only existing cases (a case not listed is its own group).

Warnings (reported, but the dataset still passes): a group with cases in several domains
(a domain fold would train on some of its cases and test on others), and a 2D dataset
without ``groups`` whose case names look like ``<patient>_<slice>`` slices of fewer
patients (splits by case would put slices of one patient in train and val).

This module holds the dataset-level checks (dataset.json, file lists, case ids, labels,
domains); reading each case and comparing its grids is in
:mod:`samunet.experiment_planning.case_integrity`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from samunet.dataset_conversion.dataset_json import (
    DatasetJsonError,
    all_label_values,
    ignore_label,
    is_safe_case_id,
    load_dataset_json,
)
# per-case reading and geometry checks live in case_integrity; re-exported here
from samunet.experiment_planning.case_integrity import (
    GEOMETRY_TOLERANCE,
    CaseTask,
    Problem,
    check_cases,
    rel_path as _rel,
    strip_path as _strip_path,
)
from samunet.experiment_planning.group_integrity import groups_across_domains, slices_without_groups
from samunet.imageio import reader_writer_for

logger = logging.getLogger(__name__)

# files created by operating systems / file managers; never worth a complaint
IGNORED_FILE_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", ".directory"})
_MAX_LISTED = 10

__all__ = [
    "DatasetIntegrityError", "GEOMETRY_TOLERANCE", "IGNORED_FILE_NAMES", "IntegrityReport", "Problem",
    "check_dataset_integrity", "format_error", "main", "verify_dataset_integrity",
]


class DatasetIntegrityError(ValueError):
    """The raw dataset has problems; the message lists all of them."""

    def __init__(self, message: str, report: "IntegrityReport | None" = None):
        super().__init__(message)
        self.report = report


@dataclass
class IntegrityReport:
    raw_folder: Path
    problems: list[Problem] = field(default_factory=list)
    num_cases: int = 0
    warnings: list[Problem] = field(default_factory=list)  # worth reading, but the dataset passes

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        return "\n".join(p.format() for p in self.problems)

    def format_warnings(self) -> str:
        return "\n".join(f"warning: {w.format()}" for w in self.warnings)


# --------------------------------------------------------------------------- helpers


def _list_names(names: Sequence[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


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


def _other_file_ending(folder: Path, file_ending: str) -> str | None:
    """The one supported ending that every file in ``folder`` has, when it is not ``file_ending``."""
    from samunet.imageio import READERS_WRITERS

    endings = sorted({e for cls in READERS_WRITERS.values() for e in cls.supported_file_endings}, key=len, reverse=True)
    names = [p.name for p in folder.iterdir() if p.is_file() and p.name not in IGNORED_FILE_NAMES]
    if not names or any(n.endswith(file_ending) for n in names):
        return None
    found = {next((e for e in endings if n.lower().endswith(e)), None) for n in names}
    return found.pop() if len(found) == 1 and None not in found else None


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
    other = _other_file_ending(images_dir, fe)
    if other:
        problems.append(
            Problem("dataset.json", f"file_ending is {fe!r} but every file in imagesTr ends in {other!r}; "
                                    f"set file_ending to {other!r}")
        )
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

    if "groups" in dj:
        unknown = sorted(set(dj["groups"]) - set(image_cases))
        if unknown:
            problems.append(
                Problem(
                    "dataset.json",
                    f"groups names {len(unknown)} case(s) not in imagesTr: {_list_names(unknown)}; fix the case "
                    "names (image file name without _0000 and the ending) or remove them from groups",
                )
            )
        report.warnings.extend(groups_across_domains(dj["groups"], dj.get("domains") or {}))

    channel_names = tuple(str(dj["channel_names"][k]) for k in sorted(dj["channel_names"], key=int))
    tasks = [
        CaseTask(
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
    results = check_cases(tasks, max(1, int(num_processes)))
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

    declared = set(all_label_values(dj))  # the ignore label may appear in label maps
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
    unannotated = {0, ignore_label(dj)}
    if read_labels and all(r.label_values <= unannotated for r in read_labels):
        problems.append(
            Problem(
                "labelsTr",
                f"every label map ({len(read_labels)} read) is empty (background 0 only); there is nothing to "
                "learn: check that the right masks were copied and that foreground is stored as 1, 2, ...",
            )
        )

    if dims and dims.most_common(1)[0][0] == 2 and "groups" not in dj:
        w = slices_without_groups(sorted(image_cases))
        if w:
            report.warnings.append(w)

    for w in report.warnings:
        logger.warning("%s", w.format())
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
    if report.warnings:
        print(report.format_warnings())
    if report.ok:
        print(f"dataset OK: {report.num_cases} cases")
        return 0
    print(format_error(report))
    return 1


if __name__ == "__main__":
    sys.exit(main())
