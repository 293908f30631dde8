"""The main job end to end on the bundled demo data (6 prostate MRI volumes, two "sites").

convert (with a ``domains`` CSV) -> integrity check -> fingerprint -> plan -> preprocess ->
five-fold and domain-hold-out splits -> train -> predict raw images with ``samunet_predict``
-> evaluate (Dice and NSD per case, class and domain) -> ``samunet_report`` tables and charts
-> overlay PNGs with the prompts drawn -> a short table of what the chain adds.

By default only the default chain is trained: ``SAMBoxTrainer`` (which trains its stage 1,
``EmbeddingHeadTrainer`` on the cached SAM embedding, itself) on the domain fold
``domain_RUNMC``, every stage sized to ``--time_budget`` (default 7 min, so the whole demo
takes about 10 minutes on 2 CPU cores). Stage 1 is then evaluated alone on the same test
cases, and the demo ends with a table: stage 1 alone / chain with automatic boxes / chain
with the reference box (Dice, NSD on the shifted site) and the wall times.
``--all_trainers`` instead trains all four trainers (ResNet stage 1, the SAMMed chain,
ProMISe, the AutoMedSAM class-prompt variant) with a short fixed schedule on CV fold 0 and
on the domain fold (``-tr`` picks some of them).

The bundled cases all come from one site (Radboud, 3T). To show the domain-hold-out
protocol without a second licensed dataset, cases 03-05 are turned into a *simulated second
site* ("RUNMC-shifted"): a smooth multiplicative bias field, a different contrast (gamma),
extra noise and slight blur, geometry and masks unchanged (:func:`simulate_scanner_shift`).
That is an intensity shift, not a real scanner change: demo numbers show the pipeline works
and how the chain's parts compare on this shift, they do not measure generalisation.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from samunet.demo_data import PROSTATE_RUNMC6

logger = logging.getLogger(__name__)

DEMO_DATASET_ID = 990
DEMO_DATASET_NAME = "DemoProstate"
SITE_A, SITE_B = "RUNMC", "RUNMC-shifted"
SHIFTED_CASES = ("Case03", "Case04", "Case05")
DOMAIN_FOLD = f"domain_{SITE_A}"
DEFAULT_TRAINER = "SAMBoxTrainer"  # the default chain; it trains its own stage 1
DEFAULT_TIME_BUDGET = "7m"  # the chain's budget: the whole demo then takes about 8-10 min on 2 CPU cores
# the demo's own plan setting (a tiny dataset, minutes of training): in-sample decoder-training
# boxes leave stage 1 most of the budget; everything else is the default
DEMO_PLAN_SETTINGS = {"sam": {"oof_folds": 0}}
# --all_trainers / -tr: (trainer, epochs, iterations per epoch, extra options), a demo schedule far
# below the plan's. SAMBoxTrainer's stage 1 (EmbeddingHeadTrainer) gets a short schedule too, else
# it would train with the plan's.
DEMO_SCHEDULE = (
    ("ResNetTrainer", 4, 15, {}),
    ("ProMISeTrainer", 3, 8, {"points": 5, "batch_size": 4}),  # first: one encoder pass fills both caches
    ("SAMBoxTrainer", 3, 15, {"stage1_epochs": 4, "stage1_iters": 15}),
    ("ClassPromptTrainer", 3, 8, {"width": 0.25, "batch_size": 4}),
)
# flags samunet_train has for these options (the rest are --opt KEY=VALUE)
_TRAIN_FLAGS = ("points", "stage1_epochs", "stage1_iters", "time_budget")


def _set_roots(out: Path) -> None:
    for var, sub in (("SAMUNET_raw", "raw"), ("SAMUNET_preprocessed", "preprocessed"), ("SAMUNET_results", "results")):
        os.environ[var] = str(out / sub)


def simulate_scanner_shift(image: np.ndarray, seed: int) -> np.ndarray:
    """A deterministic intensity shift standing in for another scanner: gamma 0.6 on the
    0.5-99.5 percentile range, a smooth multiplicative bias field (±25%), Gaussian blur
    (σ 0.7 px in plane) and noise (3% of the range). ``image`` ``(Z, Y, X)``; same range out."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    lo, hi = np.percentile(image, [0.5, 99.5])
    n = np.clip((image.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1) ** 0.6
    _, y, x = image.shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, y), np.linspace(-1, 1, x), indexing="ij")
    c = rng.uniform(-0.25, 0.25, size=3)
    n = gaussian_filter(n * np.exp(c[0] * yy + c[1] * xx + c[2] * (yy ** 2 + xx ** 2)), sigma=(0, 0.7, 0.7))
    n = n + rng.normal(0, 0.03, size=n.shape)
    return (np.clip(n, 0, None) * (hi - lo) + lo).astype(np.float32)


