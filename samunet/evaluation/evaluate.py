"""Evaluate a folder of predicted label maps against a folder of reference label maps.

Protocol ``per_case_3d`` (see :data:`samunet.evaluation.metrics.METRIC_PROTOCOLS`): per
case (one 3D volume or one 2D image) and foreground label, Dice and NSD (tolerance 2 by
default: mm in 3D via the spacing, pixels in 2D images), plus the voxel counts of the
label in reference and prediction.

Files are matched by name: ``CASE<file_ending>`` in both folders (``file_ending`` from
dataset.json). Then:

* **A reference without prediction is never silently dropped.** The case is listed in
  ``missing_predictions``; the plain means (``mean``, ``foreground_mean``) are over the
  evaluated cases only, and ``mean_with_missing_as_0`` / ``foreground_mean_with_missing_as_0``
  count every missing case as Dice 0 and NSD 0 for every label. Report the latter when
  comparing methods that may have failed on some cases.
* A prediction without reference is listed in ``unmatched_predictions`` and not evaluated.
* Prediction and reference must have the same shape and spacing; otherwise an
  :class:`EvaluationError` names both files.
* dataset.json's ``ignore`` label (nnU-Net v2) is not evaluated, and voxels where the
  reference holds it count for no label (nnU-Net's masking: TP/FP/FN only where the
  reference is annotated); ``protocol.ignore_label`` records it.

Aggregation: ``mean[label]`` is the nanmean over cases (cases where the label is absent
from both masks give NaN and are excluded), ``foreground_mean`` the mean of these over
labels. ``per_domain[domain]`` holds the same aggregates for the cases of each domain
(from dataset.json ``domains`` and/or the ``domains`` argument; cases without one go to
``"unassigned"``). NaN is written as ``null`` in summary.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from samunet.dataset_conversion.dataset_json import (
    DatasetJsonError,
    foreground_labels,
    ignore_label,
    load_dataset_json,
    validate_dataset_json,
)
from samunet.evaluation.metrics import (
    DEFAULT_PROTOCOL,
    DEFAULT_TOLERANCE,
    METRIC_PROTOCOLS,
    case_metrics,
)
from samunet.imageio import ImageReadError, reader_writer_for
from samunet.utilities.file_io import save_json

METRICS = ("Dice", "NSD")
UNASSIGNED_DOMAIN = "unassigned"


class EvaluationError(RuntimeError):
    """Inputs cannot be evaluated (mismatched shapes/spacing, missing folders, ...)."""


# --------------------------------------------------------------------------- per case


def _evaluate_case(task: tuple) -> dict:
    """Worker (top level so that it pickles): read one pair and compute its metrics."""
    case, ref_file, pred_file, file_ending, overwrite, labels, tolerance, rule, ignore = task
    io = reader_writer_for(file_ending, overwrite)
    ref, ref_props = io.read_seg(ref_file)
    pred, pred_props = io.read_seg(pred_file)
    if ref.shape != pred.shape:
        raise EvaluationError(
            f"shape mismatch for case {case!r}: prediction {pred_file} has shape {tuple(pred.shape[1:])} but "
            f"reference {ref_file} has shape {tuple(ref.shape[1:])} (array order z, y, x). Predictions must be "
            "written in the reference geometry."
        )
    sp_ref = [float(s) for s in ref_props["spacing"]]
    sp_pred = [float(s) for s in pred_props["spacing"]]
    if not np.allclose(sp_ref, sp_pred, rtol=1e-3, atol=1e-4):
        raise EvaluationError(
            f"spacing mismatch for case {case!r}: prediction {pred_file} has spacing {sp_pred} but reference "
            f"{ref_file} has {sp_ref} (array order z, y, x). Predictions must be written in the reference geometry."
        )
    m = case_metrics(pred[0], ref[0], labels, sp_ref, tolerance, rule, ignore_label=ignore)
    return {"case": case, "metrics": {str(k): v for k, v in m.items()}, "spacing": sp_ref}


def _run(tasks: list[tuple], num_processes: int) -> list[dict]:
    from samunet.utilities.resources import map_with_progress

    return map_with_progress(_evaluate_case, tasks, num_processes, "evaluating")


# --------------------------------------------------------------------------- aggregation


def _nanmean(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def _aggregate(rows: list[dict], label_keys: list[str], n_missing: int) -> dict:
    """Means over cases per label, over labels, and the same with missing cases counted as 0."""
    mean, mean0 = {}, {}
    for lab in label_keys:
        mean[lab], mean0[lab] = {}, {}
        for metric in METRICS:
            vals = [r["metrics"][lab][metric] for r in rows]
            mean[lab][metric] = _nanmean(vals)
            mean0[lab][metric] = _nanmean(vals + [0.0] * n_missing)
        mean[lab]["n_cases"] = sum(1 for r in rows if not math.isnan(r["metrics"][lab]["Dice"]))
    fg = {metric: _nanmean([mean[lab][metric] for lab in label_keys]) for metric in METRICS}
    fg0 = {metric: _nanmean([mean0[lab][metric] for lab in label_keys]) for metric in METRICS}
    return {
        "n_cases": len(rows),
        "n_missing": n_missing,
        "mean": mean,
        "foreground_mean": fg,
        "mean_with_missing_as_0": mean0,
        "foreground_mean_with_missing_as_0": fg0,
    }


def _nan_to_none(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, np.floating):
        return _nan_to_none(float(obj))
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- folder


def _list_files(folder: Path, file_ending: str) -> dict[str, Path]:
    return {
        p.name[: -len(file_ending)]: p
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.name.endswith(file_ending)
        and len(p.name) > len(file_ending)
    }


def _as_dataset_json(dataset_json: Mapping | str | Path) -> dict:
    if isinstance(dataset_json, Mapping):
        d = dict(dataset_json)
        validate_dataset_json(d)
        return d
    p = Path(dataset_json)
    if p.is_dir():
        return load_dataset_json(p)
    return load_dataset_json_file(p)


def load_dataset_json_file(path: str | Path) -> dict:
    """Load and validate a dataset.json given by its file path (any file name)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetJsonError(f"{path}: not found.")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetJsonError(f"{path}: is not valid JSON ({e}).") from None
    validate_dataset_json(d, path)
    return d


