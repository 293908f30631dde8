"""The time budget of a training run: how long it may take, sizing epochs x iterations from a
measured step time, and the deadline that stops a run the device slowed down. Mixed into
:class:`~samunet.training.trainer_base.BaseTrainer`, which supplies the network, optimiser,
batches, ``budget_start`` and ``options``."""

from __future__ import annotations

import logging
import time

import numpy as np

from samunet.training import distributed as dist_utils
from samunet.training.schedule import format_duration
from samunet.utilities.file_io import load_json

logger = logging.getLogger("samunet.training.trainer_base")


class TimeBudgetMixin:
    # share of the time budget kept for the final validation (prediction of val/test cases)
    validation_reserve_fraction = 0.1
    # a short probe underestimates a long run (varying batches, allocator, thermal): sized with headroom
    probe_headroom = 1.2

    def time_budget_s(self) -> float | None:
        """Seconds this run may take (``--time_budget``; default: 30 min on a CPU, none on a GPU),
        or None (the plan's schedule). None whenever ``--epochs``/``--iters`` were given."""
        from samunet.training.schedule import default_time_budget, parse_duration

        if self.explicit_schedule:
            return None
        value = self.options.get("time_budget")
        if value is None or str(value).strip().lower() == "auto":
            return default_time_budget(self.device)
        if str(value).strip().lower() in ("none", "off", "0", "plan"):
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # set by a chain, may be spent
            return max(float(value), 1.0)
        return parse_duration(value)

    def measure_step_seconds(self, repeats: int = 3) -> float:
        """Seconds per training step, measured on real batches; weights, optimiser and the
        training RNG are restored afterwards, so the run is as if it had not been measured."""
        import copy

        from samunet.training.schedule import measure_seconds_per_call

        weights = copy.deepcopy(self.network.state_dict())
        opt_state = copy.deepcopy(self.optimizer.state_dict())
        saved_rng, self.rng = self.rng, np.random.default_rng([self.seed, 99, self.rank])
        try:
            return measure_seconds_per_call(lambda: self.train_step(self.next_train_batch()), warmup=1,
                                            repeats=repeats)
        finally:
            self.network.load_state_dict(weights)
            self.optimizer.load_state_dict(opt_state)
            self.rng = saved_rng

    def fit_schedule(self, resume: bool) -> None:
        """Size epochs x iterations to the time budget (or reuse the sized schedule of the run
        being resumed); logs what was sized and why, writes ``schedule.json``."""
        from samunet.training.schedule import size_stage
        from samunet.utilities.file_io import save_json

        file = self.output_folder / "schedule.json"
        if resume and file.is_file():
            sized = load_json(file)
        else:
            budget = self.time_budget_s()
            if budget is None:
                return
            elapsed = time.perf_counter() - self.budget_start
            left = budget - elapsed - self.validation_reserve_fraction * budget
            spi = self.measure_step_seconds() * self.probe_headroom
            per_epoch = self.num_val_iterations * spi * 0.4  # validation batches: forward only
            stage = size_stage(type(self).__name__, max(left, 0.0), spi, self.num_epochs, self.num_iterations_per_epoch,
                               per_epoch_overhead_s=per_epoch)
            sized = {"num_epochs": stage.num_epochs, "num_iterations_per_epoch": stage.iterations_per_epoch,
                     "time_budget_s": budget, "seconds_per_iteration": spi,
                     "reason": f"time budget {format_duration(budget)}, {format_duration(elapsed)} spent before "
                               f"training (data, caches), {int(100 * self.validation_reserve_fraction)}% kept for "
                               f"validation: {stage.reason}"}
            if self.rank == 0:
                self.output_folder.mkdir(parents=True, exist_ok=True)
                save_json(sized, file)
        changed = (sized["num_epochs"], sized["num_iterations_per_epoch"]) != (self.num_epochs, self.num_iterations_per_epoch)
        self.num_epochs, self.num_iterations_per_epoch = int(sized["num_epochs"]), int(sized["num_iterations_per_epoch"])
        logger.info("schedule of %s: %s", type(self).__name__, sized["reason"])
        if changed:  # learning-rate schedules depend on the number of epochs
            self.optimizer, self.scheduler = self.configure_optimizers()

    def training_deadline(self) -> float | None:
        """``time.perf_counter()`` value by which the training epochs must end under a time budget
        (the budget less the share kept for validation), or None without a budget."""
        budget = self.time_budget_s()
        if budget is None:
            return None
        return self.budget_start + budget * (1 - self.validation_reserve_fraction)

    def past_training_deadline(self, epoch_seconds: float) -> bool:
        """True when another epoch of ``epoch_seconds`` would end more than half an epoch past the
        :meth:`training_deadline`: the device got slower than the probe measured at the start
        (other processes on the cores, thermal limits), and the time budget is a promise. All
        ranks take rank 0's decision."""
        deadline = self.training_deadline()
        if deadline is None:
            return False
        late = time.perf_counter() + 0.5 * epoch_seconds > deadline
        late = dist_utils.mean_across_ranks(float(late) if self.rank == 0 else 0.0) * self.world_size > 0.5
        if late:
            logger.warning("%s: stopping after epoch %d of %d to keep the time budget (%s): the epochs ran slower "
                           "than the probe measured at the start (other load on the device?)", type(self).__name__,
                           self.current_epoch, self.num_epochs, format_duration(self.time_budget_s()))
            self.stopped_early = {"after_epoch": self.current_epoch, "planned_epochs": self.num_epochs}
        return late