def stage_demo_data(staging: Path) -> tuple[Path, Path, Path]:
    """Copy the bundled cases into ``staging`` (images/, masks/, domains.csv), applying the
    simulated scanner shift to :data:`SHIFTED_CASES`."""
    import SimpleITK as sitk

    images, masks = staging / "images", staging / "masks"
    for folder in (images, masks):
        folder.mkdir(parents=True, exist_ok=True)
    rows = ["case,domain"]
    for i, src in enumerate(sorted((PROSTATE_RUNMC6 / "images").glob("*.nii.gz"))):
        case = src.name[: -len(".nii.gz")]
        shutil.copy(PROSTATE_RUNMC6 / "masks" / f"{case}_Segmentation.nii.gz", masks)
        if case in SHIFTED_CASES:
            img = sitk.ReadImage(str(src))
            shifted = sitk.GetImageFromArray(simulate_scanner_shift(sitk.GetArrayFromImage(img), seed=i))
            shifted.CopyInformation(img)
            sitk.WriteImage(shifted, str(images / src.name))
            rows.append(f"{case},{SITE_B}")
        else:
            shutil.copy(src, images)
            rows.append(f"{case},{SITE_A}")
    (staging / "domains.csv").write_text("\n".join(rows) + "\n")
    return images, masks, staging / "domains.csv"


def default_schedule(time_budget: str | float = DEFAULT_TIME_BUDGET) -> tuple:
    """The default run: only the chain, every stage sized to ``time_budget`` (no epochs/iterations)."""
    return ((DEFAULT_TRAINER, None, None, {"time_budget": time_budget}),)


def _train_command(fold: str, trainer: str, epochs, iters, options: dict) -> str:
    parts = [f"samunet_train {DEMO_DATASET_ID} {fold} -tr {trainer}"]
    if epochs is not None:
        parts.append(f"--epochs {epochs}")
    if iters is not None:
        parts.append(f"--iters {iters}")
    parts += [f"--{k} {v}" if k in _TRAIN_FLAGS else f"--opt {k}={v}" for k, v in options.items()]
    return " ".join(parts)


def _foreground_mean(folder: Path) -> dict:
    from samunet.utilities.file_io import load_json

    f = Path(folder) / "summary.json"
    return dict(load_json(f).get("foreground_mean", {})) if f.is_file() else {}


def comparison_rows(stage1: str, fold: str = DOMAIN_FOLD, with_resnet: bool = False) -> list[tuple[str, dict]]:
    """``[(row name, {"Dice", "NSD"})]`` on ``fold``'s test cases, read from the results root:
    ResNet from scratch (``with_resnet``), stage 1 alone, the chain with automatic boxes and with
    the reference box. A missing summary gives ``{}``."""
    from samunet.experiment_planning.planner import DEFAULT_PLANS_NAME
    from samunet.training.trainer_base import trainer_output_folder

    dataset = f"Dataset{DEMO_DATASET_ID:03d}_{DEMO_DATASET_NAME}"

    def folder(trainer: str) -> Path:
        return trainer_output_folder(dataset, trainer, DEFAULT_PLANS_NAME, fold)

    rows = []
    if with_resnet and stage1 != "ResNetTrainer":
        rows.append(("ResNetTrainer from scratch (stage 1 alone)", _foreground_mean(folder("ResNetTrainer") / "test")))
    rows.append((f"stage 1 alone ({stage1})", _foreground_mean(folder(stage1) / "test")))
    rows.append((f"chain ({DEFAULT_TRAINER}), automatic boxes", _foreground_mean(folder(DEFAULT_TRAINER) / "test")))
    rows.append((f"chain ({DEFAULT_TRAINER}), reference box",
                 _foreground_mean(folder(DEFAULT_TRAINER) / "test_gt_box")))
    return rows


