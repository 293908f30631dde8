"""Generalisation to an unseen centre, through the product's own training and prediction code.

Train one domain fold (default: ``polyp_dev``, ``domain_KvasirSEG``: 200 Kvasir-SEG frames,
test on 128 CVC-ClinicDB frames from 6 video sequences) with the default chain and the
default time budget, then print one table: Dice and NSD on the held-out domain for

- stage 1 alone (the chain's stage 1; ``--with_resnet`` adds ``ResNetTrainer`` from scratch),
- SAMBox with automatic / whole-image / reference boxes: as chosen on source validation (the
  checkpoint as it predicts), with LiteMedSAM's original decoder, and with the adapted decoder
  (stored in the checkpoint when the choice kept the original one),
- ``--with_promise``: ProMISeTrainer on the same fold and budget,

and the wall time of each stage. Test frames named ``<domain>_<number>`` in runs of consecutive
numbers are video sequences (CVC-ClinicDB's 128 frames come from 6; two of them are numbered
consecutively and count as one run, which only widens the interval): a second table gives Dice per
sequence, and the automatic-box row gets a 90 % interval from resampling whole sequences (frames of one
sequence are near-duplicates, so the sequences, not the frames, are the independent samples).
``--second_check``: prostate MRI across sites instead — train on
the 6 RUNMC volumes of ``prostate_runmc6`` (cut into 2D slices, 8-bit PNG), test on the real 2D
slices of ``multisite_slices`` from 5 other sites (BIDMC, BMC, HK, I2CVB, UCL; 2 slices each) and on
2 RUNMC slices as that collection prepared them (``RUNMCms``), with a table per test site. Only 12
test slices: a check that catches failures (a site at Dice 0), not a measure of small differences.

Usage (2 CPU cores: ~30 min per chain)::

    python benchmarks/bench_generalisation.py --work /tmp/bench_gen
    python benchmarks/bench_generalisation.py --work /tmp/bench_gen_prostate --second_check --time_budget 15m

Numbers depend on the CPU (throughput decides the sized schedule); the table says which CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")), "?")
        flags = next((l for l in out.splitlines() if l.startswith("Flags")), "")
        avx = "avx512_bf16" if "avx512_bf16" in flags else "avx512" if "avx512f" in flags else "no avx512"
        return f"{model} ({avx}, {os.cpu_count()} cores)"
    except OSError:
        return platform.processor() or "?"


def setup_roots(work: Path) -> None:
    for k in ("raw", "preprocessed", "results"):
        (work / k).mkdir(parents=True, exist_ok=True)
        os.environ[f"SAMUNET_{k}"] = str(work / k)


def prepare(source: Path, dataset_id: int, name: str, invert: bool, group_pattern: str | None = None) -> None:
    from samunet.dataset_conversion.convert_2d_folder import convert_2d_folder
    from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess
    from samunet.paths import preprocessed_root

    if not any(Path(os.environ["SAMUNET_raw"]).glob(f"Dataset{dataset_id:03d}_*")):
        convert_2d_folder(source, dataset_id, name, invert_masks=invert, group_pattern=group_pattern)
    if not any(preprocessed_root().glob(f"Dataset{dataset_id:03d}_*/plans.json")):
        plan_and_preprocess(dataset_id, num_processes=2)


def prostate_sites_source(shared: Path, out: Path) -> Path:
    """2D folders for the prostate check: ``RUNMC/`` from the volumes of ``prostate_runmc6`` (every
    axial slice, per-volume 99.5th-percentile scaling to 8 bit, 384², anterior up as in the
    multisite slices, whole gland = label > 0), and one folder per site of ``multisite_slices``
    (its masks inverted back: prostate = 0 there). Written once; returns ``out``."""
    import nibabel as nib
    import numpy as np
    from PIL import Image

    if (out / "done").is_file():
        return out
    vols = shared / "prostate_runmc6"
    for d in ("images", "masks"):
        (out / "RUNMC" / d).mkdir(parents=True, exist_ok=True)
    for img_file in sorted((vols / "images").glob("*.nii.gz")):
        case = img_file.name[: -len(".nii.gz")]
        img = np.asarray(nib.load(img_file).dataobj, dtype=np.float32)
        seg = np.asarray(nib.load(vols / "masks" / f"{case}_Segmentation.nii.gz").dataobj) > 0
        img = np.clip(img / np.percentile(img, 99.5) * 255, 0, 255)
        for z in range(img.shape[2]):
            name = f"{case}_{z:02d}.png"
            Image.fromarray(np.rot90(img[:, :, z], -1).astype(np.uint8)).resize((384, 384), Image.BILINEAR).save(
                out / "RUNMC" / "images" / name)
            Image.fromarray((np.rot90(seg[:, :, z], -1) * 255).astype(np.uint8)).resize(
                (384, 384), Image.NEAREST).save(out / "RUNMC" / "masks" / name)
    sites = shared / "multisite_slices" / "ProstateSlice"
    for site in sorted(p.name for p in sites.iterdir() if p.is_dir()):
        dest = out / ("RUNMCms" if site == "RUNMC" else site)
        for d in ("images", "masks"):
            (dest / d).mkdir(parents=True, exist_ok=True)
        for part in ("train", "test"):  # pair by folder: I2CVB/train's image and mask differ in name
            (image,) = sorted((sites / site / part / "image").glob("*.png"))
            (mask,) = sorted((sites / site / part / "mask").glob("*.png"))
            Image.open(image).save(dest / "images" / f"{part}.png")
            Image.fromarray(((np.asarray(Image.open(mask)) == 0) * 255).astype(np.uint8)).save(
                dest / "masks" / f"{part}.png")
    (out / "done").write_text("ok\n")
    return out


def summary(folder: Path) -> dict:
    f = folder / "summary.json"
    if not f.is_file():
        return {}
    return row(json.loads(f.read_text()))


def row(s: dict | None) -> dict:
    """A table row from an evaluation summary: foreground-mean Dice/NSD, and Dice per domain when
    the test cases come from several."""
    s = s or {}
    per_domain = {d: v["foreground_mean"].get("Dice") for d, v in (s.get("per_domain") or {}).items()}
    per_case = {}  # case -> mean foreground Dice (for the per-sequence table)
    for c in s.get("metric_per_case") or []:
        values = [m["Dice"] for m in c["metrics"].values() if m.get("Dice") is not None]
        if values:
            per_case[c["case"]] = sum(values) / len(values)
    return {**s.get("foreground_mean", {}), **({"per_domain": per_domain} if len(per_domain) > 1 else {}),
            **({"per_case": per_case} if per_case else {})}


def video_sequences(cases) -> dict[str, list[str]]:
    """Runs of consecutive frame numbers among cases named ``<prefix>_<number>``, as
    ``{"<prefix> <first>-<last>": [cases]}``; runs of one frame are dropped (not a sequence)."""
    parsed = sorted((m.group(1), int(m.group(2)), c) for c in cases if (m := re.fullmatch(r"(.*)_(\d+)", c)))
    runs, prev = [], None
    for prefix, n, case in parsed:
        if prev is None or prefix != prev[0] or n != prev[1] + 1:
            runs.append((prefix, n, []))
        runs[-1][2].append(case)
        prev = (prefix, n)
    return {f"{prefix} {first}-{first + len(cs) - 1}": cs for prefix, first, cs in runs if len(cs) > 1}


def sequence_interval(per_case: dict, sequences: dict, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """5th and 95th percentile of the mean frame Dice when whole sequences are resampled with
    replacement (a cluster bootstrap)."""
    import numpy as np

    groups = [[per_case[c] for c in cs if c in per_case] for cs in sequences.values()]
    groups = [g for g in groups if g]
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(draws):
        pick = rng.integers(0, len(groups), len(groups))
        frames = [d for i in pick for d in groups[i]]
        means.append(sum(frames) / len(frames))
    return float(np.percentile(means, 5)), float(np.percentile(means, 95))


def stage_seconds(folder: Path) -> float:
    """Sum of epoch times in a trainer folder's progress record (training only)."""
    import torch

    ckpt = folder / "checkpoint_final.pth"
    if not ckpt.is_file():
        return float("nan")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    epochs = json.loads(state.get("progress", "[]"))
    return float(sum(r.get("epoch_time_s", 0.0) for r in epochs)) if isinstance(epochs, list) else float("nan")


