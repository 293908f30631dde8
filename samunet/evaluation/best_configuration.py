"""``samunet_find_best_configuration -d D -tr T1 T2 ...``: which trainer (or ensemble of two) to predict with.

From each trainer's cross-validation results (``Trainer__Plans/fold_x/validation/summary.json``,
written by the final validation of ``samunet_train``), nnU-Net style:

1. ``cv_summary.json`` in each trainer folder: per label and for the foreground mean, Dice and
   NSD as mean ± std over the folds (sample std) and pooled over all validation cases.
2. Every pair of trainers whose validation folders hold the class probabilities
   (``samunet_train ... --npz``) is ensembled fold by fold into
   ``SAMUNET_results/DatasetXXX/ensembles/<T1>__<P1>+<T2>__<P2>/fold_x/validation/`` and evaluated.
3. Post-processing (:mod:`samunet.inference.postprocessing`) is determined for every candidate
   (``postprocessing.json`` beside it).
4. The candidate with the highest pooled foreground mean Dice (with its post-processing when
   that helps) wins: the exact ``samunet_predict`` (``samunet_ensemble``,
   ``samunet_apply_postprocessing``) commands are printed and written to
   ``DatasetXXX/inference_instructions.txt``, the comparison to ``DatasetXXX/best_configuration.json``.

Steps 2 and 3 need the reference labels (``SAMUNET_raw/DatasetXXX/labelsTr``); without them
only the summaries are compared.
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
from pathlib import Path

import numpy as np

from samunet.experiment_planning.planner import DEFAULT_PLANS_NAME
from samunet.utilities.file_io import load_json, save_json

logger = logging.getLogger(__name__)

METRICS = ("Dice", "NSD")
CV_SUMMARY = "cv_summary.json"


class BestConfigurationError(ValueError):
    pass


# --------------------------------------------------------------------------- cross-validation summary


def _num(v) -> float:
    return math.nan if v is None else float(v)


def _nanmean(vals) -> float:
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def _stats(per_fold: dict[str, float], pooled: float) -> dict:
    vals = [v for v in per_fold.values() if not math.isnan(v)]
    return {"mean": float(np.mean(vals)) if vals else math.nan,
            "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan,
            "per_fold": per_fold, "pooled": pooled}


def cross_validation_summary(summaries: dict[str, dict]) -> dict:
    """Aggregate the ``summary.json`` of each fold (``{fold: summary}``): per label and for the
    foreground mean, ``{"mean", "std"}`` over folds (sample std, ``None`` for one fold),
    ``per_fold`` and ``pooled`` (every validation case of every fold at once, as nnU-Net's merged
    cross-validation evaluation)."""
    from samunet.evaluation.evaluate import _nan_to_none

    folds = list(summaries)
    labels: dict[str, str] = {}
    for s in summaries.values():
        for lab, name in (s.get("labels") or {}).items():
            labels.setdefault(str(lab), name)
    keys = sorted(labels, key=lambda k: int(k) if k.lstrip("-").isdigit() else k)
    rows = [r for s in summaries.values() for r in s.get("metric_per_case", [])]
    per_label = {}
    for lab in keys:
        per_label[lab] = {"name": labels[lab]}
        for metric in METRICS:
            per_fold = {f: _num(((s.get("mean") or {}).get(lab) or {}).get(metric)) for f, s in summaries.items()}
            pooled = _nanmean([_num(r["metrics"][lab][metric]) for r in rows if lab in r["metrics"]])
            per_label[lab][metric] = _stats(per_fold, pooled)
    fg = {}
    for metric in METRICS:
        per_fold = {f: _num((s.get("foreground_mean") or {}).get(metric)) for f, s in summaries.items()}
        fg[metric] = _stats(per_fold, _nanmean([per_label[lab][metric]["pooled"] for lab in keys]))
    missing = sorted({c for s in summaries.values() for c in s.get("missing_predictions", [])})
    return _nan_to_none({"folds": folds, "n_cases": len(rows), "labels": labels, "per_label": per_label,
                         "foreground_mean": fg, "missing_predictions": missing,
                         "std": "sample standard deviation over folds (ddof=1)",
                         "pooled": "mean over all validation cases of all folds (per label), then over labels"})


def fold_summaries(model_folder: Path, folds=None) -> dict[str, dict]:
    """``{fold: validation summary.json}`` of a trainer folder: the given folds, or every numbered
    fold with one. Raises with the command that writes a missing one."""
    model_folder = Path(model_folder)
    trainer = model_folder.name.split("__")[0]
    if not model_folder.is_dir():
        raise BestConfigurationError(f"{model_folder}: no such folder; train the trainer first "
                                     f"(samunet_train {model_folder.parent.name} 0 -tr {trainer})")
    if not folds:
        folds = sorted((p.parent.parent.name[5:] for p in model_folder.glob("fold_*/validation/summary.json")
                        if p.parent.parent.name[5:].isdigit()), key=int)
        if not folds:
            raise BestConfigurationError(
                f"{model_folder}: no fold_0 .. fold_4 with validation/summary.json; train (samunet_train "
                f"{model_folder.parent.name} 0 -tr {trainer}) or validate (... --val) the folds first")
    out = {}
    for f in folds:
        p = model_folder / f"fold_{f}" / "validation" / "summary.json"
        if not p.is_file():
            raise BestConfigurationError(f"{p}: not found; validate the fold: samunet_train {model_folder.parent.name} "
                                         f"{f} -tr {trainer} --val")
        try:
            out[str(f)] = load_json(p)
            out[str(f)]["foreground_mean"]  # noqa: B018 - a summary.json of samunet_evaluate
        except (ValueError, KeyError, TypeError) as e:
            raise BestConfigurationError(f"{p}: unreadable ({type(e).__name__}: {e}); validate the fold again "
                                         f"(samunet_train {model_folder.parent.name} {f} -tr {trainer} --val)") from None
    return out


def write_cv_summary(model_folder: Path, folds=None) -> dict:
    s = cross_validation_summary(fold_summaries(model_folder, folds))
    save_json(s, Path(model_folder) / CV_SUMMARY)
    return s


# --------------------------------------------------------------------------- candidates


def _validation_cases(summary: dict) -> list[str]:
    return sorted({r["case"] for r in summary.get("metric_per_case", [])} | set(summary.get("missing_predictions", [])))


def _has_probabilities(folder: Path, cases) -> bool:
    from samunet.inference.ensembling import probability_files

    return folder.is_dir() and set(cases) <= set(probability_files(folder))


def _ensemble_candidate(name: str, members: list[dict], folds: list[str], ref: Path, dataset_json: dict,
                        num_processes: int) -> dict:
    from samunet.evaluation.evaluate import evaluate_folder
    from samunet.inference.ensembling import ensemble_folders
    from samunet.paths import results_root

    folder = results_root() / name / "ensembles" / "+".join(m["folder"].name for m in members)
    summaries = {}
    for f in folds:
        out = folder / f"fold_{f}" / "validation"
        ensemble_folders([m["folder"] / f"fold_{f}" / "validation" for m in members], out, num_processes=num_processes)
        cases = _validation_cases(members[0]["summaries"][f])
        summaries[f] = evaluate_folder(ref, out, dataset_json, output_file=out / "summary.json", cases=cases,
                                       num_processes=num_processes)
    cv = cross_validation_summary(summaries)
    save_json(cv, folder / CV_SUMMARY)
    return {"name": " + ".join(m["name"] for m in members), "kind": "ensemble", "members": members, "folder": folder,
            "summaries": summaries, "cv": cv}


def _score(cv: dict) -> float:
    return _num(cv["foreground_mean"]["Dice"]["pooled"])


def predict_commands(best: dict, dataset_name: str, folds: list[str]) -> list[str]:
    """The commands that predict new images like ``best`` (placeholders INPUT_FOLDER, OUTPUT_FOLDER)."""
    q = shlex.quote
    fold_args = " ".join(q(f) for f in folds)
    members = best["members"] if best["kind"] == "ensemble" else [best]
    out = "OUTPUT_FOLDER"
    unique = len({m["trainer"] for m in members}) == len(members)
    member_out = {id(m): f"{out}_{m['trainer'] if unique else m['folder'].name}" for m in members}
    cmds = []
    for m in members:
        o = out if best["kind"] != "ensemble" else member_out[id(m)]
        cmds.append(f"samunet_predict -i INPUT_FOLDER -o {q(o)} -d {q(dataset_name)} -tr {q(m['trainer'])} "
                    f"-p {q(m['plans'])} -f {fold_args}" + (" --save_probabilities" if best["kind"] == "ensemble" else ""))
    if best["kind"] == "ensemble":
        cmds.append("samunet_ensemble -i " + " ".join(q(member_out[id(m)]) for m in members) + f" -o {out}")
    if best.get("use_postprocessing"):
        cmds.append(f"samunet_apply_postprocessing -i {out} -o {out}_PP -pp_pkl_file "
                    f"{q(str(best['folder'] / 'postprocessing.json'))}")
    return cmds


def find_best_configuration(dataset, trainers, plans=None, folds=None, allow_ensembles: bool = True,
                            postprocessing: bool = True, num_processes: int = 1) -> dict:
    """Compare ``trainers`` (see the module docstring); returns ``{"candidates": [...], "best": ...,
    "commands": [...]}`` and writes cv_summary.json, postprocessing.json, best_configuration.json and
    inference_instructions.txt."""
    from samunet.dataset_conversion.dataset_json import load_dataset_json
    from samunet.inference.postprocessing import (PLAN_FILE, dataset_ignore_label, dataset_labels_and_ending,
                                                  determine_postprocessing)
    from samunet.inference.predictor import model_folder
    from samunet.paths import raw_root, results_root
    from samunet.utilities.dataset_name import resolve_dataset

    name = resolve_dataset(dataset)
    trainers = list(dict.fromkeys(trainers))
    if not trainers:
        raise BestConfigurationError("give at least one trainer (-tr T1 T2 ...)")
    plans = list(plans or [DEFAULT_PLANS_NAME])
    if len(plans) == 1:
        plans = plans * len(trainers)
    if len(plans) != len(trainers):
        raise BestConfigurationError(f"-p: give one plans name or one per trainer ({len(trainers)}), got {len(plans)}")
    members = []
    for t, p in zip(trainers, plans):
        folder = model_folder(name, t, p)
        members.append({"name": t if p == DEFAULT_PLANS_NAME else f"{t} [{p}]", "kind": "trainer", "trainer": t,
                        "plans": p, "folder": folder, "summaries": fold_summaries(folder, folds)})
    common = [f for f in members[0]["summaries"] if all(f in m["summaries"] for m in members)]
    for m in members:
        dropped = sorted(set(m["summaries"]) - set(common))
        if dropped:
            logger.warning("%s: folds %s are not validated for every trainer; compared on folds %s only", m["name"],
                           dropped, common)
        m["summaries"] = {f: m["summaries"][f] for f in common}
    if not common:
        raise BestConfigurationError("the trainers share no validated fold: " + "; ".join(
            f"{m['name']}: {sorted(fold_summaries(m['folder']))}" for m in members))
    candidates = []
    for m in members:
        m["cv"] = cross_validation_summary(m["summaries"])
        save_json(m["cv"], m["folder"] / CV_SUMMARY)
        candidates.append(m)

    ref = raw_root() / name / "labelsTr"
    have_ref = ref.is_dir()
    if not have_ref and (allow_ensembles or postprocessing):
        logger.warning("no reference labels at %s: ensembles and post-processing not tried", ref)
    if have_ref and allow_ensembles and len(members) > 1:
        dj = load_dataset_json(raw_root() / name)
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                pair = [members[i], members[j]]
                ok = all(_has_probabilities(m["folder"] / f"fold_{f}" / "validation",
                                            _validation_cases(m["summaries"][f])) for m in pair for f in common)
                if not ok:
                    logger.info("ensemble %s + %s not tried: validation probabilities missing (samunet_train ... "
                                "--val --npz)", pair[0]["name"], pair[1]["name"])
                    continue
                candidates.append(_ensemble_candidate(name, pair, common, ref, dj, num_processes))
    if have_ref and postprocessing:
        _, labels, fe = dataset_labels_and_ending(name)
        for c in candidates:
            plan = determine_postprocessing([c["folder"] / f"fold_{f}" / "validation" for f in common], ref, labels, fe,
                                            num_processes=num_processes, ignore_label=dataset_ignore_label(name))
            plan.update({"dataset": name, "folds": common, "configuration": c["name"]})
            save_json(plan, c["folder"] / PLAN_FILE)
            c["postprocessing"] = plan
    rows = []
    for c in candidates:
        score = _score(c["cv"])
        pp = c.get("postprocessing")
        pp_score = _num(pp["foreground_mean_dice"]["after"]) if pp else math.nan
        c["use_postprocessing"] = bool(pp and pp["operations"] and pp_score > score)
        c["final_score"] = pp_score if c["use_postprocessing"] else score
        rows.append(c)
    best = max(rows, key=lambda c: -math.inf if math.isnan(c["final_score"]) else c["final_score"])
    commands = predict_commands(best, name, common)

    def public(c):
        out = {"name": c["name"], "kind": c["kind"], "folder": str(c["folder"]),
               "foreground_dice_pooled": _score(c["cv"]), "foreground_dice_mean_over_folds":
                   c["cv"]["foreground_mean"]["Dice"]["mean"], "foreground_dice_std_over_folds":
                   c["cv"]["foreground_mean"]["Dice"]["std"], "use_postprocessing": c["use_postprocessing"],
               "final_score": c["final_score"]}
        if c.get("postprocessing"):
            out["postprocessing"] = {"operations": c["postprocessing"]["operations"],
                                     "foreground_dice_after": c["postprocessing"]["foreground_mean_dice"]["after"]}
        if c["kind"] == "ensemble":
            out["members"] = [{"trainer": m["trainer"], "plans": m["plans"]} for m in c["members"]]
        else:
            out.update({"trainer": c["trainer"], "plans": c["plans"]})
        return out

    from samunet.evaluation.evaluate import _nan_to_none

    result = _nan_to_none({"dataset": name, "folds": common, "selection": "highest pooled foreground mean Dice over "
                           "the cross-validation cases (post-processed where that helps)",
                           "candidates": [public(c) for c in rows], "best": public(best), "commands": commands})
    save_json(result, results_root() / name / "best_configuration.json")
    from samunet.utilities.file_io import atomic_path

    with atomic_path(results_root() / name / "inference_instructions.txt") as tmp:
        tmp.write_text(format_result(result) + "\n")
    return result


def format_result(result: dict) -> str:
    fmt = (lambda x: "   n/a" if x is None else f"{x:.4f}")
    lines = [f"{result['dataset']}, folds {' '.join(result['folds'])}: foreground mean Dice",
             f"{'configuration':<44} {'mean ± std over folds':>22} {'pooled':>7} {'+ post-proc.':>12}"]
    for c in result["candidates"]:
        pp = c.get("postprocessing")
        pp_txt = "  not tried" if not pp else (f"{fmt(pp['foreground_dice_after']):>7}" + (" *" if c["use_postprocessing"]
                                                                                           else "  "))
        std = c["foreground_dice_std_over_folds"]
        ms = f"{fmt(c['foreground_dice_mean_over_folds'])}" + (f" ± {std:.4f}" if std is not None else "")
        lines.append(f"{c['name']:<44} {ms:>22} {fmt(c['foreground_dice_pooled']):>7} {pp_txt:>12}")
    b = result["best"]
    ops = (b.get("postprocessing") or {}).get("operations") or []
    lines += ["", f"best: {b['name']}" + (" with post-processing (" + ", ".join(
        f"{o['operation']} on label {o['label']}" for o in ops) + ")" if b["use_postprocessing"] else
        " without post-processing") + f", foreground Dice {fmt(b['final_score'])}", "",
              "predict new images with:"] + [f"  {c}" for c in result["commands"]]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="samunet_find_best_configuration", description=__doc__.splitlines()[0])
    p.add_argument("-d", required=True, help="dataset ID or name")
    p.add_argument("-tr", nargs="+", required=True, help="trainers to compare")
    p.add_argument("-p", nargs="+", default=None, help="plans name, one for all or one per trainer (default samunetPlans)")
    p.add_argument("-f", nargs="+", default=None, help="folds (default: every fold 0..4 validated for each trainer)")
    p.add_argument("--disable_ensembling", action="store_true", help="do not try ensembles of two trainers")
    p.add_argument("--no_postprocessing", action="store_true", help="do not try post-processing")
    p.add_argument("-np", type=int, default=1, help="processes (default %(default)s)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from samunet.evaluation.evaluate import EvaluationError
    from samunet.imageio import ImageReadError
    from samunet.inference.ensembling import EnsembleError
    from samunet.inference.postprocessing import PostprocessingError

    try:
        result = find_best_configuration(args.d, args.tr, args.p, args.f, not args.disable_ensembling,
                                         not args.no_postprocessing, args.np)
    except (BestConfigurationError, EnsembleError, PostprocessingError, EvaluationError, ImageReadError,
            FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(format_result(result))


if __name__ == "__main__":
    main()
