"""The main job end to end on the bundled demo data (6 prostate MRI volumes).

convert -> integrity check -> fingerprint -> plan -> preprocess -> splits -> train fold 0
with the default SAMMed chain (stage-1 ResNet, embedding cache, SAM decoder fine-tuning;
a short schedule) -> predict the fold's validation images from raw NIfTI -> evaluate
(Dice and NSD per case and class) -> print the tables, including stage 1 alone and the
oracle reference-box prompt for comparison.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from samunet.demo_data import PROSTATE_RUNMC6

logger = logging.getLogger(__name__)

DEMO_DATASET_ID = 990
DEMO_DATASET_NAME = "DemoProstate"


def _set_roots(out: Path) -> None:
    for var, sub in (("SAMUNET_raw", "raw"), ("SAMUNET_preprocessed", "preprocessed"), ("SAMUNET_results", "results")):
        os.environ[var] = str(out / sub)


def run_demo(output_dir: str | Path, num_processes: int = 2, epochs: int = 3, iterations: int = 15,
             trainer: str = "SAMBoxTrainer", device: str | None = None, stage1_epochs: int = 4,
             stage1_iterations: int = 15) -> dict:
    """Run the demo with all three roots under ``output_dir``; returns the evaluation summary."""
    from samunet.dataset_conversion.convert_nifti_pairs import convert_nifti_pairs
    from samunet.evaluation.evaluate import evaluate_folder, format_summary as format_eval
    from samunet.experiment_planning.plan_and_preprocess import format_summary, plan_and_preprocess
    from samunet.inference.predictor import predict_folder
    from samunet.run.train import train
    from samunet.utilities.file_io import load_json

    out = Path(output_dir).resolve()
    _set_roots(out)
    t0 = time.perf_counter()
    print(f"[1/5] converting the bundled prostate MRI (6 cases, labels PZ=1, CG=2) into {out / 'raw'}")
    raw = convert_nifti_pairs(PROSTATE_RUNMC6 / "images", PROSTATE_RUNMC6 / "masks", DEMO_DATASET_ID,
                              DEMO_DATASET_NAME, mask_suffix="_Segmentation", overwrite=True,
                              label_names=["PZ", "CG"])
    print("[2/5] samunet_plan_and_preprocess: integrity check, fingerprint, plan, preprocessing, splits")
    summary = plan_and_preprocess(DEMO_DATASET_ID, num_processes=num_processes, clean=True)
    print()
    print(format_summary(summary))
    splits = load_json(Path(summary["preprocessed_folder"]) / "splits_final.json")
    print("\nfive-fold cross-validation (splits_final.json):")
    for i, s in enumerate(splits):
        print(f"  fold {i}: train {', '.join(s['train'])} | val {', '.join(s['val'])}")

    print(f"\n[3/5] samunet_train {DEMO_DATASET_ID} 0 -tr {trainer} --epochs {epochs} --iters {iterations} "
          f"--stage1_epochs {stage1_epochs} --stage1_iters {stage1_iterations}\n"
          "      (a short demo schedule; the plan's default is much longer. SAM trainers first train the "
          "stage-1 ResNet and encode every slice once into the embedding cache)")
    results = out / "results"
    if results.exists():
        shutil.rmtree(results)
    t = train(DEMO_DATASET_ID, 0, trainer, device=device, num_epochs=epochs, num_iterations=iterations,
              stage1_epochs=stage1_epochs, stage1_iters=stage1_iterations)
    val_cases = splits[0]["val"]

    print(f"[4/5] samunet_predict on the raw images of fold 0's validation cases ({', '.join(val_cases)})")
    inp, pred = out / "predict_input", out / "predictions"
    for folder in (inp, pred):
        if folder.exists():
            shutil.rmtree(folder)
    inp.mkdir(parents=True)
    for c in val_cases:
        shutil.copy(raw / "imagesTr" / f"{c}_0000.nii.gz", inp)
    predict_folder(inp, pred, DEMO_DATASET_ID, trainer, [0], device=device)

    print("[5/5] samunet_evaluate: Dice and NSD (2 mm) against the expert masks\n")
    ev = evaluate_folder(raw / "labelsTr", pred, raw / "dataset.json", cases=val_cases)
    print(format_eval(ev))
    print("\nfold 0 validation, mean foreground Dice / NSD (from each run's summary.json):")
    rows = [("ResNetTrainer", "stage 1 alone", results / "Dataset990_DemoProstate" / "ResNetTrainer__samunetPlans"
             / "fold_0" / "validation"),
            (trainer, "automatic prompts", t.output_folder / "validation"),
            (trainer, "reference box (oracle upper bound)", t.output_folder / "validation_gt_box"),
            (trainer, "whole-slice box", t.output_folder / "validation_full_box")]
    for name, what, folder in rows:
        if (folder / "summary.json").is_file():
            fm = load_json(folder / "summary.json")["foreground_mean"]
            print(f"  {name:<15} {what:<36} Dice {fm['Dice'] or 0:.3f}  NSD {fm['NSD'] or 0:.3f}")
    print(f"\ntraining log and curves: {t.output_folder}/training_log.json, progress.png")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; everything is under {out}")
    return ev


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="samunet_demo", description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output_dir", default="samunet_demo_output", help="work folder (default %(default)s)")
    parser.add_argument("-np", type=int, default=2, help="worker processes (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (default %(default)s, a demo schedule)")
    parser.add_argument("--iters", type=int, default=15, help="iterations per epoch (default %(default)s)")
    parser.add_argument("--stage1_epochs", type=int, default=4, help="stage-1 epochs (default %(default)s)")
    parser.add_argument("--stage1_iters", type=int, default=15, help="stage-1 iterations per epoch (default %(default)s)")
    parser.add_argument("-tr", default="SAMBoxTrainer", help="trainer (default %(default)s)")
    parser.add_argument("-device", default=None, choices=["cpu", "cuda"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        run_demo(args.output_dir, args.np, args.epochs, args.iters, args.tr, args.device, args.stage1_epochs,
                 args.stage1_iters)
    except Exception as e:  # the demo is the first thing a newcomer runs: say what failed plainly
        sys.exit(f"demo failed: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
