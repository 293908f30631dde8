"""Wall time of plan-and-preprocess on the bundled demo data with -np 1 and -np 2.

    python benchmarks/bench_plan_and_preprocess.py [--work /tmp/samunet_bench_pp]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/samunet_bench_pp")
    args = ap.parse_args()
    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    for var, sub in (("SAMUNET_raw", "raw"), ("SAMUNET_preprocessed", "pre"), ("SAMUNET_results", "res")):
        os.environ[var] = str(work / sub)
    from samunet.dataset_conversion.convert_nifti_pairs import convert_nifti_pairs
    from samunet.demo_data import PROSTATE_RUNMC6
    from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess

    convert_nifti_pairs(PROSTATE_RUNMC6 / "images", PROSTATE_RUNMC6 / "masks", 992, "BenchPP",
                        mask_suffix="_Segmentation", overwrite=True)
    for np_ in (1, 2):
        times = []
        for _ in range(3):
            t = time.perf_counter()
            s = plan_and_preprocess(992, num_processes=np_, clean=True)
            times.append(time.perf_counter() - t)
        parts = ", ".join(f"{k} {v:.2f}" for k, v in s["timings_s"].items())
        print(f"-np {np_}: median {sorted(times)[1]:.2f} s over 3 runs (last run: {parts})")


if __name__ == "__main__":
    main()
