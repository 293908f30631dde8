"""Post-processing chosen on the cross-validation predictions, nnU-Net style.

``samunet_determine_postprocessing -d D -tr TRAINER [-f FOLD ...]`` tries, for each foreground
label on its own, each candidate operation on the validation predictions of the folds
(``fold_x/validation/``) and keeps one only where it raises that label's mean Dice against the
reference labels (``SAMUNET_raw/DatasetXXX/labelsTr``). Candidates:

* ``keep_largest_component``: keep only the largest connected component of the label
  (face connectivity, ``scipy.ndimage.label``), nnU-Net's post-processing;
* ``opening``: a morphological opening with a ``kernel`` x ``kernel`` square (5, in-plane, slice
  by slice), ProMISe's evaluation post-processing (METHODS.md 2.4).

Voxels an operation removes become background, so the labels are independent and the
choice per label is exact. The decision is written as ``postprocessing.json`` beside the
model (``Trainer__Plans/``), with every candidate's Dice per label, and applied to any
prediction folder by ``samunet_apply_postprocessing -i IN -o OUT -pp_pkl_file postprocessing.json``.
``-i VALIDATION_FOLDER ... -ref GT_FOLDER`` determines it for any prediction folders instead.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from samunet.imageio import ImageReadError, reader_writer_for
from samunet.utilities.file_io import load_json, remove_stale_temp_files, save_json

logger = logging.getLogger(__name__)

PLAN_FORMAT = "samunet_postprocessing"
PLAN_FILE = "postprocessing.json"
CANDIDATES = ("keep_largest_component", "opening")
OPENING_KERNEL = 5


class PostprocessingError(ValueError):
    pass


# --------------------------------------------------------------------------- operations


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of a boolean mask (face connectivity; ties: the first)."""
    labelled, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool, copy=True)
    sizes = np.bincount(labelled.ravel())[1:]
    return labelled == (int(np.argmax(sizes)) + 1)


def opening(mask: np.ndarray, kernel: int = OPENING_KERNEL) -> np.ndarray:
    """Morphological opening with a ``kernel`` x ``kernel`` square in every slice (in-plane:
    array order ``(Z, Y, X)``, the same for 2D images, ``Z == 1``)."""
    structure = np.ones((1,) * (mask.ndim - 2) + (int(kernel), int(kernel)), dtype=bool)
    return ndimage.binary_opening(mask, structure=structure)


def apply_operation(seg: np.ndarray, label: int, operation: str, **params) -> np.ndarray:
    """``seg`` with one operation applied to one label; removed voxels become background (0)."""
    mask = seg == label
    if not mask.any():
        return seg
    if operation == "keep_largest_component":
        kept = keep_largest_component(mask)
    elif operation == "opening":
        kept = opening(mask, params.get("kernel", OPENING_KERNEL))
    else:
        raise PostprocessingError(f"unknown post-processing operation {operation!r}; known: {list(CANDIDATES)}")
    out = seg.copy()
    out[mask & ~kept] = 0
    return out


def apply_plan(seg: np.ndarray, plan: dict) -> np.ndarray:
    """Apply every operation of a ``postprocessing.json`` to a ``(Z, Y, X)`` label map."""
    for op in plan.get("operations", []):
        params = {k: v for k, v in op.items() if k not in ("label", "operation")}
        seg = apply_operation(seg, int(op["label"]), op["operation"], **params)
    return seg