def decoder_rows(dataset_id: int, fold: str, out: Path, which: str, ckpt_state: dict) -> dict | None:
    """SAMBox's checkpoint with LiteMedSAM's ``original`` mask decoder or the ``adapted`` one, SAM's
    masks for every label, on the fold's test cases. ``None`` for ``adapted`` when the checkpoint's
    decoder is the adapted one (the "as chosen" rows are then those). ``ckpt_state``: the loaded
    ``checkpoint_final.pth`` of ``out``."""
    from samunet.evaluation.final_validation import predict_and_evaluate
    from samunet.training.trainers.sam_box_trainer import SAMBoxTrainer

    if which == "adapted" and "adapted_decoder" not in ckpt_state:
        return None
    t = SAMBoxTrainer(dataset_id, fold, device="cpu", time_budget="none")
    t.initialize()
    t.load(t.output_folder / "checkpoint_final.pth", weights_only_network=True)
    t.restore_inference_state(ckpt_state)
    t.cache = t.make_cache()
    t.stage1.sam, t.stage1.cache = t.sam, t.cache
    weights = t.make_sam().mask_decoder.state_dict() if which == "original" else ckpt_state["adapted_decoder"]
    t.sam.mask_decoder.load_state_dict(weights)
    t.final_choice = None  # SAM's masks for every label
    rows = {}
    for mode in ("auto", "full_box", "gt_box"):
        rows[mode] = predict_and_evaluate(t, t.split["test"], out / f"test_{which}_{mode}", mode, prompt=mode)
    return {m: row(r) for m, r in rows.items()}


