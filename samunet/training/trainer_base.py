"""The base trainer: composes the data loader, augmentation, loss, optimiser, checkpoint
I/O and logging; subclasses override the few methods that make a method different
(``build_network``, ``build_loss``, ``configure_optimizers``, ``predict_preprocessed``).

Results go to ``SAMUNET_results/DatasetXXX/<Trainer>__<plans>/fold_<f>/``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from samunet.experiment_planning.plans_io import data_identifier, plans_file_name
from samunet.experiment_planning import method_defaults
from samunet.experiment_planning.method_defaults import fill_plan_defaults
from samunet.experiment_planning.planner import DEFAULT_PLANS_NAME
from samunet.experiment_planning.splits import load_fold
from samunet.paths import preprocessed_root, results_root
from samunet.training import distributed as dist_utils
from samunet.training.augmentation import augment, training_transforms
from samunet.training.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from samunet.training.data_loading import SliceDataset
from samunet.training.progress_logger import ProgressLogger
from samunet.training.time_budget import TimeBudgetMixin
from samunet.training.losses import confusion_counts
from samunet.utilities.dataset_name import resolve_dataset
from samunet.utilities.file_io import load_json, remove_stale_temp_files
from samunet.utilities.malloc_tuning import trim_heap
from samunet.utilities.progress import progress

logger = logging.getLogger(__name__)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def trainer_output_folder(dataset_name: str, trainer_name: str, plans_name: str, fold) -> Path:
    return results_root() / dataset_name / f"{trainer_name}__{plans_name}" / f"fold_{fold}"


class BaseTrainer(TimeBudgetMixin):
    """Trains one fold. ``fold``: ``0..4``, ``all`` or ``domain_<name>``."""

    plans_section = "stage1"  # which part of plans.json holds this trainer's budget
    wrap_in_ddp = True  # False for trainers that average gradients themselves (see distributed.average_gradients)
    # option names this class accepts (``samunet_train --opt KEY=VALUE``); subclasses add theirs,
    # and keys of a class's ``DEFAULTS`` are accepted too
    OPTIONS: frozenset = frozenset({"batch_size", "num_val_iterations", "time_budget"})
    # options that do not change what is trained (a resumed run may differ in them)
    RUNTIME_OPTIONS: frozenset = frozenset({"encoder_backend", "time_budget"})

    @classmethod
    def known_options(cls) -> set[str]:
        names: set[str] = set()
        for klass in cls.__mro__:
            names |= set(vars(klass).get("OPTIONS", ())) | set(vars(klass).get("DEFAULTS", {}) or {})
        return names

    @classmethod
    def check_options(cls, options: dict) -> None:
        unknown = sorted(k for k, v in options.items() if v is not None and k not in cls.known_options())
        if unknown:
            raise ValueError(
                f"{cls.__name__} has no option {', '.join(map(repr, unknown))}; it accepts: "
                f"{', '.join(sorted(cls.known_options()))}. (Trainer authors: declare new options in OPTIONS.)")

    def __init__(self, dataset: str | int, fold: str | int, plans_name: str = DEFAULT_PLANS_NAME,
                 device: torch.device | str | None = None, num_epochs: int | None = None,
                 num_iterations_per_epoch: int | None = None, seed: int = 12345, **options):
        self.check_options(options)
        self.budget_start = time.perf_counter()  # the time budget counts from here
        # --epochs/--iters given: the schedule is the user's, never sized to a time budget
        self.explicit_schedule = num_epochs is not None or num_iterations_per_epoch is not None
        self.dataset_name = resolve_dataset(dataset)
        self.fold = str(fold)
        self.options = dict(options)  # trainer-specific settings (e.g. the SAM backbone), kept in checkpoints
        self.plans_name = plans_name
        self.preprocessed_folder = preprocessed_root() / self.dataset_name
        plans_file = self.preprocessed_folder / plans_file_name(plans_name)
        if not plans_file.is_file():
            raise FileNotFoundError(f"{plans_file} not found: run samunet_plan_and_preprocess -d {dataset} first.")
        self.plans = fill_plan_defaults(load_json(plans_file))
        self.dataset_json = load_json(self.preprocessed_folder / "dataset.json")
        if "ignore" in (self.dataset_json.get("labels") or {}) and self.plans.get("ignore_label") is None:
            raise ValueError(
                f"{plans_file} was planned by an older samunet that trains dataset.json's \"ignore\" label as a "
                f"class; re-plan (samunet_plan_and_preprocess -d {dataset}, without --keep_plans) so that it is "
                "recorded as ignore_label and left out of loss and metrics")
        self.split = load_fold(self.preprocessed_folder, self.fold)
        self.data_folder = self.preprocessed_folder / data_identifier(self.plans)
        self.device = torch.device(device) if device is not None else default_device()
        cfg = self.plans[self.plans_section]
        self.num_epochs = int(num_epochs or cfg["num_epochs"])
        self.num_iterations_per_epoch = int(num_iterations_per_epoch or cfg["num_iterations_per_epoch"])
        self.num_val_iterations = int(cfg.get("num_val_iterations_per_epoch", method_defaults.NUM_VAL_ITERATIONS))
        # max gradient norm of a training step (plans written before the key: 12, the old constant)
        self.grad_clip = float(cfg.get("grad_clip", method_defaults.GRAD_CLIP))
        self.batch_size = int(cfg["batch_size"])
        # quick runs and tests may shrink the budget further
        if self.options.get("batch_size"):
            self.batch_size = int(self.options["batch_size"])
        if self.options.get("num_val_iterations") is not None:
            self.num_val_iterations = int(self.options["num_val_iterations"])
        self.seed = seed
        self.output_folder = trainer_output_folder(self.dataset_name, type(self).__name__, plans_name, self.fold)
        self.label_values = list(self.plans["label_values"])
        self.foreground_labels = [v for v in self.label_values if v != 0]
        self.ignore_label = self.plans.get("ignore_label")  # unannotated pixels: no loss, no metric
        self.network: nn.Module | None = None
        self.current_epoch = 0
        self.best_ema = -1.0
        self.ema_dice: float | None = None
        self.progress = ProgressLogger()
        self.rank, self.world_size = dist_utils.rank_and_world_size()

    def ignored_pixels(self, seg):
        """Boolean mask of the pixels of label map ``seg`` (numpy or torch) that carry the
        ignore label, or None when the dataset has none."""
        return None if self.ignore_label is None else seg == self.ignore_label

    # ---- what subclasses override -------------------------------------------------
    def build_network(self) -> nn.Module:
        raise NotImplementedError

    def build_loss(self) -> nn.Module:
        raise NotImplementedError

    def configure_optimizers(self):
        """Return ``(optimizer, scheduler)``; the scheduler is stepped once per epoch."""
        raise NotImplementedError

    def predict_preprocessed(self, data: np.ndarray, **context) -> np.ndarray:
        """``(C, Z, Y, X)`` preprocessed data -> ``(K, Z, Y, X)`` class probabilities (background
        first, summing to 1 per voxel: folds average them, ``--save_probabilities`` saves them)
        whose argmax is the label. ``context`` may carry ``case`` (a preprocessed case id) and
        ``reference_seg``."""
        raise NotImplementedError

    def extra_checkpoint_state(self) -> dict:
        """More entries for checkpoints (tensors, strings, numbers only)."""
        return {}

    def restore_inference_state(self, checkpoint: dict) -> None:
        """Counterpart of :meth:`extra_checkpoint_state`, called before :meth:`build_network`."""

    def network_config(self) -> dict:
        """What :func:`build_network` needs, stored in checkpoints for inference."""
        return {}

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device | str | None = None,
                        shared: dict | None = None) -> "BaseTrainer":
        """A trainer ready to predict, built from a checkpoint alone (no preprocessed data needed);
        ``shared``: attributes set before the network is built (e.g. a chain's ``sam``, so that no
        second SAM is loaded)."""
        ckpt = load_checkpoint(path, map_location="cpu")
        return cls.for_inference(fill_plan_defaults(json.loads(ckpt["plans"])), json.loads(ckpt["dataset_json"]),
                                 ckpt["network_weights"], json.loads(ckpt.get("options", "{}")), ckpt,
                                 device=device, fold=ckpt["fold"], seed=int(ckpt.get("seed", 12345)), shared=shared)

    @classmethod
    def for_inference(cls, plans: dict, dataset_json: dict, weights: dict, options: dict, state: dict,
                      device: torch.device | str | None = None, fold=None, seed: int = 12345,
                      shared: dict | None = None) -> "BaseTrainer":
        """A trainer ready to predict from its plan, dataset.json, network weights and options;
        ``state`` (a checkpoint's entries) goes to :meth:`restore_inference_state`. Used by
        :meth:`from_checkpoint` and by a chain restoring its stage-1 trainer."""
        self = cls.__new__(cls)
        self.device = torch.device(device) if device is not None else default_device()
        self.plans, self.dataset_json = plans, dataset_json
        self.dataset_name = self.plans["dataset_name"]
        self.fold, self.seed = fold, int(seed)
        self.label_values = list(self.plans["label_values"])
        self.foreground_labels = [v for v in self.label_values if v != 0]
        self.ignore_label = self.plans.get("ignore_label")  # unannotated pixels: no loss, no metric
        self.batch_size = int(self.plans[cls.plans_section]["batch_size"])
        self.rank, self.world_size = 0, 1
        self.options = dict(options)
        self.restore_inference_state(state)
        for key, value in (shared or {}).items():
            setattr(self, key, value)
        self.network = self.build_network().to(self.device)
        self.network.load_state_dict(weights)
        self.network.eval()
        return self

    # ---- setup --------------------------------------------------------------------
    def initialize(self) -> None:
        self.output_folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(self.seed + self.rank)
        np.random.seed((self.seed + self.rank) % 2**32)
        random.seed(self.seed + self.rank)
        self.rng = np.random.default_rng([self.seed, self.rank])
        self.network = self.build_network().to(self.device)
        self.loss = self.build_loss()
        self.optimizer, self.scheduler = self.configure_optimizers()
        self.train_model = dist_utils.wrap_ddp(self.network, self.device) if self.wrap_in_ddp else self.network

    def make_datasets(self) -> None:
        cfg = self.plans[self.plans_section]
        patch = cfg.get("patch_size", self.plans["stage1"]["patch_size"])
        over = cfg.get("foreground_oversampling", 0.33)
        self.train_data = SliceDataset(self.data_folder, self.split["train"], patch, self.foreground_labels, over)
        self.val_data = SliceDataset(self.data_folder, self.split["val"], patch, self.foreground_labels, over)
        self.transforms = training_transforms(patch)

    # ---- checkpoints --------------------------------------------------------------
    def checkpoint_dict(self) -> dict:
        return {
            "trainer_name": type(self).__name__,
            "network_weights": self.network.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict() if self.scheduler is not None else {},
            "epoch": self.current_epoch,
            "best_ema": self.best_ema,
            "ema_dice": -1.0 if self.ema_dice is None else self.ema_dice,
            "rng_state": rng_state(self.rng),
            "progress": json.dumps(self.progress.state()),
            "plans": json.dumps(self.plans),
            "dataset_json": json.dumps(self.dataset_json),
            "network_config": json.dumps(self.network_config()),
            "fold": self.fold,
            "seed": self.seed,
            "options": json.dumps(self.options),
            **self.extra_checkpoint_state(),
        }

    def save(self, name: str) -> None:
        if self.rank == 0:
            save_checkpoint(self.output_folder / name, self.checkpoint_dict())

    def load(self, path: str | Path, weights_only_network: bool = False) -> None:
        ckpt = load_checkpoint(path, map_location=self.device)
        self.network.load_state_dict(ckpt["network_weights"])
        if weights_only_network:
            return
        stored = {k: v for k, v in json.loads(ckpt.get("options", "{}")).items()
                  if v is not None and k not in self.RUNTIME_OPTIONS}
        current = {k: v for k, v in self.options.items() if v is not None and k not in self.RUNTIME_OPTIONS}
        if stored != current:
            raise ValueError(
                f"{path} was trained with options {stored or 'none'}, this run has {current or 'none'}: resume "
                f"(--c) with the same --opt/--points/--sam values, or start a new run without --c (it overwrites "
                f"{self.output_folder}).")
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        if self.scheduler is not None and ckpt["scheduler_state"]:
            self.scheduler.load_state_dict(ckpt["scheduler_state"])
        self.current_epoch = int(ckpt["epoch"]) + 1
        self.best_ema = float(ckpt["best_ema"])
        self.ema_dice = None if ckpt["ema_dice"] < 0 else float(ckpt["ema_dice"])
        self.progress = ProgressLogger(json.loads(ckpt["progress"]))
        restore_rng_state(ckpt["rng_state"], self.rng)

    # ---- the loop -----------------------------------------------------------------
    def train_step(self, batch: dict) -> float:
        data = torch.from_numpy(batch["data"]).to(self.device)
        target = torch.from_numpy(batch["seg"].astype(np.int64)).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(self.train_model(data), target)
        loss.backward()
        if self.grad_clip > 0:  # 0 in the plan: no clipping
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
        self.optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def validation_step(self, batch: dict) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        """Loss and per-foreground-class TP, FP, FN summed over the batch."""
        self.network.eval()
        data = torch.from_numpy(batch["data"]).to(self.device)
        target = torch.from_numpy(batch["seg"].astype(np.int64)).to(self.device)
        logits = self.network(data)
        loss = float(self.loss(logits, target))
        if logits.shape[1] == 1:
            pred = (logits[:, 0] > 0).long()
        else:
            pred = logits.argmax(1)
        t = target[:, 0]
        ignored = self.ignored_pixels(t)
        if ignored is not None:  # unannotated pixels are neither right nor wrong
            pred = torch.where(ignored, torch.full_like(pred, -1), pred)
        counts = [confusion_counts(pred == v, t == v) for v in range(1, len(self.label_values))]
        tp, fp, fn = (np.array(c) for c in zip(*counts))
        return loss, tp, fp, fn

    def run_epoch(self) -> dict:
        t0 = time.perf_counter()
        self.network.train()
        losses = []
        bar = progress(range(self.num_iterations_per_epoch), desc=f"epoch {self.current_epoch + 1}/{self.num_epochs}",
                       disable=self.rank != 0, leave=False)
        for _ in bar:
            losses.append(self.train_step(self.next_train_batch()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if self.scheduler is not None:
            self.scheduler.step()
        record = {"epoch": self.current_epoch, "train_loss": dist_utils.mean_across_ranks(float(np.mean(losses))),
                  "lr": self.optimizer.param_groups[0]["lr"]}
        record.update(self.run_validation_batches())
        record["epoch_time_s"] = time.perf_counter() - t0
        return record

    def next_train_batch(self) -> dict:
        per_rank = max(1, self.batch_size // self.world_size)
        return augment(self.train_data.batch(per_rank, self.rng), self.transforms)

    def next_val_batch(self, rng: np.random.Generator) -> dict:
        return self.val_data.batch(self.batch_size, rng)

    def run_validation_batches(self) -> dict:
        # a generator of its own, seeded by epoch: validation never shifts the training RNG
        if self.num_val_iterations <= 0:
            return {}
        vrng = np.random.default_rng([self.seed, 7, self.current_epoch])
        losses, tp, fp, fn = [], 0, 0, 0
        for _ in range(self.num_val_iterations):
            l, a, b, c = self.validation_step(self.next_val_batch(vrng))
            losses.append(l)
            tp, fp, fn = tp + a, fp + b, fn + c
        dice = [float(2 * a / (2 * a + b + c)) if (2 * a + b + c) > 0 else float("nan") for a, b, c in zip(tp, fp, fn)]
        mean = float(np.nanmean(dice)) if not all(np.isnan(dice)) else 0.0
        self.ema_dice = mean if self.ema_dice is None else 0.9 * self.ema_dice + 0.1 * mean
        return {"val_loss": float(np.mean(losses)), "pseudo_dice": [None if np.isnan(d) else d for d in dice],
                "mean_pseudo_dice": mean, "ema_pseudo_dice": self.ema_dice}

    def run_training(self, resume: bool = False) -> None:
        self.output_folder.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:  # checkpoint writes a killed run left behind (only rank 0 saves)
            for name in ("checkpoint_latest.pth", "checkpoint_best.pth", "checkpoint_final.pth"):
                remove_stale_temp_files(self.output_folder / name)
        self.initialize()
        self.make_datasets()
        self.fit_schedule(resume)
        if resume:
            latest = self.output_folder / "checkpoint_latest.pth"
            if latest.is_file():
                self.load(latest)
                logger.info("resuming from %s at epoch %d", latest, self.current_epoch)
            else:
                logger.warning("--c: no checkpoint_latest.pth in %s, starting from scratch", self.output_folder)
        logger.info("training %s fold %s on %s: %d train / %d val cases, %d epochs x %d iterations, batch %d",
                    type(self).__name__, self.fold, self.device, len(self.split["train"]), len(self.split["val"]),
                    self.num_epochs, self.num_iterations_per_epoch, self.batch_size)
        while self.current_epoch < self.num_epochs:
            record = self.run_epoch()
            self.progress.log_epoch(record)
            if self.rank == 0:
                logger.info("epoch %d/%d: train loss %.4f, val loss %.4f, pseudo Dice %s, lr %.2e, %.1f s",
                            self.current_epoch + 1, self.num_epochs, record["train_loss"], record.get("val_loss", float("nan")),
                            [round(d, 3) if d is not None else None for d in record.get("pseudo_dice", [])],
                            record["lr"], record["epoch_time_s"])
                if self.ema_dice is not None and self.ema_dice > self.best_ema:
                    self.best_ema = self.ema_dice
                    self.save("checkpoint_best.pth")
                self.save("checkpoint_latest.pth")
                self.progress.save(self.output_folder, {"trainer": type(self).__name__, "fold": self.fold})
            self.current_epoch += 1
            if self.current_epoch < self.num_epochs and self.past_training_deadline(record["epoch_time_s"]):
                break
        self.current_epoch -= 1
        trim_heap()  # the loop's activations were freed but stay resident with samunet's malloc settings
        self.save("checkpoint_final.pth")
        dist_utils.barrier()