def format_comparison(title: str, rows: list[tuple[str, dict]], times: list[tuple[str, float]]) -> str:
    """Markdown: one Dice/NSD table (``-`` where a number is missing) and one wall-time table."""
    import math

    from samunet.training.schedule import format_duration

    def num(v) -> str:
        return "-" if v is None or not math.isfinite(float(v)) else f"{float(v):.3f}"

    lines = [f"## {title}", "", "| what | Dice | NSD |", "|---|---|---|"]
    lines += [f"| {name} | {num(r.get('Dice'))} | {num(r.get('NSD'))} |" for name, r in rows]
    lines += ["", "| step | wall time |", "|---|---|"]
    lines += [f"| {name} | {format_duration(s)} |" for name, s in times]
    return "\n".join(lines) + "\n"


def run_demo(output_dir: str | Path, num_processes: int = 2, device: str | None = None,
             schedule=None, folds=None, time_budget: str | float = DEFAULT_TIME_BUDGET) -> dict:
    """Run the demo with all three roots under ``output_dir``; returns the report
    (:func:`samunet.evaluation.report.build_report`) plus ``"comparison"`` (rows, markdown,
    file) when the chain was trained on the domain fold.

    ``schedule`` None (default): only the chain, sized to ``time_budget``, on ``folds``
    (default: the domain fold). Else ``(trainer, epochs, iterations, options)`` entries like
    :data:`DEMO_SCHEDULE` on ``folds`` (default: CV fold 0 and the domain fold)."""
    from samunet.dataset_conversion.convert_nifti_pairs import convert_nifti_pairs
    from samunet.evaluation.evaluate import evaluate_folder, format_summary as format_eval
    from samunet.evaluation.overlays import plot_overlays
    from samunet.evaluation.report import build_report
    from samunet.experiment_planning.plan_and_preprocess import format_summary, plan_and_preprocess
    from samunet.inference.predictor import predict_folder
    from samunet.run.train import train
    from samunet.training.schedule import format_duration
    from samunet.utilities.file_io import load_json

    budgeted = schedule is None
    if budgeted:
        schedule = default_schedule(time_budget)
    folds = tuple(folds or ((DOMAIN_FOLD,) if budgeted else ("0", DOMAIN_FOLD)))
    out = Path(output_dir).resolve()
    _set_roots(out)
    t0 = time.perf_counter()

    def stamp() -> str:
        return f"[{time.perf_counter() - t0:5.0f} s]"

    print(f"{stamp()} [1/7] converting the bundled prostate MRI (6 cases, labels PZ=1, CG=2; sites {SITE_A} = "
          f"Case00-02 and {SITE_B} = Case03-05, a simulated scanner shift) into {out / 'raw'}")
    staging = out / "demo_input"
    if staging.exists():
        shutil.rmtree(staging)
    images, masks, domains_csv = stage_demo_data(staging)
    raw = convert_nifti_pairs(images, masks, DEMO_DATASET_ID, DEMO_DATASET_NAME, mask_suffix="_Segmentation",
                              domains_csv=domains_csv, overwrite=True, label_names=["PZ", "CG"])
    print(f"{stamp()} [2/7] samunet_plan_and_preprocess: integrity check, fingerprint, plan, preprocessing, splits")
    summary = plan_and_preprocess(DEMO_DATASET_ID, num_processes=num_processes, clean=True)
    print()
    print(format_summary(summary))
    pre = Path(summary["preprocessed_folder"])
    if budgeted:
        from samunet.utilities.file_io import save_json

        plans = load_json(pre / "plans.json")
        for section, values in DEMO_PLAN_SETTINGS.items():
            plans.setdefault(section, {}).update(values)
        save_json(plans, pre / "plans.json")
        print(f"  demo plan settings (plans.json): {DEMO_PLAN_SETTINGS}")
    splits = load_json(pre / "splits_final.json")
    dsplits = load_json(pre / "splits_domains.json")
    print(f"\n  CV fold 0: train {', '.join(splits[0]['train'])} | val {', '.join(splits[0]['val'])}")
    d = dsplits.get(DOMAIN_FOLD)
    if d:
        print(f"  {DOMAIN_FOLD}: train {', '.join(d['train'])} | val {', '.join(d['val'])} | "
              f"test {', '.join(d['test'])}")
    del summary
    gc.collect()

    results = out / "results"
    if results.exists():
        shutil.rmtree(results)
    trained: dict[tuple[str, str], Path] = {}  # (trainer, fold) -> output folder; trainers themselves are freed
    stage1_of: dict[str, str] = {}  # fold -> the chain's stage-1 trainer
    train_seconds: dict[tuple[str, str], float] = {}
    n_runs = len(schedule) * len(folds)
    if budgeted:
        print(f"\n{stamp()} [3/7] training the default chain {DEFAULT_TRAINER} on {', '.join(folds)} with a time "
              f"budget of {time_budget}: every slice is encoded once into the embedding cache, then its stage 1 "
              "(the plan's sam.stage1_trainer, EmbeddingHeadTrainer: a conv head on the cached SAM embedding) "
              "and SAM's mask decoder train, epochs x iterations sized to the budget. "
              "(--all_trainers trains all four trainers instead.)")
    else:
        print(f"\n{stamp()} [3/7] training {len(schedule)} trainer(s) x {len(folds)} fold(s) with a short demo "
              "schedule (the plan's defaults are far longer). SAM trainers encode every slice once into the "
              "embedding cache; SAMBoxTrainer trains its stage 1 (the plan's sam.stage1_trainer) first.")
    k = 0
    for fold in folds:
        for trainer, epochs, iters, options in schedule:
            k += 1
            print(f"\n{stamp()} ({k}/{n_runs}) {_train_command(fold, trainer, epochs, iters, options)}")
            start = time.perf_counter()
            t = train(DEMO_DATASET_ID, fold, trainer, device=device, num_epochs=epochs, num_iterations=iters,
                      **options)
            train_seconds[(trainer, fold)] = time.perf_counter() - start
            trained[(trainer, fold)] = t.output_folder
            if getattr(t, "stage1_checkpoint", None) is not None:  # a chain: its stage 1 was trained or reused
                stage1_of[fold] = t.stage1_name
                trained.setdefault((t.stage1_name, fold), Path(t.stage1_checkpoint).parent)
            del t  # one process: free each trainer (SAM, caches, data) before the next step
            gc.collect()

    stage1 = stage1_of.get(DOMAIN_FOLD)
    stage1_seconds = None
    if stage1:
        print(f"\n{stamp()} [4/7] stage 1 alone on the {DOMAIN_FOLD} test cases ({SITE_B}): "
              f"samunet_train {DEMO_DATASET_ID} {DOMAIN_FOLD} -tr {stage1} --val_only")
        start = time.perf_counter()
        t = train(DEMO_DATASET_ID, DOMAIN_FOLD, stage1, device=device, val_only=True)
        stage1_seconds = time.perf_counter() - start
        del t
        gc.collect()
    else:
        print(f"\n{stamp()} [4/7] no chain trained on {DOMAIN_FOLD}: no stage-1-alone evaluation")

    first = [t for t, f in trained if f == folds[0]]
    sam_trainer = DEFAULT_TRAINER if DEFAULT_TRAINER in first else first[0]
    val_cases = splits[int(folds[0])]["val"] if folds[0].isdigit() else dsplits[folds[0]]["val"]
    print(f"\n{stamp()} [5/7] samunet_predict -d {DEMO_DATASET_ID} -tr {sam_trainer} -f {folds[0]} on the raw "
          f"images of that fold's validation cases ({', '.join(val_cases)})")
    inp, pred = out / "predict_input", out / "predictions"
    for folder in (inp, pred):
        if folder.exists():
            shutil.rmtree(folder)
    inp.mkdir(parents=True)
    for c in val_cases:
        shutil.copy(raw / "imagesTr" / f"{c}_0000.nii.gz", inp)
    predict_folder(inp, pred, DEMO_DATASET_ID, sam_trainer, [folds[0]], device=device)
    gc.collect()
    ev = evaluate_folder(raw / "labelsTr", pred, raw / "dataset.json", cases=val_cases)
    print(format_eval(ev))

    print(f"\n{stamp()} [6/7] samunet_report -d {DEMO_DATASET_ID}")
    report = build_report(DEMO_DATASET_ID)
    print()
    print(report["markdown"])

    print(f"{stamp()} [7/7] samunet_plot_overlays: the {DOMAIN_FOLD} test cases ({SITE_B}) with their prompts")
    overlay_root = out / "overlays"
    for trainer in (DEFAULT_TRAINER, "ProMISeTrainer"):
        if (trainer, DOMAIN_FOLD) in trained:
            files = plot_overlays(DEMO_DATASET_ID, trainer, DOMAIN_FOLD, overlay_root / trainer, split="test", worst=3)
            print(f"  {trainer}: {', '.join(str(f) for f in files)}")
    gc.collect()

    if stage1 and (DEFAULT_TRAINER, DOMAIN_FOLD) in trained:
        rows = comparison_rows(stage1, DOMAIN_FOLD, with_resnet=("ResNetTrainer", DOMAIN_FOLD) in trained)
        entry = next(o for t, _, _, o in schedule if t == DEFAULT_TRAINER)
        how = f"time budget {entry['time_budget']}" if budgeted else "short demo schedule"
        times = [(f"chain training: encoding, stage 1, decoder, validation ({how})",
                  train_seconds[(DEFAULT_TRAINER, DOMAIN_FOLD)]),
                 ("stage 1 alone on the test cases", stage1_seconds),
                 ("whole demo", time.perf_counter() - t0)]
        test_cases = ", ".join(dsplits[DOMAIN_FOLD]["test"])
        markdown = format_comparison(f"{DOMAIN_FOLD}: trained on {SITE_A}, tested on {SITE_B} ({test_cases})",
                                     rows, times)
        table_file = out / "demo_summary.md"
        table_file.write_text(markdown)
        print(f"\n{markdown}")
        report["comparison"] = {"rows": rows, "markdown": markdown, "file": table_file}
    print(f"report: {report['files'][0] if report['files'] else results}")
    print(f"demo finished in {format_duration(time.perf_counter() - t0)}; everything is under {out}")
    return report


