"""``samunet_train DATASET FOLD [-tr TRAINER]`` (also ``torchrun ... -m samunet.run.train``)."""

from __future__ import annotations

import argparse
import logging
import sys

from samunet.evaluation.final_validation import DEFAULT_TRAINER, train_fold
from samunet.sam.cli_arguments import add_encoder_arguments
from samunet.utilities.cli_arguments import parse_options

train = train_fold  # old name, kept for existing imports

__all__ = ["DEFAULT_TRAINER", "add_encoder_arguments", "main", "parse_options", "train", "train_fold"]


def _checked_budget(value):
    """``--time_budget`` as given (validated here, so a typo fails before any work)."""
    from samunet.training.schedule import parse_duration

    if value is None or value.strip().lower() in ("none", "off", "plan", "auto"):
        return value
    parse_duration(value)
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``samunet_train`` argument parser (tests parse with it without training)."""
    p = argparse.ArgumentParser(prog="samunet_train", description="Train one fold of a trainer on a preprocessed dataset.")
    p.add_argument("dataset", help="dataset ID or name, e.g. 501")
    p.add_argument("fold", help="0..4, all, or domain_<name> (see splits_domains.json)")
    p.add_argument("-tr", default=DEFAULT_TRAINER, help="trainer class name (default %(default)s)")
    p.add_argument("-p", default=None, help="plans name (default samunetPlans)")
    p.add_argument("--epochs", type=int, default=None, help="number of epochs (default: from the plan)")
    p.add_argument("--iters", type=int, default=None, help="iterations per epoch (default: from the plan)")
    p.add_argument("--c", action="store_true", help="continue from checkpoint_latest.pth")
    p.add_argument("--val_only", "--val", dest="val_only", action="store_true",
                   help="only run the final validation with checkpoint_final.pth (--val: nnU-Net's name)")
    p.add_argument("--use_best", "--val_best", dest="use_best", action="store_true",
                   help="validate with checkpoint_best.pth instead of the final one (--val_best: nnU-Net's name)")
    p.add_argument("--no_validation", action="store_true", help="skip the final validation")
    p.add_argument("--npz", action="store_true",
                   help="the final validation also saves each case's class probabilities (CASE.npz, as "
                        "samunet_predict --save_probabilities): needed by samunet_ensemble and by "
                        "samunet_find_best_configuration to try ensembles")
    p.add_argument("--sam", default=None, help="SAM backbone: lite_medsam (default), vit_b, vit_l, vit_h, medsam_vit_b")
    p.add_argument("--sam_checkpoint", default=None, help="weights file for the ViT backbones (SAM or MedSAM)")
    add_encoder_arguments(p)
    p.add_argument("--points", type=int, default=None, choices=[3, 5, 16],
                   help="ProMISeTrainer: number of learned point prompts (1+2, 2+3 or 8+8 positive+negative)")
    p.add_argument("--stage1_epochs", type=int, default=None, help="epochs of stage 1 when the chain trains it")
    p.add_argument("--stage1_iters", type=int, default=None, help="iterations per epoch of stage 1 in the chain")
    p.add_argument("--stage1", default=None, metavar="TRAINER",
                   help="SAMBoxTrainer: the stage-1 trainer whose boxes prompt SAM (default: the plan's "
                        "sam.stage1_trainer, EmbeddingHeadTrainer; ResNetTrainer is SAMMed's paper setting)")
    p.add_argument("--time_budget", default=None, metavar="DURATION",
                   help="wall-clock budget of the whole run, e.g. 30m, 1h30m, 1800 (seconds), or none for the plan's "
                        "schedule. Default: 30m on a CPU (epochs x iterations of every stage sized from a short "
                        "throughput probe; the log and schedule.json say what was sized), the plan's schedule on a "
                        "GPU. --epochs/--iters override it")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="trainer option, repeatable, e.g. --opt legacy_double_sigmoid=true --opt steps=50; "
                        "values are JSON (true, 0.5, [1, 2], \"text\") or plain text. The trainer's documentation "
                        "lists its options; an unknown key is refused")
    p.add_argument("-device", default=None, choices=["cpu", "cuda"], help="default: cuda if available, else cpu")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    from samunet.training.checkpoint import CheckpointError

    try:
        options = parse_options(args.opt)
        train_fold(args.dataset, args.fold, args.tr, args.p, args.device, args.epochs, args.iters, args.c,
                   args.val_only, args.use_best, args.seed, args.no_validation, args.npz, **{
                       "sam": args.sam, "sam_checkpoint": args.sam_checkpoint, "stage1_epochs": args.stage1_epochs,
                       "stage1_iters": args.stage1_iters, "points": args.points,
                  "stage1": args.stage1, "time_budget": _checked_budget(args.time_budget),
                       "encoder_backend": args.encoder_backend, "encoder_precision": args.encoder_precision,
                       **options})
    except (KeyError, FileNotFoundError, ValueError, RuntimeError, CheckpointError) as e:  # incl. SamCheckpointError
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        sys.exit(f"error: {msg}")


if __name__ == "__main__":
    main()
