"""``samunet_plan_and_preprocess``: integrity check -> fingerprint -> plans -> preprocessing -> splits."""

from __future__ import annotations

import argparse
import hashlib
import logging
import multiprocessing as mp
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from samunet.dataset_conversion.dataset_json import DatasetJsonError, case_groups, load_dataset_json, training_cases
from samunet.experiment_planning.fingerprint import compute_fingerprint
from samunet.experiment_planning.planner import DEFAULT_PLANS_NAME, plan_experiment, preprocessing_hash
from samunet.experiment_planning.plans_io import data_identifier, plans_file_name  # noqa: F401  (re-exported)
from samunet.experiment_planning.sam_input import describe_sam_input, dropped_channels_warning, plan_sam_input
from samunet.experiment_planning.splits import SplitsMismatchError, make_or_check_splits
from samunet.imageio import ImageReadError
from samunet.utilities.sharding import shard  # noqa: F401  (re-exported)
from samunet.paths import preprocessed_root, raw_root
from samunet.preprocessing.preprocessor import case_is_done, run_case
from samunet.utilities.dataset_name import resolve_dataset
from samunet.utilities.file_io import load_json, save_json
from samunet.utilities.progress import progress
from samunet.utilities.resources import cap_workers_by_memory, default_num_processes

logger = logging.getLogger(__name__)


