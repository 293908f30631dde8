"""samunet's speed and memory targets in one table, each with its ratio to a baseline measured
in the same run; the table is printed and written as JSON.

    python benchmarks/run_all.py [--work /tmp/samunet_bench_all] [--runs 5] [--nnunet_python PATH]
                                 [--json benchmarks/results.json] [--skip pp,encoder,training,prediction]

Each figure is the median of ``--runs`` (>= 5) runs after one warm-up. Data: the bundled demo
(6 prostate T2w volumes, 320² x 15-24 slices, labels 1 and 2). Rows:

- ``encoder``: LiteMedSAM image encoder, seconds per 256² slice, eager PyTorch fp32 (baseline)
  vs every installed backend (max abs difference to eager on real slices), and bf16 where the
  CPU computes it natively (with the Dice of box-prompted LiteMedSAM on the demo, bf16 vs fp32);
- ``training``: SAM-stage (SAMBoxTrainer) epoch from the embedding cache vs with the frozen
  encoder (eager PyTorch) in the loop;
- ``prediction``: chained 3D prediction (read, preprocess, stage 1, boxes, SAM, export) in
  seconds per slice, prompts on every slice (``full_box``: the encoder runs on all slices, the
  worst case) and ``auto``, fast backend vs eager PyTorch; peak RSS of one ``samunet_predict``
  process on a 384 x 384 x 24 volume;
- ``pp``: ``samunet_plan_and_preprocess`` vs nnU-Net v2's ``nnUNetv2_plan_and_preprocess -c 2d``
  on the same raw dataset with the same worker count, both with their integrity check, each a
  fresh process (peak RSS included). nnU-Net v2 is not a samunet dependency: it runs from its own
  venv (``bash benchmarks/make_nnunet_venv.sh`` makes ``benchmarks/.nnunet_venv``); without it
  the row says so and is skipped.

Timings on a shared or busy machine are inflated: run it on an idle one and quote the load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROWS: list[dict] = []


def row(group: str, what: str, value: float | None, unit: str, baseline: float | None = None, target: str = "",
        note: str = "", peak_rss_mib: float | None = None, higher_is_better: bool = False) -> dict:
    ratio = None
    if value is not None and baseline:
        ratio = value / baseline if higher_is_better else baseline / value
    r = {"group": group, "what": what, "value": value, "unit": unit, "baseline": baseline,
         "speedup_vs_baseline": ratio, "target": target, "note": note, "peak_rss_mib": peak_rss_mib}
    ROWS.append(r)
    print(format_row(r), flush=True)
    return r


def format_row(r: dict) -> str:
    v = "skipped" if r["value"] is None else f"{r['value']:.3f} {r['unit']}"
    b = "" if r["baseline"] is None else f"{r['baseline']:.3f}"
    x = "" if r["speedup_vs_baseline"] is None else f"x{r['speedup_vs_baseline']:.1f}"
    m = "" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.0f}"
    return f"{r['group']:<11}| {r['what']:<52}| {v:>18} | {b:>9} | {x:>7} | {m:>6} | {r['target']:<12}| {r['note']}"


def header() -> str:
    h = (f"{'group':<11}| {'what':<52}| {'value':>18} | {'baseline':>9} | {'ratio':>7} | {'RSS':>6} | "
         f"{'target':<12}| note")
    return h + "\n" + "-" * len(h)


def median_time(fn, runs: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run_measured(cmd: list[str], env: dict | None = None) -> dict:
    """A fresh process under benchmarks/peak_rss.py: wall time and peak RSS."""
    out = subprocess.run([sys.executable, str(HERE / "peak_rss.py"), "--", *cmd], capture_output=True, text=True,
                         env={**os.environ, **(env or {})})
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res['rc']}): {res['stderr_tail']}")
    return res


# ---------------------------------------------------------------------------- setup
def setup_raw(work: Path) -> Path:
    for var, sub in (("SAMUNET_raw", "raw"), ("SAMUNET_preprocessed", "pre"), ("SAMUNET_results", "res")):
        os.environ[var] = str(work / sub)
    from samunet.dataset_conversion.convert_nifti_pairs import convert_nifti_pairs
    from samunet.demo_data import PROSTATE_RUNMC6

    return convert_nifti_pairs(PROSTATE_RUNMC6 / "images", PROSTATE_RUNMC6 / "masks", 991, "BenchAll",
                               mask_suffix="_Segmentation", overwrite=True)


def demo_slices(n: int = 6):
    """``n`` real slices (C=1) of the demo volumes, z-scored, with their labels."""
    import SimpleITK as sitk

    from samunet.demo_data import PROSTATE_RUNMC6

    imgs, segs = [], []
    for f in sorted((PROSTATE_RUNMC6 / "images").glob("*.nii.gz")):
        img = sitk.GetArrayFromImage(sitk.ReadImage(str(f))).astype(np.float32)
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(PROSTATE_RUNMC6 / "masks" / f.name.replace(".nii.gz", "_Segmentation.nii.gz"))))
        img = (img - img.mean()) / img.std()
        for z in np.flatnonzero((seg > 0).any((1, 2))):
            imgs.append(img[z][None])
            segs.append(seg[z])
    step = max(1, len(imgs) // n)
    return imgs[::step][:n], segs[::step][:n], imgs, segs


# ---------------------------------------------------------------------------- rows
def bench_encoder(runs: int) -> None:
    import torch

    from samunet.sam import encoder_backends as eb
    from samunet.sam.registry import build_sam

    sam = build_sam("lite_medsam", device="cpu")
    imgs, _, _, _ = demo_slices(runs + 1)
    batch = [sam.prepare_images(torch.from_numpy(i)[None])[0] for i in imgs]
    it = iter(range(10**9))

    def timed(encode):
        return median_time(lambda: encode(batch[next(it) % len(batch)]), runs)

    ref = torch.cat([sam.encode(x) for x in batch])
    eager = timed(sam.encode)
    row("encoder", "eager PyTorch fp32 (baseline)", eager, "s/slice", eager, "",
        f"{torch.get_num_threads()} threads")
    best = None
    for backend in ("onnxruntime", "openvino"):
        if not eb.backend_installed(backend):
            row("encoder", f"{backend} fp32", None, "s/slice", eager, "<= 0.30", f"not installed: {eb.INSTALL_HINT[backend]}")
            continue
        enc = eb.build_encoder("lite_medsam", backend, sam=sam)
        diff = float((torch.cat([enc(x) for x in batch]) - ref).abs().max())
        t = timed(enc)
        row("encoder", f"{backend} fp32", t, "s/slice", eager, "<= 0.30", f"max |diff| to eager {diff:.1e} (<= 1e-3)")
        best = t if best is None else min(best, t)
    auto = eb.build_encoder("lite_medsam", "auto", sam=sam)
    row("encoder", f"auto -> {auto.backend}", timed(auto), "s/slice", eager, "<= 0.30")
    if not eb.bf16_supported("cpu"):
        row("encoder", "bf16 (reduced precision)", None, "s/slice", eager, "<= 0.15",
            "this CPU has no native bf16 (avx512_bf16/amx_bf16): refused, as samunet does")
        return
    fp32_dice = gt_box_dice(sam, None)
    for backend in ("openvino", "torch"):
        if not eb.backend_installed(backend):
            continue
        enc = eb.build_encoder("lite_medsam", backend, precision="bf16", sam=sam)
        t = timed(enc)
        d = gt_box_dice(sam, enc)
        row("encoder", f"{backend} bf16", t, "s/slice", eager, "<= 0.15",
            f"Dice {100 * d:.2f} vs fp32 {100 * fp32_dice:.2f} (|diff| <= 0.5 pt)")


def gt_box_dice(sam, encoder) -> float:
    """Mean Dice of LiteMedSAM prompted with each label's reference box on the demo slices
    (encoder None: eager fp32)."""
    import torch

    from samunet.sam.prompts import mask_box

    _, _, imgs, segs = demo_slices()
    dices = []
    with torch.no_grad():
        for img, seg in zip(imgs, segs):
            x, hw = sam.prepare_images(torch.from_numpy(img)[None])
            emb = sam.encode(x) if encoder is None else encoder(x)
            for label in (1, 2):
                m = seg == label
                if not m.any():
                    continue
                b = sam.scale_boxes(torch.as_tensor(mask_box(m)[None], dtype=torch.float32), m.shape)
                sparse, dense = sam.encode_prompts(boxes=b)
                logits, _ = sam.decode(emb, sparse, dense)
                p = sam.postprocess_logits(logits, hw, m.shape)[0, 0].numpy() > 0
                dices.append(2 * (p & m).sum() / max(1, p.sum() + m.sum()))
    return float(np.mean(dices))


def bench_training(runs: int) -> None:
    import torch

    from samunet.preprocessing.preprocessor import load_preprocessed_case
    from samunet.sam.embedding_cache import encode_volume
    from samunet.training.trainers.sam_box_trainer import SAMBoxTrainer

    trainer = SAMBoxTrainer(991, 0, device="cpu", num_epochs=1, num_iterations_per_epoch=1, stage1_epochs=2,
                            stage1_iters=10)
    trainer.ensure_stage1()
    trainer.initialize()
    t = time.perf_counter()
    trainer.make_datasets()  # builds the embedding cache (auto backend)
    t_cache = time.perf_counter() - t
    n = sum(trainer.cache.load(c).shape[0] for c in trainer.split["train"] + trainer.split["val"])
    row("training", "embedding cache build (incl. stage-1 boxes)", t_cache / n, "s/slice", note=f"{n} slices, "
        f"backend {trainer.sam.frozen_encoder.backend}")
    cached = median_time(lambda: trainer.train_step(trainer.next_train_batch()), runs, warmup=2)
    data = {c: load_preprocessed_case(trainer.data_folder, c)[0] for c in trainer.split["train"]}
    eager = trainer.sam  # the baseline: the frozen encoder (eager PyTorch) in every iteration
    rng = np.random.default_rng(0)

    def uncached_step():
        batch = trainer.next_train_batch()
        embs = []
        for i in rng.integers(len(trainer.train_prompts), size=len(batch["boxes"])):
            case, z, _, _ = trainer.train_prompts[i]
            sl = torch.from_numpy(np.ascontiguousarray(data[case][:, z:z + 1].transpose(1, 0, 2, 3)))
            embs.append(eager.encode(eager.prepare_images(sl)[0], eager=True)[0])
        batch["embeddings"] = torch.stack(embs)
        trainer.train_step(batch)

    uncached = median_time(uncached_step, runs, warmup=1)
    ipe = trainer.plans["sam"]["num_iterations_per_epoch"]
    row("training", f"epoch, encoder in the loop (baseline), batch {trainer.batch_size}", uncached * ipe, "s/epoch",
        uncached * ipe, "", f"{ipe} iterations")
    row("training", "epoch from the embedding cache", cached * ipe, "s/epoch", uncached * ipe, ">= x15")
    return trainer


def bench_prediction(work: Path, runs: int) -> None:
    from samunet.inference.predictor import predict_folder
    from samunet.run.train import train
    from samunet.sam.embedding_lru import prediction_lru

    train(991, 0, "SAMBoxTrainer", device="cpu", num_epochs=1, num_iterations=2, skip_validation=True,
          stage1_epochs=2, stage1_iters=10)
    raw = Path(os.environ["SAMUNET_raw"]) / "Dataset991_BenchAll"
    inp = work / "pred_in"
    shutil.rmtree(inp, ignore_errors=True)
    inp.mkdir()
    case = "Case02"  # 24 slices
    shutil.copy(raw / "imagesTr" / f"{case}_0000.nii.gz", inp)
    import SimpleITK as sitk

    slices = sitk.ReadImage(str(inp / f"{case}_0000.nii.gz")).GetSize()[2]
    for prompt in ("full_box", "auto"):
        res = {}
        for backend in ("torch", "auto"):
            def once():
                prediction_lru().clear()  # every run encodes from scratch
                predict_folder(inp, work / f"pred_out_{backend}", 991, "SAMBoxTrainer", [0], device="cpu",
                               prompt=prompt, encoder_backend=backend)
            res[backend] = median_time(once, runs) / slices
        row("prediction", f"chained 3D, --prompt {prompt}, eager PyTorch (baseline)", res["torch"], "s/slice",
            res["torch"], "", f"{case}, {slices} slices, 1 fold")
        row("prediction", f"chained 3D, --prompt {prompt}, auto backend", res["auto"], "s/slice", res["torch"],
            "<= 0.6" if prompt == "full_box" else "")
    # peak memory of one prediction process on a 384 x 384 x 24 volume (the demo case resampled)
    big = work / "pred_big"
    shutil.rmtree(big, ignore_errors=True)
    big.mkdir()
    img = sitk.ReadImage(str(inp / f"{case}_0000.nii.gz"))
    size = (384, 384, 24)
    spacing = [img.GetSpacing()[i] * img.GetSize()[i] / size[i] for i in range(3)]
    res_img = sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), spacing,
                            img.GetDirection(), 0.0, img.GetPixelID())
    sitk.WriteImage(res_img, str(big / "Big_0000.nii.gz"))
    m = run_measured([sys.executable, "-m", "samunet.inference.predictor", "-i", str(big), "-o", str(work / "pred_big_out"),
                      "-d", "991", "-tr", "SAMBoxTrainer", "-f", "0", "--prompt", "full_box", "-device", "cpu"])
    row("prediction", "samunet_predict process, 384x384x24, full_box", m["wall_s"], "s", note="peak RSS in column RSS",
        peak_rss_mib=m["peak_rss_mib"], target="RSS <= 2048")


def bench_plan_and_preprocess(work: Path, runs: int, nnunet_python: str | None, workers: int) -> None:
    sam_cmd = [sys.executable, "-m", "samunet.experiment_planning.plan_and_preprocess", "-d", "991", "-np",
               str(workers), "--clean"]
    sam_runs = [run_measured(sam_cmd) for _ in range(runs + 1)][1:]
    sam_t = statistics.median(r["wall_s"] for r in sam_runs)
    sam_rss = max(r["peak_rss_mib"] for r in sam_runs)
    nn_py = nnunet_python or next((str(p) for p in (HERE / ".nnunet_venv" / "bin" / "python",) if p.is_file()), None)
    ok = False
    if nn_py:
        ok = subprocess.run([nn_py, "-c", "import nnunetv2"], capture_output=True).returncode == 0
    if not ok:
        row("pp", f"samunet_plan_and_preprocess -np {workers}", sam_t, "s", None, "<= nnU-Net",
            "nnU-Net v2 row skipped: no venv with nnunetv2 (bash benchmarks/make_nnunet_venv.sh, or --nnunet_python)",
            peak_rss_mib=sam_rss)
        return
    env = {"nnUNet_raw": os.environ["SAMUNET_raw"], "nnUNet_preprocessed": str(work / "nnunet_pre"),
           "nnUNet_results": str(work / "nnunet_res")}
    entry = ("import sys; from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import "
             "plan_and_preprocess_entry as m; sys.exit(m())")
    nn_cmd = [nn_py, "-c", entry, "-d", "991", "-c", "2d", "-np", str(workers), "-npfp", str(workers),
              "--verify_dataset_integrity", "--clean"]
    nn_runs = []
    for _ in range(runs + 1):
        shutil.rmtree(work / "nnunet_pre", ignore_errors=True)
        nn_runs.append(run_measured(nn_cmd, env))
    nn_runs = nn_runs[1:]
    nn_t = statistics.median(r["wall_s"] for r in nn_runs)
    row("pp", f"nnUNetv2_plan_and_preprocess -c 2d -np {workers} (baseline)", nn_t, "s", nn_t, "",
        "with --verify_dataset_integrity", peak_rss_mib=max(r["peak_rss_mib"] for r in nn_runs))
    row("pp", f"samunet_plan_and_preprocess -np {workers}", sam_t, "s", nn_t, "<= nnU-Net (x>=1)",
        "with its integrity check", peak_rss_mib=sam_rss)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/samunet_bench_all")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per figure after one warm-up (default 5)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes for plan-and-preprocess (both tools)")
    ap.add_argument("--nnunet_python", default=None, help="python of a venv with nnunetv2 (default benchmarks/.nnunet_venv)")
    ap.add_argument("--json", default=str(HERE / "results.json"))
    ap.add_argument("--skip", default="", help="comma-separated groups to skip: pp, encoder, training, prediction")
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would break the table
    skip = {s for s in args.skip.split(",") if s}
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    import logging

    logging.basicConfig(level=logging.WARNING)
    load = os.getloadavg()
    print(f"samunet benchmarks: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {load[0]:.1f} at start, median of {args.runs} runs after a warm-up")
    print(header())
    t0 = time.perf_counter()
    setup_raw(work)
    if "pp" not in skip:
        bench_plan_and_preprocess(work, args.runs, args.nnunet_python, args.workers)
    else:
        from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess

        plan_and_preprocess(991, num_processes=args.workers)
    if "encoder" not in skip:
        bench_encoder(args.runs)
    if "training" not in skip:
        bench_training(args.runs)
    if "prediction" not in skip:
        bench_prediction(work, args.runs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    end_load = os.getloadavg()
    summary = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "load_average_start": load[0], "load_average_end": end_load[0], "runs": args.runs,
               "benchmark_process_peak_rss_mib": peak, "total_s": time.perf_counter() - t0, "rows": ROWS}
    Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nbenchmark process peak RSS {peak:.0f} MiB; load average {end_load[0]:.1f} at the end; "
          f"{summary['total_s']:.0f} s in all; table written to {args.json}")


if __name__ == "__main__":
    main()