def _time_budget(value: str) -> str:
    """``--time_budget`` as given, validated here so a typo fails before any work."""
    from samunet.training.schedule import parse_duration

    if value.strip().lower() not in ("none", "off", "plan", "auto"):
        try:
            parse_duration(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="samunet_demo", description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output_dir", default="samunet_demo_output", help="work folder (default %(default)s)")
    parser.add_argument("-np", type=int, default=2, help="worker processes (default %(default)s)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--all_trainers", action="store_true",
                       help="train all four trainers (" + ", ".join(t for t, *_ in DEMO_SCHEDULE) + ") with a "
                            "short fixed schedule on CV fold 0 and the domain fold, instead of only the default "
                            f"chain ({DEFAULT_TRAINER}, time-budgeted, on {DOMAIN_FOLD})")
    which.add_argument("-tr", nargs="+", default=None, choices=[t for t, *_ in DEMO_SCHEDULE],
                       help="like --all_trainers, but only these trainers")
    parser.add_argument("--time_budget", type=_time_budget, default=None, metavar="DURATION",
                        help=f"wall-clock budget of the default chain's training, e.g. 6m, 90s, 1800 (seconds), or "
                             f"none for the plan's schedule (default {DEFAULT_TIME_BUDGET}: the whole demo then takes "
                             "about 10 minutes on 2 CPU cores). Not with -tr/--all_trainers")
    parser.add_argument("-f", nargs="+", default=None,
                        help=f"folds (default: {DOMAIN_FOLD}; with -tr/--all_trainers: 0 {DOMAIN_FOLD})")
    parser.add_argument("-device", default=None, choices=["cpu", "cuda"])
    args = parser.parse_args(argv)
    schedule = None
    if args.all_trainers or args.tr:
        if args.time_budget is not None:
            parser.error("--time_budget sizes the default chain run; -tr/--all_trainers use the short fixed demo "
                         "schedule")
        schedule = [s for s in DEMO_SCHEDULE if args.all_trainers or s[0] in args.tr]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        run_demo(args.output_dir, args.np, args.device, schedule, tuple(args.f) if args.f else None,
                 time_budget=args.time_budget or DEFAULT_TIME_BUDGET)
    except Exception as e:  # the demo is the first thing a newcomer runs: say what failed plainly
        sys.exit(f"demo failed: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
