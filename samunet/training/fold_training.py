"""Fit one fold of a trainer (train, resume, or load its checkpoint): the training half of
``samunet_train``.

Kept free of ``samunet.run`` and of the later stages (inference, evaluation) so trainers can
train another trainer's fold (the chain's stage 1). :func:`samunet.evaluation.final_validation.train_fold`
adds the final validation (prediction in the original geometry, Dice/NSD) and is what
``samunet_train`` runs.
"""

from __future__ import annotations


import torch

DEFAULT_TRAINER = "SAMBoxTrainer"  # the whole SAMMed chain: stage 1 (trained if missing), then SAM


def fit_fold(dataset, fold, trainer_name: str = DEFAULT_TRAINER, plans_name: str | None = None,
             device: str | None = None, num_epochs: int | None = None, num_iterations: int | None = None,
             resume: bool = False, val_only: bool = False, use_best: bool = False, seed: int = 12345,
             shared: dict | None = None, **options):
    """Train one fold (``val_only``: load its checkpoint instead); returns the trainer, its
    network in the state the final validation uses (``use_best``: the best checkpoint).
    ``shared``: attributes set on the trainer before it builds anything (a chain passes its
    ``sam`` and embedding cache to its stage 1, so one SAM is in memory, not two)."""
    from samunet.experiment_planning.planner import DEFAULT_PLANS_NAME
    from samunet.training import distributed as dist_utils
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
    for key, value in (shared or {}).items():
        setattr(trainer, key, value)
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
    return trainer
