"""``samunet_demo``: the main job end to end on the bundled demo data.

Today: convert -> integrity check -> fingerprint -> plan -> preprocess -> splits, then
print the plan and the splits. Later stages (train -> predict -> evaluate) extend this
same command as they land.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from samunet.demo_data import PROSTATE_RUNMC6

logger = logging.getLogger(__name__)

DEMO_DATASET_ID = 990
DEMO_DATASET_NAME = "DemoProstate"


def run_demo(output_dir: str | Path, num_processes: int = 2) -> dict:
    """Run the demo with all three roots under ``output_dir``; returns the planning summary."""
    from samunet.dataset_conversion.convert_nifti_pairs import convert_nifti_pairs
    from samunet.experiment_planning.plan_and_preprocess import format_summary, plan_and_preprocess
    from samunet.utilities.file_io import load_json

    out = Path(output_dir).resolve()
    for var, sub in (("SAMUNET_raw", "raw"), ("SAMUNET_preprocessed", "preprocessed"), ("SAMUNET_results", "results")):
        os.environ[var] = str(out / sub)
    t0 = time.perf_counter()
    print(f"[1/2] converting the bundled prostate MRI (6 cases) into {out / 'raw'}")
    raw = convert_nifti_pairs(
        PROSTATE_RUNMC6 / "images", PROSTATE_RUNMC6 / "masks", DEMO_DATASET_ID, DEMO_DATASET_NAME,
        mask_suffix="_Segmentation", overwrite=True,
    )
    print(f"      -> {raw}")
    print("[2/2] samunet_plan_and_preprocess: integrity check, fingerprint, plan, preprocessing, splits")
    summary = plan_and_preprocess(DEMO_DATASET_ID, num_processes=num_processes, clean=True)
    print()
    print(format_summary(summary))
    splits = load_json(Path(summary["preprocessed_folder"]) / "splits_final.json")
    print("\nfive-fold cross-validation (splits_final.json):")
    for i, s in enumerate(splits):
        print(f"  fold {i}: train {', '.join(s['train'])} | val {', '.join(s['val'])}")
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f} s; everything is under {out}")
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="samunet_demo", description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output_dir", default="samunet_demo_output", help="work folder (default %(default)s)")
    parser.add_argument("-np", type=int, default=2, help="worker processes (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        run_demo(args.output_dir, args.np)
    except Exception as e:  # the demo is the first thing a newcomer runs: say what failed plainly
        sys.exit(f"demo failed: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