def evaluate_folder(
    ref_folder: str | Path,
    pred_folder: str | Path,
    dataset_json: Mapping | str | Path,
    domains: Mapping[str, str] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    num_processes: int = 1,
    output_file: str | Path | None = None,
    labels: Sequence[int] | None = None,
    nsd_only_if_dice_above: float | None = None,
    cases: Sequence[str] | None = None,
) -> dict:
    """Evaluate ``pred_folder`` against ``ref_folder`` and write ``summary.json``.

    ``dataset_json``: the loaded dict, a dataset.json path, or the folder holding it.
    ``domains``: ``{case: domain}``, overriding dataset.json ``domains`` case by case.
    ``output_file``: defaults to ``<pred_folder>/summary.json``.
    ``labels``: foreground label values to evaluate (default: all of dataset.json).
    ``nsd_only_if_dice_above``: CVPR24 rule (0.2 there); NSD is 0 when Dice <= it. Off by default.
    ``cases``: evaluate only these reference cases (e.g. a fold's validation cases); a listed
    case without a reference file is an error.

    Returns the summary as written (NaN as ``None``); see the module docstring.
    """
    ref_folder, pred_folder = Path(ref_folder), Path(pred_folder)
    for name, folder in (("reference", ref_folder), ("prediction", pred_folder)):
        if not folder.is_dir():
            raise EvaluationError(f"{name} folder {folder} does not exist.")
    dj = _as_dataset_json(dataset_json)
    fe = dj["file_ending"]
    overwrite = dj.get("overwrite_image_reader_writer")
    reader_writer_for(fe, overwrite)  # fail early on an unknown ending

    names = {str(v): k for k, v in foreground_labels(dj).items()}
    ignore = ignore_label(dj)  # its reference pixels are masked out of every metric, as in nnU-Net
    if labels is not None:
        labels = [int(v) for v in labels]
        bad = [v for v in labels if v == 0]
        if bad:
            raise EvaluationError("label 0 is background and is not evaluated; give foreground labels only.")
        if ignore is not None and ignore in labels:
            raise EvaluationError(f"label {ignore} is dataset.json's \"ignore\" label (unannotated pixels) and is "
                                  "not evaluated; give foreground labels only.")
        names = {str(v): names.get(str(v), f"label_{v}") for v in labels}
    label_values = [int(k) for k in names]
    label_keys = list(names)

    dom = dict(dj.get("domains") or {})
    dom.update(dict(domains or {}))

    refs = _list_files(ref_folder, fe)
    preds = _list_files(pred_folder, fe)
    if cases is not None:
        absent = sorted(set(cases) - set(refs))
        if absent:
            raise EvaluationError(f"no reference label in {ref_folder} for cases {absent[:10]}")
        refs = {c: refs[c] for c in cases}
    if not refs:
        raise EvaluationError(f"reference folder {ref_folder} holds no *{fe} files (file_ending from dataset.json).")
    missing = sorted(c for c in refs if c not in preds)
    unmatched = sorted(c for c in preds if c not in refs)
    cases = sorted(c for c in refs if c in preds)

    rule = None if nsd_only_if_dice_above is None else float(nsd_only_if_dice_above)
    tasks = [(c, str(refs[c]), str(preds[c]), fe, overwrite, label_values, float(tolerance), rule, ignore)
             for c in cases]
    try:
        results = _run(tasks, int(num_processes))
    except ImageReadError as e:
        raise EvaluationError(str(e)) from None

    rows = []
    for c, r in zip(cases, results):
        rows.append({
            "case": c,
            "domain": dom.get(c),
            "reference_file": str(refs[c]),
            "prediction_file": str(preds[c]),
            "metrics": r["metrics"],
        })

    overall = _aggregate(rows, label_keys, len(missing))
    per_domain = {}
    if any(c in dom for c in refs):
        domain_names = sorted({dom.get(c, UNASSIGNED_DOMAIN) for c in refs})
        for d in domain_names:
            d_rows = [r for r in rows if (r["domain"] or UNASSIGNED_DOMAIN) == d]
            d_missing = [c for c in missing if dom.get(c, UNASSIGNED_DOMAIN) == d]
            per_domain[d] = _aggregate(d_rows, label_keys, len(d_missing))
            per_domain[d]["missing_predictions"] = d_missing

    summary = {
        "protocol": {
            "tag": DEFAULT_PROTOCOL,
            "tolerance": float(tolerance),
            "tolerance_unit": "mm in 3D (via the voxel spacing); in-plane spacing units (pixels for PNG) in 2D",
            "nsd_only_if_dice_above": rule,
            "ignore_label": ignore,
            "description": METRIC_PROTOCOLS[DEFAULT_PROTOCOL]["description"],
            "missing_predictions": "listed; counted as Dice 0 / NSD 0 only in the *_with_missing_as_0 means",
        },
        "reference_folder": str(ref_folder),
        "prediction_folder": str(pred_folder),
        "labels": names,
        "metric_per_case": rows,
        "mean": overall["mean"],
        "foreground_mean": overall["foreground_mean"],
        "mean_with_missing_as_0": overall["mean_with_missing_as_0"],
        "foreground_mean_with_missing_as_0": overall["foreground_mean_with_missing_as_0"],
        "n_cases": overall["n_cases"],
        "per_domain": per_domain,
        "missing_predictions": missing,
        "unmatched_predictions": unmatched,
    }
    summary = _nan_to_none(summary)
    out = Path(output_file) if output_file is not None else pred_folder / "summary.json"
    save_json(summary, out)
    write_case_csv(summary, out.with_suffix(".csv"))
    return summary