def load_plan(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise PostprocessingError(f"{path}: not found; write it with samunet_determine_postprocessing")
    try:
        plan = load_json(path)
    except ValueError as e:
        raise PostprocessingError(f"{path}: is not valid JSON ({e})") from None
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT or not isinstance(plan.get("operations"), list):
        raise PostprocessingError(f"{path}: is not a postprocessing.json of samunet_determine_postprocessing")
    for op in plan["operations"]:
        if not isinstance(op, dict) or op.get("operation") not in CANDIDATES or "label" not in op:
            raise PostprocessingError(f"{path}: bad operation {op!r}; known operations: {list(CANDIDATES)}")
    return plan


# --------------------------------------------------------------------------- folders


def label_files(folder: str | Path, file_ending: str) -> dict[str, Path]:
    """``{case: CASE<file_ending>}`` of a folder (hidden/temporary files ignored)."""
    folder = Path(folder)
    return {p.name[: -len(file_ending)]: p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.name.endswith(file_ending)
            and len(p.name) > len(file_ending)}


def _apply_case(task) -> str:
    in_file, out_file, file_ending, plan = task
    rw = reader_writer_for(file_ending)
    seg, props = rw.read_seg(in_file)
    remove_stale_temp_files(out_file)
    rw.write_seg(apply_plan(seg[0], plan), out_file, props)  # atomic: temporary name, then renamed
    return out_file


def apply_postprocessing_to_folder(input_folder, output_folder, plan: dict | str | Path, num_processes: int = 1,
                                   file_ending: str | None = None) -> list[Path]:
    """Post-process every ``CASE<file_ending>`` of ``input_folder`` into ``output_folder`` (geometry
    kept); copies the plan there as ``postprocessing.json``. Returns the files written."""
    from samunet.utilities.resources import map_with_progress

    if not isinstance(plan, dict):
        plan = load_plan(plan)
    fe = file_ending or plan.get("file_ending")
    if not fe:
        raise PostprocessingError("the plan does not say the file ending; pass it (--file_ending .nii.gz)")
    input_folder, output_folder = Path(input_folder), Path(output_folder)
    if not input_folder.is_dir():
        raise PostprocessingError(f"input folder {input_folder} does not exist")
    if input_folder.resolve() == output_folder.resolve():
        raise PostprocessingError("the output folder must differ from the input folder")
    files = label_files(input_folder, fe)
    if not files:
        raise PostprocessingError(f"no *{fe} label maps in {input_folder}")
    output_folder.mkdir(parents=True, exist_ok=True)
    tasks = [(str(f), str(output_folder / f.name), fe, plan) for f in files.values()]
    written = [Path(p) for p in map_with_progress(_apply_case, tasks, num_processes, "post-processing")]
    save_json(plan, output_folder / PLAN_FILE)
    ops = ", ".join(f"{o['operation']} on label {o['label']}" for o in plan["operations"]) or "nothing"
    logger.info("post-processed %d cases (%s) into %s", len(written), ops, output_folder)
    return written


# --------------------------------------------------------------------------- choosing


def _dice(pred: np.ndarray, ref: np.ndarray) -> float:
    n = int(np.count_nonzero(pred)) + int(np.count_nonzero(ref))
    return math.nan if n == 0 else 2.0 * int(np.count_nonzero(pred & ref)) / n


def _case_scores(task) -> dict:
    """Dice per label of one case, as predicted and after each candidate."""
    case, pred_file, ref_file, file_ending, labels, candidates, kernel, ignore = task
    rw = reader_writer_for(file_ending)
    pred = rw.read_seg(pred_file)[0][0]
    ref = rw.read_seg(ref_file)[0][0]
    if pred.shape != ref.shape:
        raise PostprocessingError(f"case {case}: prediction {pred_file} has shape {pred.shape}, reference "
                                  f"{ref_file} {ref.shape}")
    annotated = None if ignore is None else ref != ignore  # the ignore label's voxels are not scored

    def score(mask, r):
        return _dice(mask if annotated is None else mask & annotated, r)

    out = {}
    for lab in labels:
        r = ref == lab
        m = pred == lab
        scores = {"none": score(m, r)}
        for c in candidates:
            if not m.any():
                scores[c] = scores["none"]
            elif c == "keep_largest_component":
                scores[c] = score(keep_largest_component(m), r)
            else:
                scores[c] = score(opening(m, kernel), r)
        out[str(lab)] = scores
    return {"case": case, "scores": out}


def _nanmean(vals) -> float:
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def determine_postprocessing(prediction_folders, reference_folder, labels, file_ending: str,
                             candidates=CANDIDATES, kernel: int = OPENING_KERNEL, num_processes: int = 1,
                             min_improvement: float = 1e-6, ignore_label: int | None = None) -> dict:
    """Choose, per foreground label in ``labels`` (``{value: name}`` or a list of values), the
    candidate that raises the label's mean Dice over the cases of ``prediction_folders`` by more
    than ``min_improvement`` (the best one if several do); returns the plan (not written).
    ``ignore_label``: dataset.json's ignore label; voxels where the reference holds it are not scored."""
    from samunet.utilities.resources import map_with_progress

    bad = [c for c in candidates if c not in CANDIDATES]
    if bad:
        raise PostprocessingError(f"unknown candidates {bad}; known: {list(CANDIDATES)}")
    names = {int(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {int(v): "" for v in labels}
    names = {k: v for k, v in names.items() if k != 0}
    reference_folder = Path(reference_folder)
    if not reference_folder.is_dir():
        raise PostprocessingError(f"reference folder {reference_folder} does not exist")
    refs = label_files(reference_folder, file_ending)
    cases: dict[str, Path] = {}
    for folder in prediction_folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise PostprocessingError(f"prediction folder {folder} does not exist")
        files = label_files(folder, file_ending)
        if not files:
            raise PostprocessingError(f"no *{file_ending} predictions in {folder}")
        twice = sorted(set(files) & set(cases))
        if twice:
            raise PostprocessingError(f"cases predicted in more than one folder ({twice[:5]}, {folder}): give folds "
                                      "with disjoint validation cases")
        cases.update(files)
    no_ref = sorted(set(cases) - set(refs))
    if no_ref:
        raise PostprocessingError(f"no reference label in {reference_folder} for cases {no_ref[:10]}")
    ignore = None if ignore_label is None else int(ignore_label)
    names.pop(ignore, None)
    tasks = [(c, str(cases[c]), str(refs[c]), file_ending, sorted(names), tuple(candidates), kernel, ignore)
             for c in sorted(cases)]
    rows = map_with_progress(_case_scores, tasks, num_processes, "trying post-processing")
    per_label, operations = {}, []
    for lab in sorted(names):
        means = {k: _nanmean([r["scores"][str(lab)][k] for r in rows]) for k in ("none",) + tuple(candidates)}
        base = means["none"]
        better = [c for c in candidates if not math.isnan(means[c])
                  and (math.isnan(base) or means[c] > base + min_improvement)]
        chosen = max(better, key=lambda c: means[c]) if better else None
        per_label[str(lab)] = {"name": names[lab], "mean_dice": means, "chosen": chosen}
        if chosen:
            operations.append({"label": lab, "operation": chosen, **({"kernel": kernel} if chosen == "opening" else {})})
    before = _nanmean([v["mean_dice"]["none"] for v in per_label.values()])
    after = _nanmean([v["mean_dice"][v["chosen"] or "none"] for v in per_label.values()])
    return _nan_to_none({
        "format": PLAN_FORMAT, "version": 1, "file_ending": file_ending, "operations": operations,
        "candidates": list(candidates), "opening_kernel": kernel,
        "rule": "per label: the candidate with the highest mean Dice over the cases, kept only if it beats the "
                "prediction as is (removed voxels become background)",
        "per_label": per_label,
        "foreground_mean_dice": {"before": before, "after": after},
        "n_cases": len(rows), "prediction_folders": [str(Path(f)) for f in prediction_folders],
        "reference_folder": str(reference_folder),
    })


def _nan_to_none(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def validation_folders(folder: str | Path, folds=None, split: str = "validation") -> tuple[list[str], list[Path]]:
    """The folds (given, or every numbered fold with predictions in ``fold_x/<split>/``) and their
    ``<split>`` folders, checked to exist."""
    folder = Path(folder)
    if folds:
        folds = [str(f) for f in folds]
    else:
        folds = sorted((p.name[5:] for p in folder.glob("fold_*") if p.name[5:].isdigit() and (p / split).is_dir()),
                       key=int)
        if not folds:
            have = sorted(p.parent.name for p in folder.glob(f"fold_*/{split}"))
            raise PostprocessingError(
                f"no cross-validation fold (fold_0 .. fold_4) of {folder} has a {split}/ folder"
                + (f" (found {have}: pass them with -f)" if have else "")
                + f"; run samunet_train {folder.parent.name} FOLD -tr {folder.name.split('__')[0]} (or --val to "
                  "validate a trained fold)")
    out = []
    for f in folds:
        d = folder / f"fold_{f}" / split
        if not d.is_dir():
            raise PostprocessingError(f"{d}: no such folder; run samunet_train {folder.parent.name} {f} -tr "
                                      f"{folder.name.split('__')[0]} --val")
        out.append(d)
    return folds, out


def _dataset_json_of(dataset) -> tuple[str, dict]:
    """``(dataset name, dataset.json)`` from the raw folder, else the preprocessed one."""
    from samunet.dataset_conversion.dataset_json import load_dataset_json
    from samunet.utilities.dataset_name import preprocessed_dataset_folder, raw_dataset_folder, resolve_dataset

    name = resolve_dataset(dataset)
    for folder in (raw_dataset_folder(name), preprocessed_dataset_folder(name)):
        if (folder / "dataset.json").is_file():
            return name, load_dataset_json(folder)
    raise PostprocessingError(f"no dataset.json for {name} in SAMUNET_raw or SAMUNET_preprocessed")


def dataset_labels_and_ending(dataset) -> tuple[str, dict, str]:
    """``(dataset name, {value: name} of the foreground labels, file ending)`` from dataset.json
    (raw folder, else preprocessed)."""
    from samunet.dataset_conversion.dataset_json import foreground_labels

    name, dj = _dataset_json_of(dataset)
    return name, {v: k for k, v in foreground_labels(dj).items()}, dj["file_ending"]


def dataset_ignore_label(dataset) -> int | None:
    """The value of the dataset's ``ignore`` label (nnU-Net v2), or None."""
    from samunet.dataset_conversion.dataset_json import ignore_label

    return ignore_label(_dataset_json_of(dataset)[1])


def determine_for_trainer(dataset, trainer_name: str, plans_name: str | None = None, folds=None,
                          candidates=CANDIDATES, num_processes: int = 1, output_file=None) -> dict:
    """:func:`determine_postprocessing` on a trainer's cross-validation predictions; writes
    ``Trainer__Plans/postprocessing.json`` (or ``output_file``) and returns the plan."""
    from samunet.experiment_planning.planner import DEFAULT_PLANS_NAME
    from samunet.inference.predictor import model_folder
    from samunet.paths import raw_root

    plans_name = plans_name or DEFAULT_PLANS_NAME
    name, labels, fe = dataset_labels_and_ending(dataset)
    folder = model_folder(name, trainer_name, plans_name)
    if not folder.is_dir():
        raise PostprocessingError(f"{folder}: no such folder; train first (samunet_train {name} 0 -tr {trainer_name})")
    folds, folders = validation_folders(folder, folds)
    plan = determine_postprocessing(folders, raw_root() / name / "labelsTr", labels, fe, candidates,
                                    num_processes=num_processes, ignore_label=dataset_ignore_label(name))
    plan.update({"dataset": name, "trainer": trainer_name, "plans": plans_name, "folds": folds})
    out = Path(output_file) if output_file else folder / PLAN_FILE
    save_json(plan, out)
    return plan


def format_plan(plan: dict) -> str:
    lines = [f"{'label':<20} {'as is':>7} " + " ".join(f"{c:>22}" for c in plan["candidates"]) + "  chosen"]
    for lab, v in plan["per_label"].items():
        m = v["mean_dice"]
        fmt = (lambda x: "    n/a" if x is None or math.isnan(x) else f"{x:7.4f}")
        lines.append(f"{(lab + ' ' + v['name']).strip():<20} {fmt(m['none'])} "
                     + " ".join(f"{fmt(m[c]):>22}" for c in plan["candidates"]) + f"  {v['chosen'] or '-'}")
    fg = plan["foreground_mean_dice"]
    fmt = (lambda x: "n/a" if x is None else f"{x:.4f}")
    lines.append(f"foreground mean Dice over {plan['n_cases']} cases: {fmt(fg['before'])} as is, "
                 f"{fmt(fg['after'])} post-processed")
    return "\n".join(lines)


def determine_main(argv=None) -> None:
    p = argparse.ArgumentParser(
        prog="samunet_determine_postprocessing",
        description="Choose per label whether keeping the largest connected component (or a 5x5 opening) "
                    "improves the cross-validation Dice; writes postprocessing.json beside the model.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-d", help="dataset ID or name (with -tr: the trainer's fold_x/validation/ predictions)")
    src.add_argument("-i", nargs="+", metavar="FOLDER", help="prediction folders instead of a trainer's (with -ref)")
    p.add_argument("-tr", default="SAMBoxTrainer", help="trainer name (default %(default)s)")
    p.add_argument("-p", default=None, help="plans name (default samunetPlans)")
    p.add_argument("-f", nargs="+", default=None, help="folds (default: every fold 0..4 with validation predictions)")
    p.add_argument("-ref", default=None, help="with -i: the reference label folder")
    p.add_argument("-djfile", default=None, help="with -i: dataset.json (labels, file ending); or give --dataset")
    p.add_argument("--dataset", default=None, help="with -i: dataset ID or name whose dataset.json to use")
    p.add_argument("-o", default=None, help="output file (default: Trainer__Plans/postprocessing.json; with -i: "
                                            "postprocessing.json in the first folder)")
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES),
                   help="operations to try (default: all)")
    p.add_argument("-np", type=int, default=1, help="processes (default %(default)s)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.d:
            plan = determine_for_trainer(args.d, args.tr, args.p, args.f, args.candidates, args.np, args.o)
            out = Path(args.o) if args.o else None
        else:
            if not args.ref:
                raise PostprocessingError("-i needs -ref GT_FOLDER (the reference labels)")
            if args.djfile:
                from samunet.dataset_conversion.dataset_json import (foreground_labels, ignore_label,
                                                                     validate_dataset_json)

                dj = load_json(args.djfile)
                validate_dataset_json(dj, args.djfile)
                labels, fe = {v: k for k, v in foreground_labels(dj).items()}, dj["file_ending"]
                ignore = ignore_label(dj)
            elif args.dataset:
                _, labels, fe = dataset_labels_and_ending(args.dataset)
                ignore = dataset_ignore_label(args.dataset)
            else:
                raise PostprocessingError("-i needs the labels: give -djfile dataset.json or --dataset ID")
            plan = determine_postprocessing(args.i, args.ref, labels, fe, args.candidates, num_processes=args.np,
                                            ignore_label=ignore)
            out = Path(args.o) if args.o else Path(args.i[0]) / PLAN_FILE
            save_json(plan, out)
        print(format_plan(plan))
        ops = ", ".join(f"{o['operation']} on label {o['label']}" for o in plan["operations"]) or "none (no gain)"
        print(f"chosen: {ops}")
        if out is None:
            from samunet.inference.predictor import model_folder

            out = model_folder(args.d, args.tr, args.p or "samunetPlans") / PLAN_FILE
        print(f"written to {out}\napply with: samunet_apply_postprocessing -i PREDICTIONS -o OUTPUT -pp_pkl_file {out}")
    except (PostprocessingError, ImageReadError, FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")


def apply_main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="samunet_apply_postprocessing",
                                description="Apply a postprocessing.json to a folder of label maps.")
    p.add_argument("-i", required=True, help="folder of predicted label maps")
    p.add_argument("-o", required=True, help="output folder")
    p.add_argument("-pp_pkl_file", "--plan", "-pp", dest="plan", required=True,
                   help="postprocessing.json of samunet_determine_postprocessing (-pp_pkl_file: nnU-Net's name)")
    p.add_argument("--file_ending", default=None, help="default: the plan's")
    p.add_argument("-np", type=int, default=1, help="processes (default %(default)s)")
    # nnU-Net's -plans_json/-dataset_json are not needed: the plan says the labels and the file ending
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        apply_postprocessing_to_folder(args.i, args.o, args.plan, args.np, args.file_ending)
    except (PostprocessingError, ImageReadError, FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")


__all__ = ["CANDIDATES", "PLAN_FILE", "PostprocessingError", "apply_operation", "apply_plan",
           "apply_postprocessing_to_folder", "determine_for_trainer", "determine_postprocessing",
           "keep_largest_component", "load_plan", "opening"]