def raw_signature(raw_folder: Path, dataset_json: dict) -> str:
    """Hash of dataset.json and the names, sizes and times of the training files."""
    h = hashlib.sha1(json_bytes(dataset_json))
    for sub in ("imagesTr", "labelsTr"):
        folder = raw_folder / sub
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                st = p.stat()
                h.update(f"{sub}/{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def json_bytes(obj) -> bytes:
    import json

    return json.dumps(obj, sort_keys=True).encode()


def _run_case_star(args):
    return run_case(*args)


def preprocess_dataset(raw_folder: Path, out_folder: Path, plans: dict, dataset_json: dict, fingerprint: dict,
                       num_processes: int, clean: bool = False, part: int = 0, num_parts: int = 1) -> dict:
    data_folder = out_folder / data_identifier(plans)
    if clean and data_folder.exists() and num_parts == 1:  # parts clean their own cases below
        shutil.rmtree(data_folder)
    data_folder.mkdir(parents=True, exist_ok=True)
    phash = preprocessing_hash(plans)
    all_cases = training_cases(raw_folder, dataset_json)
    mine = set(shard(all_cases, part, num_parts))
    cases = {c: v for c, v in all_cases.items() if c in mine}
    todo = [c for c in sorted(cases) if (clean and num_parts > 1) or not case_is_done(data_folder, c, phash)]
    skipped = len(cases) - len(todo)
    if skipped:
        logger.info("%d of %d cases already preprocessed with this plan: skipped (use --clean to redo)", skipped, len(cases))
    jobs = [(c, cases[c]["images"], cases[c]["label"], plans, dataset_json, str(data_folder), phash) for c in todo]
    if jobs:
        biggest = max(int(np.prod(v["shape"])) * v["num_channels"] for v in fingerprint["cases"].values())
        nproc = cap_workers_by_memory(min(num_processes, len(jobs)), biggest * 4 * 10, "preprocessing workers")
        if nproc > 1:
            with mp.get_context("fork").Pool(nproc) as pool:
                for _ in progress(pool.imap_unordered(_run_case_star, jobs), total=len(jobs), desc="preprocessing",
                                  unit="case"):
                    pass
        else:
            for j in progress(jobs, desc="preprocessing", unit="case"):
                _run_case_star(j)
    return {"folder": str(data_folder), "preprocessed": len(todo), "skipped": skipped}


def plan_and_preprocess(dataset: str | int, num_processes: int | None = None, skip_integrity_check: bool = False,
                        clean: bool = False, keep_plans: bool = False, new_splits: bool = False,
                        plans_name: str = DEFAULT_PLANS_NAME, part: int = 0, num_parts: int = 1) -> dict:
    """Run every planning stage for one dataset; returns a summary dict (also what the CLI prints).

    ``part``/``num_parts``: preprocess only this share of the cases (see :func:`shard`); every
    part computes the same fingerprint, plans and splits (deterministic, written atomically),
    and the preprocessed cases are one file each, so parts run on several nodes at once and
    need no merge step."""
    t0 = time.perf_counter()
    shard([], part, num_parts)  # a bad --part fails at once
    num_processes = num_processes or default_num_processes()
    name = resolve_dataset(dataset)
    raw_folder = raw_root() / name
    if not raw_folder.is_dir():
        raise FileNotFoundError(
            f"{raw_folder} does not exist. The raw dataset must be in SAMUNET_raw ({raw_root()})."
        )
    dataset_json = load_dataset_json(raw_folder)
    timings = {}
    if not skip_integrity_check:
        from samunet.experiment_planning.integrity import verify_dataset_integrity

        t = time.perf_counter()
        verify_dataset_integrity(raw_folder, num_processes=num_processes)
        timings["integrity_check"] = time.perf_counter() - t

    out_folder = preprocessed_root() / name
    out_folder.mkdir(parents=True, exist_ok=True)
    save_json(dataset_json, out_folder / "dataset.json")

    t = time.perf_counter()
    fp_file = out_folder / "dataset_fingerprint.json"
    sig = raw_signature(raw_folder, dataset_json)
    fingerprint = load_json(fp_file) if fp_file.is_file() and not clean else None
    if fingerprint is None or fingerprint.get("raw_signature") != sig:
        fingerprint = compute_fingerprint(raw_folder, dataset_json, num_processes)
        fingerprint["raw_signature"] = sig
        save_json(fingerprint, fp_file)
    else:
        logger.info("fingerprint up to date: %s", fp_file)
    timings["fingerprint"] = time.perf_counter() - t

    plans_file = out_folder / plans_file_name(plans_name)
    if keep_plans and plans_file.is_file():
        plans = load_json(plans_file)
        logger.info("keeping existing %s (--keep_plans)", plans_file)
        plan_sam_input(plans, str(plans_file))  # a hand-edited channel choice is checked now, not at training
        if (dropped := dropped_channels_warning(plans)) is not None:
            logger.warning(dropped)
    else:
        plans = plan_experiment(dataset_json, fingerprint, name, plans_name)
        save_json(plans, plans_file)

    t = time.perf_counter()
    pre = preprocess_dataset(raw_folder, out_folder, plans, dataset_json, fingerprint, num_processes, clean,
                             part, num_parts)
    timings["preprocessing"] = time.perf_counter() - t

    cases = sorted(fingerprint["cases"])
    groups = case_groups(dataset_json, cases, raw_folder / "dataset.json")
    split_summary = make_or_check_splits(out_folder, cases, dataset_json.get("domains"), new_splits, groups)
    timings["total"] = time.perf_counter() - t0
    return {
        "dataset": name,
        "preprocessed_folder": str(out_folder),
        "plans": plans,
        "preprocessing": pre,
        "splits": split_summary,
        "timings_s": timings,
    }


def format_summary(summary: dict) -> str:
    p = summary["plans"]
    lines = [
        f"dataset            {summary['dataset']}",
        f"preprocessed into  {summary['preprocessing']['folder']}",
        f"cases              {summary['preprocessing']['preprocessed']} preprocessed, {summary['preprocessing']['skipped']} already done",
        f"dimension          {p['dimension']} (slices along axis {p['transpose_forward'][0]} after transpose {p['transpose_forward']})",
        f"target spacing     {[round(s, 4) for s in p['target_spacing']]}  (slice axis first)",
        f"median shape       {[round(s) for s in p['median_shape_after_resampling']]} after resampling",
        "normalisation      " + "; ".join(f"{n['name']}: {n['scheme']}" for n in p["normalization"]),
        f"labels             {p['foreground_labels']}"
        + (f", ignore label {p['ignore_label']} (excluded from loss and metrics)" if p.get("ignore_label") is not None else ""),
        f"stage 1            {p['stage1']['backbone']}, patch {p['stage1']['patch_size']}, batch {p['stage1']['batch_size']}, "
        f"{p['stage1']['num_epochs']} epochs x {p['stage1']['num_iterations_per_epoch']} iterations",
        f"SAM                {p['sam']['model']}, cache {p['sam']['cache_dtype']}",
        f"SAM input          {describe_sam_input(p)}",
        f"prompting          theta1 {p['prompting']['theta1']}, theta2 {p['prompting']['theta2']}, box jitter {p['prompting']['box_jitter_px']} px",
        f"five-fold splits   {summary['splits']['folds']} folds in splits_final.json"
        + (f", {summary['splits']['groups']} groups kept whole" if summary["splits"].get("groups") else ", by case (no groups in dataset.json)"),
        f"domain folds       {', '.join(summary['splits']['domain_folds']) or ('none' if summary['splits']['skipped_domains'] else 'none (no domains in dataset.json)')}",
    ]
    for dom, why in summary["splits"]["skipped_domains"].items():
        lines.append(f"  no fold for {dom}: {why}")
    t = summary["timings_s"]
    lines.append("wall time          " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()))
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="samunet_plan_and_preprocess",
        description="Check a raw dataset, fingerprint it, write plans.json, preprocess every case and make the splits.",
    )
    parser.add_argument("-d", nargs="+", required=True, help="dataset ID(s) or name(s), e.g. 501 or Dataset501_Prostate")
    parser.add_argument("-np", type=int, default=None, help=f"worker processes (default: {default_num_processes()}, capped by RAM)")
    parser.add_argument("--skip_integrity_check", action="store_true", help="skip the raw-data check (not recommended)")
    parser.add_argument("--clean", action="store_true", help="redo the fingerprint and every case even if done")
    parser.add_argument("--keep_plans", action="store_true", help="keep an existing (possibly hand-edited) plans.json")
    parser.add_argument("--new_splits", action="store_true", help="replace existing split files (changes what trained folds mean)")
    parser.add_argument("--plans_name", default=DEFAULT_PLANS_NAME, help="name of the plans file (default %(default)s)")
    parser.add_argument("--part", type=int, default=0, help="preprocess only part i of --num_parts n (default 0)")
    parser.add_argument("--num_parts", type=int, default=1,
                        help="split the cases over n processes or nodes (case i, sorted, goes to part i %% n)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    from samunet.experiment_planning.integrity import DatasetIntegrityError

    for d in args.d:
        try:
            summary = plan_and_preprocess(d, args.np, args.skip_integrity_check, args.clean, args.keep_plans,
                                          args.new_splits, args.plans_name, args.part, args.num_parts)
        except (DatasetJsonError, DatasetIntegrityError, ImageReadError, SplitsMismatchError, FileNotFoundError, ValueError) as e:
            sys.exit(f"error: {e}")
        print(format_summary(summary))


if __name__ == "__main__":
    main()