def write_case_csv(summary: dict, path: str | Path) -> None:
    """One row per case and label (missing predictions included, marked), beside summary.json."""
    import csv

    from samunet.utilities.file_io import atomic_path

    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["case", "domain", "label", "label_name", "Dice", "NSD", "n_ref", "n_pred", "status"])
            for row in summary["metric_per_case"]:
                for lab, m in row["metrics"].items():
                    w.writerow([row["case"], row["domain"] or "", lab, summary["labels"].get(lab, ""),
                                "" if m["Dice"] is None else f"{m['Dice']:.6f}",
                                "" if m["NSD"] is None else f"{m['NSD']:.6f}", m["n_ref"], m["n_pred"], "ok"])
            for case in summary["missing_predictions"]:
                w.writerow([case, "", "", "", "", "", "", "", "missing prediction"])


# --------------------------------------------------------------------------- CLI


def _fmt(v) -> str:
    return "   n/a" if v is None else f"{v:6.4f}"


def format_summary(summary: dict) -> str:
    """A compact text table of a summary (as returned by :func:`evaluate_folder`)."""
    p = summary["protocol"]
    lines = [
        f"protocol {p['tag']}, NSD tolerance {p['tolerance']:g}"
        + (f", NSD only if Dice > {p['nsd_only_if_dice_above']:g}" if p["nsd_only_if_dice_above"] is not None else ""),
        f"{summary['n_cases']} cases evaluated, {len(summary['missing_predictions'])} missing predictions",
        "",
        f"{'label':<24} {'Dice':>6} {'NSD':>6} {'cases':>6}",
    ]
    for lab, m in summary["mean"].items():
        name = f"{lab} {summary['labels'].get(lab, '')}".strip()
        lines.append(f"{name:<24} {_fmt(m['Dice'])} {_fmt(m['NSD'])} {m['n_cases']:>6}")
    fg = summary["foreground_mean"]
    lines.append(f"{'foreground mean':<24} {_fmt(fg['Dice'])} {_fmt(fg['NSD'])}")
    if summary["missing_predictions"]:
        fg0 = summary["foreground_mean_with_missing_as_0"]
        lines.append(f"{'fg mean, missing as 0':<24} {_fmt(fg0['Dice'])} {_fmt(fg0['NSD'])}")
    if summary["per_domain"]:
        lines += ["", f"{'domain':<24} {'Dice':>6} {'NSD':>6} {'cases':>6} {'missing':>7}"]
        for d, agg in summary["per_domain"].items():
            f = agg["foreground_mean"]
            lines.append(f"{d:<24} {_fmt(f['Dice'])} {_fmt(f['NSD'])} {agg['n_cases']:>6} {agg['n_missing']:>7}")
    if summary["missing_predictions"]:
        lines += ["", f"missing predictions ({len(summary['missing_predictions'])}): "
                  + ", ".join(summary["missing_predictions"])]
    if summary["unmatched_predictions"]:
        lines.append(f"predictions without reference (ignored) ({len(summary['unmatched_predictions'])}): "
                     + ", ".join(summary["unmatched_predictions"]))
    return "\n".join(lines)


