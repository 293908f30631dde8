"""SAM-stage speed: training iterations from the embedding cache vs with the encoder in the
loop, and seconds per slice of chained prediction (stage 1 -> boxes -> SAM -> export).

    python benchmarks/bench_sam_stage.py [--work /tmp/samunet_bench] [--iters 10]

Uses the bundled demo data (6 prostate MRI volumes). Prints numbers and ratios; it
asserts nothing. Run it on an otherwise idle machine for meaningful timings.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/samunet_bench")
    ap.add_argument("--iters", type=int, default=10, help="timed training iterations per mode")
    args = ap.parse_args()
    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    for var, sub in (("SAMUNET_raw", "raw"), ("SAMUNET_preprocessed", "pre"), ("SAMUNET_results", "res")):
        os.environ[var] = str(work / sub)

    from samunet.dataset_conversion.convert_nifti_pairs import convert_nifti_pairs
    from samunet.demo_data import PROSTATE_RUNMC6
    from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess
    from samunet.inference.predictor import predict_folder
    from samunet.run.train import train
    from samunet.sam.embedding_cache import encode_volume
    from samunet.training.trainers.sam_box_trainer import SAMBoxTrainer

    raw = convert_nifti_pairs(PROSTATE_RUNMC6 / "images", PROSTATE_RUNMC6 / "masks", 991, "Bench",
                              mask_suffix="_Segmentation", overwrite=True)
    plan_and_preprocess(991, num_processes=2)
    print(f"torch threads: {torch.get_num_threads()}")

    # stage 1 (short) so that the chain has boxes; then a SAM trainer with its cache built
    t0 = time.perf_counter()
    trainer = SAMBoxTrainer(991, 0, device="cpu", num_epochs=1, num_iterations_per_epoch=1,
                            stage1_epochs=2, stage1_iters=10)
    trainer.ensure_stage1()
    trainer.initialize()
    t1 = time.perf_counter()
    trainer.make_datasets()  # builds the embedding cache for all cases of the fold
    t_cache = time.perf_counter() - t1
    n_slices = sum(trainer.cache.load(c).shape[0] for c in trainer.split["train"] + trainer.split["val"])
    print(f"embedding cache: {n_slices} slices in {t_cache:.1f} s ({t_cache / n_slices:.2f} s/slice incl. "
          f"stage-1 boxes), {trainer.cache.size_bytes() / n_slices / 2**20:.2f} MiB/slice on disk")

    # (a) decoder-only iterations from the cache
    for _ in range(2):
        trainer.train_step(trainer.next_train_batch())  # warm-up
    t = time.perf_counter()
    for _ in range(args.iters):
        trainer.train_step(trainer.next_train_batch())
    cached = (time.perf_counter() - t) / args.iters

    # (b) the same iterations with the frozen encoder in the loop (what the cache saves)
    from samunet.preprocessing.preprocessor import load_preprocessed_case

    data_by_case = {c: load_preprocessed_case(trainer.data_folder, c)[0] for c in trainer.split["train"]}
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for _ in range(max(2, args.iters // 3)):
        batch = trainer.next_train_batch()
        idx = rng.integers(len(trainer.train_prompts), size=trainer.batch_size)
        embs = []
        for i in idx:
            case, z, _, _ = trainer.train_prompts[i]
            e, _ = encode_volume(trainer.sam, data_by_case[case][:, z:z + 1])
            embs.append(torch.from_numpy(e[0]))
        batch["embeddings"] = torch.stack(embs)
        trainer.train_step(batch)
    uncached = (time.perf_counter() - t) / max(2, args.iters // 3)
    ipe = trainer.plans["sam"]["num_iterations_per_epoch"]
    print(f"SAM-stage training, batch {trainer.batch_size}: {cached:.2f} s/iteration from the cache, "
          f"{uncached:.2f} s/iteration with the encoder in the loop")
    print(f"  per epoch of {ipe} iterations: {cached * ipe:.0f} s cached vs {uncached * ipe:.0f} s -> "
          f"speed-up x{uncached / cached:.1f}")

    # chained prediction from raw NIfTI: stage 1 -> boxes -> encoder -> decoder -> export
    train(991, 0, "SAMBoxTrainer", device="cpu", num_epochs=1, num_iterations=2, skip_validation=True)
    inp = work / "in"
    inp.mkdir()
    val = trainer.split["val"]
    for c in val:
        shutil.copy(raw / "imagesTr" / f"{c}_0000.nii.gz", inp)
    slices = sum(load_preprocessed_case(trainer.data_folder, c)[0].shape[1] for c in val)
    t = time.perf_counter()
    predict_folder(inp, work / "out", 991, "SAMBoxTrainer", [0], device="cpu")
    dt = time.perf_counter() - t
    print(f"chained prediction: {len(val)} cases, {slices} slices in {dt:.1f} s -> {dt / slices:.2f} s/slice "
          "(includes reading, preprocessing, stage 1, SAM encoder on slices with a box, decoder, export)")
    print(f"total benchmark time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