# ``--fixed_schedule``: what the 30-minute budget sized for polyp_dev on an Intel Xeon with AVX-512 bf16
# (stop 30): the chain's stage 1 (and each out-of-fold head) 6 x 50 iterations, the decoder 2 x 100
FIXED_SCHEDULE = {"stage1_epochs": 6, "stage1_iters": 50, "num_epochs": 2, "num_iterations": 100}


def run_chain(dataset_id: int, fold: str, budget: str, extra: list[str], fixed: bool = False) -> dict:
    from samunet.evaluation.final_validation import train_fold

    times = {}
    t0 = time.perf_counter()
    schedule = dict(FIXED_SCHEDULE) if fixed else {"time_budget": budget}
    trainer = train_fold(dataset_id, fold, "SAMBoxTrainer", device="cpu", **schedule)
    times["chain (encode + stage 1 + decoder + choice + validation)"] = time.perf_counter() - t0
    folder = trainer.output_folder
    s1_folder = trainer.stage1_checkpoint.parent
    stage1_name = trainer.stage1_name
    t1 = time.perf_counter()
    train_fold(dataset_id, fold, stage1_name, device="cpu", val_only=True)  # stage 1 alone on the test domain
    times[f"{stage1_name} validation + test prediction"] = time.perf_counter() - t1
    times[f"{stage1_name} training epochs"] = stage_seconds(s1_folder)
    times["SAMBox decoder training epochs"] = stage_seconds(folder)
    ckpt_state = __import__("torch").load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    choice = json.loads(ckpt_state.get("final_choice", "null"))
    chosen = (choice or {}).get("decoder", "adapted")
    rows = {f"{stage1_name} alone": summary(s1_folder / "test")}
    for mode, label in (("", "auto boxes"), ("_full_box", "whole-image box"), ("_gt_box", "reference box")):
        rows[f"SAMBox {label}, as chosen ({chosen} decoder, final masks)"] = summary(folder / f"test{mode}")
    modes = (("auto", "auto boxes"), ("full_box", "whole-image box"), ("gt_box", "reference box"))
    for which in ("original", "adapted"):
        other = decoder_rows(dataset_id, fold, folder, which, ckpt_state)
        for mode, label in modes if other is not None else ():
            rows[f"SAMBox {label}, {which} decoder"] = other.get(mode, {})
    for name in extra:
        t2 = time.perf_counter()
        other = train_fold(dataset_id, fold, name, device="cpu", time_budget=budget)
        times[f"{name} (train + validation)"] = time.perf_counter() - t2
        rows[f"{name} alone"] = summary(other.output_folder / "test")
    return {"rows": rows, "times": times, "choice": choice, "stage1_name": stage1_name}


