"""Train (or only validate) one fold of a trainer: the library side of ``samunet_train``.

Kept free of ``samunet.run`` so library code (and trainers) can train a fold without importing a CLI
module; ``samunet.run.train`` is the command-line front end and re-exports :func:`train_fold` as ``train``.
"""

from __future__ import annotations

import logging

import torch

DEFAULT_TRAINER = "SAMBoxTrainer"  # the whole SAMMed chain: stage 1 (trained if missing), then SAM


def train_fold(dataset, fold, trainer_name: str = DEFAULT_TRAINER, plans_name: str | None = None,
               device: str | None = None, num_epochs: int | None = None, num_iterations: int | None = None,
               resume: bool = False, val_only: bool = False, use_best: bool = False, seed: int = 12345,
               skip_validation: bool = False, save_probabilities: bool = False, **options):
    """Train (or only validate) one fold; returns the trainer. ``save_probabilities``
    (``samunet_train --npz``): the final validation also writes each case's class probabilities
    (``CASE.npz``, the ``samunet_predict --save_probabilities`` format)."""
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
        results = run_final_validation(trainer, save_probabilities)
        for split, summary in results.items():
            if summary:
                logging.getLogger(__name__).info("%s: mean foreground Dice %.4f", split, summary["foreground_mean"]["Dice"])
    dist_utils.barrier()
    return trainer
