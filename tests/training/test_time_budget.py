"""Time-budgeted schedules inside trainers: sized from the measured step time, logged,
stored for resumption, and never applied when the user fixed the schedule."""

import json
import time

import pytest


@pytest.fixture
def trainer_factory(synthetic_planned):
    from samunet.training.trainers.resnet_trainer import ResNetTrainer

    def make(**kw):
        t = ResNetTrainer(650, 0, device="cpu", **kw)
        t.initialize()
        t.make_datasets()
        return t

    return make


def test_schedule_is_sized_from_measured_throughput(trainer_factory, monkeypatch):
    t = trainer_factory(time_budget="100s")
    assert t.time_budget_s() == 100
    monkeypatch.setattr(type(t), "measure_step_seconds", lambda self, repeats=3: 0.5)
    plan_epochs, ipe, val_its = t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations
    assert (plan_epochs, ipe) == (40, 50)
    t.budget_start = time.perf_counter()
    t.fit_schedule(resume=False)
    # 100 s - 10 % validation reserve = 90 s; with the probe's headroom h an epoch costs
    # 50 x 0.5h s + val_its x 0.5h x 0.4 s
    spi = 0.5 * t.probe_headroom
    per_epoch = ipe * spi + val_its * spi * 0.4
    assert (t.num_epochs, t.num_iterations_per_epoch) == (int(90 // per_epoch), 50)
    sized = json.loads((t.output_folder / "schedule.json").read_text())
    assert sized["num_epochs"] == t.num_epochs and f"{spi:.3g} s/it" in sized["reason"]
    # the learning-rate schedule follows the sized number of epochs
    lrs = []
    for _ in range(t.num_epochs):
        lrs.append(t.optimizer.param_groups[0]["lr"])
        t.optimizer.step()  # (no gradients: a no-op, in the order training uses)
        t.scheduler.step()
    assert t.optimizer.param_groups[0]["lr"] < 0.2 * lrs[0]


def test_fast_device_gets_the_full_plan_and_resume_reuses_the_sizing(trainer_factory, monkeypatch):
    t = trainer_factory(time_budget="1h")
    monkeypatch.setattr(type(t), "measure_step_seconds", lambda self, repeats=3: 0.001)
    t.fit_schedule(resume=False)
    assert (t.num_epochs, t.num_iterations_per_epoch) == (40, 50)  # capped at the plan
    (t.output_folder / "schedule.json").write_text(json.dumps(
        {"num_epochs": 2, "num_iterations_per_epoch": 7, "reason": "stored"}))
    r = trainer_factory(time_budget="1h")
    monkeypatch.setattr(type(r), "measure_step_seconds", lambda self, repeats=3: pytest.fail("must not re-measure"))
    r.fit_schedule(resume=True)
    assert (r.num_epochs, r.num_iterations_per_epoch) == (2, 7)


def test_explicit_schedule_or_gpu_means_no_budget(trainer_factory, monkeypatch):
    t = trainer_factory(num_epochs=3, time_budget="10s")
    assert t.time_budget_s() is None
    t.fit_schedule(resume=False)
    assert t.num_epochs == 3 and not (t.output_folder / "schedule.json").exists()
    g = trainer_factory(time_budget="none")
    assert g.time_budget_s() is None
    d = trainer_factory()
    assert d.time_budget_s() == 1800  # CPU default: 30 min
    monkeypatch.setattr(d, "device", __import__("torch").device("cuda"))
    assert d.time_budget_s() is None  # a GPU runs the plan's schedule


def test_measuring_leaves_weights_and_rng_untouched(trainer_factory):
    import torch

    t = trainer_factory(time_budget="100s")
    before = {k: v.clone() for k, v in t.network.state_dict().items()}
    state = t.rng.bit_generator.state
    assert t.measure_step_seconds(repeats=1) > 0
    assert all(torch.equal(before[k], v) for k, v in t.network.state_dict().items())
    assert t.rng.bit_generator.state == state


def test_training_stops_at_the_deadline_when_the_device_slows_down(trainer_factory, monkeypatch):
    """The probe said a step is fast; then every step takes a second (other load on the cores): the
    run stops after the epoch that reaches the budget instead of overrunning it, and says so."""
    import types

    from samunet.training import time_budget, trainer_base

    clock = types.SimpleNamespace(now=1000.0)
    clock.perf_counter = lambda: clock.now
    t = trainer_factory(time_budget="20s")
    monkeypatch.setattr(trainer_base, "time", clock)
    monkeypatch.setattr(time_budget, "time", clock)
    monkeypatch.setattr(type(t), "measure_step_seconds", lambda self, repeats=3: 0.001)
    monkeypatch.setattr(type(t), "run_validation_batches", lambda self: {})
    steps = []

    def slow_step(self, batch):
        steps.append(1)
        clock.now += 1.0
        self.optimizer.step()  # as a real step does, before the epoch's scheduler step
        return 0.0

    monkeypatch.setattr(type(t), "train_step", slow_step)
    monkeypatch.setattr(type(t), "next_train_batch", lambda self: None)
    monkeypatch.setattr(type(t), "initialize", lambda self: None)
    monkeypatch.setattr(type(t), "make_datasets", lambda self: None)
    t.budget_start = clock.now
    t.num_iterations_per_epoch = 5
    t.run_training()
    assert t.num_epochs == 40  # sized as if steps were fast
    # deadline = 20 s less the 10 % validation reserve = 18 s; an epoch takes 5 s. After the third
    # (15 s) a fourth ends 2 s late (< half an epoch): it runs; a fifth would end 7 s late: stop
    assert len(steps) == 20
    assert t.stopped_early == {"after_epoch": 4, "planned_epochs": 40}
    assert (t.output_folder / "checkpoint_final.pth").is_file()


def test_no_deadline_without_a_budget(trainer_factory):
    t = trainer_factory(num_epochs=2, time_budget="1s")
    assert t.training_deadline() is None and not t.past_training_deadline(1e9)