def print_table(title: str, result: dict, done_when: bool = True) -> None:
    """The run's tables; ``done_when``: also issue 14's acceptance lines (they are about polyp_dev)."""
    print(f"\n## {title}\n\nCPU: {cpu_name()}\n")
    print("| what (unseen domain) | Dice | NSD |\n|---|---|---|")
    for name, r in result["rows"].items():
        d, n = r.get("Dice"), r.get("NSD")
        print(f"| {name} | {'-' if d is None else f'{d:.3f}'} | {'-' if n is None else f'{n:.3f}'} |")
    domains = sorted({d for r in result["rows"].values() for d in (r.get("per_domain") or {})})
    if domains:
        print(f"\n| Dice per unseen site | {' | '.join(domains)} |\n|---|{'---|' * len(domains)}")
        for name, r in result["rows"].items():
            if r.get("per_domain"):
                cells = (r["per_domain"].get(d) for d in domains)
                print(f"| {name} | {' | '.join('-' if c is None else f'{c:.3f}' for c in cells)} |")
    print_sequences(result["rows"])
    print("\n| stage | wall time |\n|---|---|")
    for name, s in result["times"].items():
        print(f"| {name} | {s:.0f} s |")
    if result.get("choice"):
        c = result["choice"]
        print(f"\nvalidation choice: {c.get('decoder')} decoder, per label {c.get('labels')}; "
              f"source-validation Dice {json.dumps(c.get('validation_dice'))}")
    checks = done_when_checks(result, result.get("stage1_name", "EmbeddingHeadTrainer")) if done_when else []
    if checks:
        print("\n| done-when (issue 14) | measured | met |\n|---|---|---|")
        for what, value, met in checks:
            print(f"| {what} | {value} | {'yes' if met else 'no'} |")


def print_sequences(rows: dict) -> None:
    """Dice per video sequence of the test frames (when they form sequences) for the stage-1, as-chosen
    and original-decoder rows, and the automatic-box row's interval over sequences."""
    cases = {c for r in rows.values() for c in (r.get("per_case") or {})}
    sequences = video_sequences(cases)
    if len(sequences) < 2 or sum(map(len, sequences.values())) < len(cases) / 2:
        return
    shown = {n: r for n, r in rows.items() if r.get("per_case") and ("alone" in n or "box" in n)}
    print(f"\n| Dice per test sequence | {' | '.join(f'{k} ({len(v)})' for k, v in sequences.items())} |")
    print(f"|---|{'---|' * len(sequences)}")
    for name, r in shown.items():
        cells = [[r["per_case"][c] for c in cs if c in r["per_case"]] for cs in sequences.values()]
        print(f"| {name} | {' | '.join(f'{sum(c) / len(c):.3f}' if c else '-' for c in cells)} |")
    for name, r in shown.items():
        if name.startswith("SAMBox auto boxes, as chosen"):
            lo, hi = sequence_interval(r["per_case"], sequences)
            print(f"\n{name}: 90 % interval over resampled sequences {lo:.3f}-{hi:.3f} "
                  f"({len(sequences)} sequences are the independent samples, not the frames)")


