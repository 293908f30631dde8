"""The main job end to end on the bundled demo data (6 prostate MRI volumes, two "sites").

convert (with a ``domains`` CSV) -> integrity check -> fingerprint -> plan -> preprocess ->
five-fold and domain-hold-out splits -> train every trainer (ResNet stage 1, the SAMMed
chain, ProMISe, the AutoMedSAM class-prompt variant) with a short schedule on CV fold 0 and
on the domain fold ``domain_RUNMC`` -> predict raw images with ``samunet_predict`` ->
evaluate (Dice and NSD per case, class and domain) -> ``samunet_report`` tables and charts
-> overlay PNGs with the prompts drawn.

The bundled cases all come from one site (Radboud, 3T). To show the domain-hold-out
protocol without a second licensed dataset, cases 03-05 are turned into a *simulated second
site* ("RUNMC-shifted"): a smooth multiplicative bias field, a different contrast (gamma),
extra noise and slight blur, geometry and masks unchanged (:func:`simulate_scanner_shift`).
That is an intensity shift, not a real scanner change: demo numbers show the pipeline works,
they do not measure generalisation.
"""

from __future__ import annotations

import argparse
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
# (trainer, epochs, iterations per epoch, extra options): a demo schedule, far below the plan's
DEMO_SCHEDULE = (
    ("ResNetTrainer", 4, 15, {}),
    ("ProMISeTrainer", 3, 8, {"points": 5, "batch_size": 4}),  # first: one encoder pass fills both caches
    ("SAMBoxTrainer", 3, 15, {}),
    ("ClassPromptTrainer", 3, 8, {"width": 0.25, "batch_size": 4}),
)


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


