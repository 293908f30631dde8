"""``samunet_train DATASET FOLD [-tr TRAINER]`` (also ``torchrun ... -m samunet.run.train``)."""

from __future__ import annotations

import argparse
import logging
import sys

import torch

DEFAULT_TRAINER = "SAMBoxTrainer"  # the whole SAMMed chain: stage 1 (trained if missing), then SAM


def train(dataset, fold, trainer_name: str = DEFAULT_TRAINER, plans_name: str | None = None, device: str | None = None,
          num_epochs: int | None = None, num_iterations: int | None = None, resume: bool = False,
          val_only: bool = False, use_best: bool = False, seed: int = 12345, skip_validation: bool = False,
          **options):
    """Train (or only validate) one fold; returns the trainer."""
    from samunet.experiment_planning.planner import DEFAULT_PLANS_NAME
    from samunet.training import distributed as dist_utils
    from samunet.training.final_validation import run_final_validation
    from samunet.training.registry import find_trainer
    from samunet.training.trainer_base import default_device

    dev = torch.device(device) if device else default_device()
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("-device cuda was requested but no CUDA device is available; use -device cpu")
    dist_utils.init_from_env(dev)
    cls = find_trainer(trainer_name)
    options = {k: v for k, v in options.items() if v is not None}
    trainer = cls(dataset, fold, plans_name or DEFAULT_PLANS_NAME, device=dev, num_epochs=num_epochs,
                  num_iterations_per_epoch=num_iterations, seed=seed, **options)
    if val_only:
        trainer.initialize()
        from samunet.training.trainers.sam_common import SAMTrainerMixin

        if isinstance(trainer, SAMTrainerMixin):
            trainer.make_datasets()  # SAM trainers: stage 1 and the embedding/feature caches
        name = "checkpoint_best.pth" if use_best else "checkpoint_final.pth"
        trainer.load(trainer.output_folder / name, weights_only_network=True)
    else:
        trainer.run_training(resume=resume)
        if use_best and (trainer.output_folder / "checkpoint_best.pth").is_file():
            trainer.load(trainer.output_folder / "checkpoint_best.pth", weights_only_network=True)
    if trainer.rank == 0 and not skip_validation:
        results = run_final_validation(trainer)
        for split, summary in results.items():
            if summary:
                logging.getLogger(__name__).info("%s: mean foreground Dice %.4f", split, summary["foreground_mean"]["Dice"])
    dist_utils.barrier()
    return trainer


def parse_options(pairs: list[str]) -> dict:
    """``["key=value", ...]`` from ``--opt`` -> ``{key: value}``; values parsed as JSON when they are JSON."""
    import json

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--opt {pair!r}: expected KEY=VALUE, e.g. --opt legacy_double_sigmoid=true")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options


def add_encoder_arguments(p: argparse.ArgumentParser) -> None:
    """``--encoder_backend`` and ``--encoder_precision`` (samunet_train, samunet_predict, cache builds)."""
    from samunet.sam.encoder_backends import ENCODER_BACKENDS, ENCODER_PRECISIONS

    p.add_argument("--encoder_backend", default=None, choices=ENCODER_BACKENDS,
                   help="runtime of the frozen SAM image encoder (default auto: OpenVINO or ONNX Runtime when "
                        "installed and matching PyTorch within 1e-3, else PyTorch; PyTorch on CUDA)")
    p.add_argument("--encoder_precision", default=None, choices=ENCODER_PRECISIONS,
                   help="fp32 (default) or bf16 (only where the CPU/GPU computes bf16 natively; bf16 embeddings are "
                        "cached apart from fp32 ones)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="samunet_train", description="Train one fold of a trainer on a preprocessed dataset.")
    p.add_argument("dataset", help="dataset ID or name, e.g. 501")
    p.add_argument("fold", help="0..4, all, or domain_<name> (see splits_domains.json)")
    p.add_argument("-tr", default=DEFAULT_TRAINER, help="trainer class name (default %(default)s)")
    p.add_argument("-p", default=None, help="plans name (default samunetPlans)")
    p.add_argument("--epochs", type=int, default=None, help="number of epochs (default: from the plan)")
    p.add_argument("--iters", type=int, default=None, help="iterations per epoch (default: from the plan)")
    p.add_argument("--c", action="store_true", help="continue from checkpoint_latest.pth")
    p.add_argument("--val_only", action="store_true", help="only run the final validation with checkpoint_final.pth")
    p.add_argument("--use_best", action="store_true", help="validate with checkpoint_best.pth instead of the final one")
    p.add_argument("--no_validation", action="store_true", help="skip the final validation")
    p.add_argument("--sam", default=None, help="SAM backbone: lite_medsam (default), vit_b, vit_l, vit_h, medsam_vit_b")
    p.add_argument("--sam_checkpoint", default=None, help="weights file for the ViT backbones (SAM or MedSAM)")
    add_encoder_arguments(p)
    p.add_argument("--points", type=int, default=None, choices=[3, 5, 16],
                   help="ProMISeTrainer: number of learned point prompts (1+2, 2+3 or 8+8 positive+negative)")
    p.add_argument("--stage1_epochs", type=int, default=None, help="epochs of stage 1 when the chain trains it")
    p.add_argument("--stage1_iters", type=int, default=None, help="iterations per epoch of stage 1 in the chain")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="trainer option, repeatable, e.g. --opt legacy_double_sigmoid=true --opt steps=50; "
                        "values are JSON (true, 0.5, [1, 2], \"text\") or plain text. The trainer's documentation "
                        "lists its options; an unknown key is refused")
    p.add_argument("-device", default=None, choices=["cpu", "cuda"], help="default: cuda if available, else cpu")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    from samunet.training.checkpoint import CheckpointError

    try:
        options = parse_options(args.opt)
        train(args.dataset, args.fold, args.tr, args.p, args.device, args.epochs, args.iters, args.c,
              args.val_only, args.use_best, args.seed, args.no_validation, **{
                  "sam": args.sam, "sam_checkpoint": args.sam_checkpoint, "stage1_epochs": args.stage1_epochs,
                  "stage1_iters": args.stage1_iters, "points": args.points,
                  "encoder_backend": args.encoder_backend, "encoder_precision": args.encoder_precision, **options})
    except (KeyError, FileNotFoundError, ValueError, RuntimeError, CheckpointError) as e:  # incl. SamCheckpointError
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        sys.exit(f"error: {msg}")


if __name__ == "__main__":
    main()