def done_when_checks(result: dict, stage1_name: str = "EmbeddingHeadTrainer") -> list[tuple[str, str, bool]]:
    """Issue 14's acceptance lines, from one run's rows and times: ``(criterion, measured, met)``."""
    rows, times = result["rows"], result["times"]

    def dice(prefix: str):
        hits = [r.get("Dice") for name, r in rows.items() if name.startswith(prefix)]
        return hits[0] if hits and hits[0] is not None else None

    auto, stage1 = dice("SAMBox auto boxes, as chosen"), dice(f"{stage1_name} alone")
    ref_orig = dice("SAMBox reference box, original decoder")
    ref_adapted = dice("SAMBox reference box, adapted decoder")
    if ref_adapted is None and (result.get("choice") or {}).get("decoder", "adapted") == "adapted":
        ref_adapted = dice("SAMBox reference box, as chosen")
    chain_s = next((v for k, v in times.items() if k.startswith("chain")), None)
    checks = []
    if auto is not None:
        checks.append(("automatic-box Dice >= 0.80", f"{auto:.3f}", auto >= 0.80))
        if stage1 is not None:
            checks.append(("automatic-box Dice >= stage 1 alone + 0.03", f"{auto - stage1:+.3f}",
                           auto >= stage1 + 0.03))
    if ref_orig is not None and ref_adapted is not None:
        checks.append(("adapted decoder's reference-box Dice within 0.01 of the original's",
                       f"{ref_adapted - ref_orig:+.3f}", ref_adapted >= ref_orig - 0.01))
    if chain_s is not None:
        checks.append(("whole chain <= 30 min", f"{chain_s / 60:.1f} min", chain_s <= 1800))
    return checks


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/samunet_bench_generalisation"))
    p.add_argument("--data", type=Path, default=SHARED / "polyp_dev")
    p.add_argument("--fold", default="domain_KvasirSEG")
    p.add_argument("--time_budget", default="auto", help="as samunet_train --time_budget (default: 30m on CPU)")
    p.add_argument("--with_resnet", action="store_true", help="also ResNetTrainer alone (same budget)")
    p.add_argument("--with_promise", action="store_true", help="also ProMISeTrainer (same budget)")
    p.add_argument("--fixed_schedule", action="store_true",
                   help="train the schedule stop 30's budget sized (stage 1 6 x 50, decoder 2 x 100) instead of "
                        "sizing from this machine's probe: Dice comparable across machines, wall times not budgeted")
    p.add_argument("--second_check", action="store_true",
                   help="prostate across sites instead: train the RUNMC volumes, test 5 other sites' real slices")
    args = p.parse_args(argv)
    if not args.data.is_dir():
        sys.exit(f"{args.data} not found: this benchmark needs ../shared/data beside the repository")
    setup_roots(args.work)
    extra = (["ResNetTrainer"] if args.with_resnet else []) + (["ProMISeTrainer"] if args.with_promise else [])
    if args.second_check:
        src = prostate_sites_source(args.data.parent, args.work / "prostate_sites_source")
        prepare(src, 663, "ProstateSites", invert=False, group_pattern=r"^(Case\d+|train|test)")
        result = run_chain(663, "domain_RUNMC", args.time_budget, extra, args.fixed_schedule)
        print_table("prostate: train the RUNMC volumes, test real slices of 5 other sites (+ RUNMCms)", result,
                    done_when=False)
    else:
        prepare(args.data, 601, "PolypDev", invert=False)
        result = run_chain(601, args.fold, args.time_budget, extra, args.fixed_schedule)
        print_table(f"polyp_dev {args.fold}: train one centre, test the other", result)
    (args.work / "bench_generalisation.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