def run_demo(output_dir: str | Path, num_processes: int = 2, device: str | None = None,
             schedule=DEMO_SCHEDULE, folds=("0", DOMAIN_FOLD)) -> dict:
    """Run the demo with all three roots under ``output_dir``; returns the report
    (:func:`samunet.evaluation.report.build_report`)."""
    from samunet.dataset_conversion.convert_nifti_pairs import convert_nifti_pairs
    from samunet.evaluation.evaluate import evaluate_folder, format_summary as format_eval
    from samunet.evaluation.overlays import plot_overlays
    from samunet.evaluation.report import build_report
    from samunet.experiment_planning.plan_and_preprocess import format_summary, plan_and_preprocess
    from samunet.inference.predictor import predict_folder
    from samunet.run.train import train
    from samunet.utilities.file_io import load_json

    out = Path(output_dir).resolve()
    _set_roots(out)
    t0 = time.perf_counter()

    def stamp() -> str:
        return f"[{time.perf_counter() - t0:5.0f} s]"

    print(f"{stamp()} [1/6] converting the bundled prostate MRI (6 cases, labels PZ=1, CG=2; sites {SITE_A} = "
          f"Case00-02 and {SITE_B} = Case03-05, a simulated scanner shift) into {out / 'raw'}")
    staging = out / "demo_input"
    if staging.exists():
        shutil.rmtree(staging)
    images, masks, domains_csv = stage_demo_data(staging)
    raw = convert_nifti_pairs(images, masks, DEMO_DATASET_ID, DEMO_DATASET_NAME, mask_suffix="_Segmentation",
                              domains_csv=domains_csv, overwrite=True, label_names=["PZ", "CG"])
    print(f"{stamp()} [2/6] samunet_plan_and_preprocess: integrity check, fingerprint, plan, preprocessing, splits")
    summary = plan_and_preprocess(DEMO_DATASET_ID, num_processes=num_processes, clean=True)
    print()
    print(format_summary(summary))
    pre = Path(summary["preprocessed_folder"])
    splits = load_json(pre / "splits_final.json")
    dsplits = load_json(pre / "splits_domains.json")
    print(f"\n  CV fold 0: train {', '.join(splits[0]['train'])} | val {', '.join(splits[0]['val'])}")
    d = dsplits.get(DOMAIN_FOLD)
    if d:
        print(f"  {DOMAIN_FOLD}: train {', '.join(d['train'])} | val {', '.join(d['val'])} | "
              f"test {', '.join(d['test'])}")

    results = out / "results"
    if results.exists():
        shutil.rmtree(results)
    trained = {}
    n_runs = len(schedule) * len(folds)
    print(f"\n{stamp()} [3/6] training {len(schedule)} trainers x {len(folds)} folds with a short demo schedule "
          "(the plan's defaults are far longer). SAM trainers encode every slice once into the embedding cache; "
          "SAMBoxTrainer reuses the ResNetTrainer of its fold as stage 1.")
    k = 0
    for fold in folds:
        for trainer, epochs, iters, options in schedule:
            k += 1
            opts = " ".join(f"--opt {key}={v}" if key != "points" else f"--points {v}" for key, v in options.items())
            print(f"\n{stamp()} ({k}/{n_runs}) samunet_train {DEMO_DATASET_ID} {fold} -tr {trainer} "
                  f"--epochs {epochs} --iters {iters} {opts}".rstrip())
            t = train(DEMO_DATASET_ID, fold, trainer, device=device, num_epochs=epochs, num_iterations=iters,
                      **options)
            trained[(trainer, fold)] = t

    fold0 = [t for t, f in trained if f == folds[0]]
    sam_trainer = "SAMBoxTrainer" if "SAMBoxTrainer" in fold0 else fold0[0]
    val_cases = splits[int(folds[0])]["val"] if folds[0].isdigit() else dsplits[folds[0]]["val"]
    print(f"\n{stamp()} [4/6] samunet_predict -d {DEMO_DATASET_ID} -tr {sam_trainer} -f {folds[0]} on the raw "
          f"images of that fold's validation cases ({', '.join(val_cases)})")
    inp, pred = out / "predict_input", out / "predictions"
    for folder in (inp, pred):
        if folder.exists():
            shutil.rmtree(folder)
    inp.mkdir(parents=True)
    for c in val_cases:
        shutil.copy(raw / "imagesTr" / f"{c}_0000.nii.gz", inp)
    predict_folder(inp, pred, DEMO_DATASET_ID, sam_trainer, [folds[0]], device=device)
    ev = evaluate_folder(raw / "labelsTr", pred, raw / "dataset.json", cases=val_cases)
    print(format_eval(ev))

    print(f"\n{stamp()} [5/6] samunet_report -d {DEMO_DATASET_ID}")
    report = build_report(DEMO_DATASET_ID)
    print()
    print(report["markdown"])

    print(f"{stamp()} [6/6] samunet_plot_overlays: the {DOMAIN_FOLD} test cases ({SITE_B}) with their prompts")
    overlay_root = out / "overlays"
    for trainer in ("SAMBoxTrainer", "ProMISeTrainer"):
        if (trainer, DOMAIN_FOLD) in trained:
            files = plot_overlays(DEMO_DATASET_ID, trainer, DOMAIN_FOLD, overlay_root / trainer, split="test", worst=3)
            print(f"  {trainer}: {', '.join(str(f) for f in files)}")
    print(f"\nreport: {report['files'][0] if report['files'] else results}")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; everything is under {out}")
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="samunet_demo", description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output_dir", default="samunet_demo_output", help="work folder (default %(default)s)")
    parser.add_argument("-np", type=int, default=2, help="worker processes (default %(default)s)")
    parser.add_argument("-tr", nargs="+", default=None, choices=[t for t, *_ in DEMO_SCHEDULE],
                        help="only these trainers (default: all four)")
    parser.add_argument("-f", nargs="+", default=["0", DOMAIN_FOLD], help="folds (default: %(default)s)")
    parser.add_argument("-device", default=None, choices=["cpu", "cuda"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    schedule = [s for s in DEMO_SCHEDULE if args.tr is None or s[0] in args.tr]
    try:
        run_demo(args.output_dir, args.np, args.device, schedule, tuple(args.f))
    except Exception as e:  # the demo is the first thing a newcomer runs: say what failed plainly
        sys.exit(f"demo failed: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
