import numpy as np
import torch

from samunet.training.trainers.resnet_trainer import ResNetTrainer


def test_one_iteration_reduces_loss_on_fixed_batch(synthetic_planned):
    t = ResNetTrainer(650, 0, device="cpu", num_epochs=1, num_iterations_per_epoch=1)
    t.initialize()
    t.make_datasets()
    batch = t.train_data.batch(4, np.random.default_rng(0))
    data = torch.from_numpy(batch["data"])
    target = torch.from_numpy(batch["seg"].astype(np.int64))

    def loss_now():
        t.network.train()
        with torch.no_grad():
            return float(t.loss(t.network(data), target))

    before = loss_now()
    t.train_step(batch)
    assert loss_now() < before


def test_epochs_and_iterations_come_from_the_plan_unless_overridden(synthetic_planned):
    _, summary = synthetic_planned
    t = ResNetTrainer(650, "domain_B", device="cpu")
    assert t.num_epochs == summary["plans"]["stage1"]["num_epochs"]
    assert t.num_iterations_per_epoch == summary["plans"]["stage1"]["num_iterations_per_epoch"]
    t2 = ResNetTrainer(650, "domain_B", device="cpu", num_epochs=3, num_iterations_per_epoch=7)
    assert (t2.num_epochs, t2.num_iterations_per_epoch) == (3, 7)
    assert t2.output_folder.name == "fold_domain_B"