def _load_dataset_json_for(dataset: str) -> dict:
    from samunet.utilities.dataset_name import preprocessed_dataset_folder, raw_dataset_folder

    raw = raw_dataset_folder(dataset)
    if (raw / "dataset.json").is_file():
        return load_dataset_json(raw)
    pre = preprocessed_dataset_folder(dataset)
    if (pre / "dataset.json").is_file():
        return load_dataset_json(pre)
    raise FileNotFoundError(f"no dataset.json in {raw} or {pre}; pass it with -djfile")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="samunet_evaluate",
        description="Per-case Dice and NSD (protocol per_case_3d) of a prediction folder against a reference "
        "folder; writes summary.json.",
    )
    parser.add_argument("-ref", required=True, help="folder of reference label maps (CASE<file_ending>)")
    parser.add_argument("-pred", required=True, help="folder of predicted label maps (same names)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("-d", "--dataset", help="dataset ID (501) or name, to load its dataset.json")
    src.add_argument("-djfile", help="path to a dataset.json (instead of -d)")
    parser.add_argument("-o", "--output", help="summary file (default: <pred>/summary.json)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="NSD tolerance: mm in 3D, pixels in 2D (default 2)")
    parser.add_argument("-np", "--num_processes", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--labels", type=int, nargs="+", help="foreground label values to evaluate (default: all)")
    parser.add_argument("--nsd_only_if_dice_above", type=float, default=None,
                        help="CVPR24 rule: NSD is 0 when Dice <= this value (0.2 there). Off by default.")
    parser.add_argument("--cases", nargs="+", default=None,
                        help="evaluate only these reference cases (e.g. a fold's validation cases; default: every "
                             "reference case, a case without prediction is listed as missing)")
    args = parser.parse_args(argv)

    try:
        if args.djfile:
            dj = load_dataset_json_file(args.djfile)
        else:
            dj = _load_dataset_json_for(args.dataset)
        summary = evaluate_folder(
            args.ref, args.pred, dj, tolerance=args.tolerance, num_processes=args.num_processes,
            output_file=args.output, labels=args.labels, nsd_only_if_dice_above=args.nsd_only_if_dice_above,
            cases=args.cases,
        )
    except (EvaluationError, DatasetJsonError, ImageReadError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    print(f"\nsummary written to {args.output or Path(args.pred) / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
