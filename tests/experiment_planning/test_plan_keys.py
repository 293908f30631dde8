"""Every plans.json key changes something (issue 15.8): settings are read by some stage, the
numbers once hard-coded (gradient clip, validation iterations, encoder batch, stage-1 loss) come
from the plan, and plans written before still work with the same values."""

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from samunet.experiment_planning import method_defaults
from samunet.experiment_planning.planner import RECORD_KEYS, plan_experiment
from samunet.utilities.file_io import load_json, save_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sam"))
from test_sam_input_channels import _dataset_json, _fingerprint, tiny_sam  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[2] / "samunet"
# where keys are written or merely printed: a key found only there changes nothing
WRITERS = {"planner.py", "method_defaults.py", "plan_and_preprocess.py"}
REMOVED = ("image_reader_writer", "transpose_backward", "anisotropic", "sam.input_size", "sam.embedding_shape",
           "prompting.slice_margin", "prompting.legacy_box_offset")


def plan_keys(plans: dict):
    """``section.key`` for every setting (records and their contents skipped)."""
    for key, value in plans.items():
        if key in RECORD_KEYS:
            continue
        yield key
        if isinstance(value, dict):
            yield from (f"{key}.{sub}" for sub in value)


def test_every_plan_setting_is_read_somewhere():
    source = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py") if p.name not in WRITERS)
    mr = plan_experiment(_dataset_json(["MRI"]), _fingerprint(1), "Dataset042_Mr")
    rgb = plan_experiment(_dataset_json(["R", "G", "B"]), _fingerprint(3, "NaturalImage2DIO", True), "Dataset043_Rgb")
    unread = sorted({k for plans in (mr, rgb) for k in plan_keys(plans)
                     if not re.search(rf"[\"']{re.escape(k.split('.')[-1])}[\"']", source)})
    assert unread == [], f"plan keys no stage reads (wire them or remove them from the planner): {unread}"
    for key in REMOVED:
        section, _, leaf = key.rpartition(".")
        assert leaf not in (mr.get(section) if section else mr)


@pytest.fixture
def old_plan(synthetic_planned, samunet_roots):
    """The synthetic dataset's plans.json as an older samunet wrote it: the removed keys present,
    the moved numbers absent."""
    file = samunet_roots["preprocessed"] / "Dataset650_Synthetic" / "plans.json"
    plans = load_json(file)
    new = {"stage1": ("grad_clip",), "embedding_head": ("grad_clip",),
           "sam": ("num_val_iterations_per_epoch", "encoder_batch_size", "input_channels", "input_channel_mode")}
    for section, keys in new.items():
        for k in keys:
            plans[section].pop(k)
    plans.update(image_reader_writer="SimpleITKIO", transpose_backward=[0, 1, 2], anisotropic=True)
    plans["sam"].update(input_size=256, embedding_shape=[256, 64, 64])
    plans["prompting"].update(slice_margin=1, legacy_box_offset=False)
    save_json(plans, file)
    return file


class _SamSectionTrainer:
    """A trainer whose budget is the plan's ``sam`` section (as every SAM trainer's)."""

    @staticmethod
    def make(**kw):
        from samunet.training.trainers.resnet_trainer import ResNetTrainer

        return type("SamSection", (ResNetTrainer,), {"plans_section": "sam"})(650, 0, device="cpu", **kw)


def _grad_norm_after_one_step(trainer) -> float:
    trainer.initialize()
    rng = np.random.default_rng(0)
    batch = {"data": rng.random((2, 1, 64, 64), dtype=np.float32) * 5,
             "seg": (rng.random((2, 1, 64, 64)) > 0.5).astype(np.int16)}
    trainer.train_step(batch)  # the clipped gradients stay in .grad after the step
    return float(torch.norm(torch.stack([p.grad.norm() for p in trainer.network.parameters() if p.grad is not None])))


def test_old_plans_fall_back_to_the_old_numbers(old_plan):
    from samunet.training.trainers.resnet_trainer import ResNetTrainer

    t = ResNetTrainer(650, 0, device="cpu")
    assert t.grad_clip == 12.0 and t.num_val_iterations == 5  # stage1 had its 5 already
    assert _SamSectionTrainer.make().num_val_iterations == 20
    from samunet.experiment_planning.sam_input import plan_sam_input

    assert plan_sam_input(t.plans) == {"channels": [0], "mode": "replicate"}
    assert tiny_sam().configure_from_plan(t.plans).encoder_batch_size == 4
    assert _grad_norm_after_one_step(t) > 0  # the removed keys are simply not read: it still trains


def test_moved_numbers_are_read_from_the_plan(synthetic_planned, samunet_roots):
    from samunet.training.trainers.resnet_trainer import ResNetTrainer

    file = samunet_roots["preprocessed"] / "Dataset650_Synthetic" / "plans.json"
    plans = load_json(file)
    assert plans["stage1"]["grad_clip"] == method_defaults.GRAD_CLIP == 12.0
    assert plans["sam"]["num_val_iterations_per_epoch"] == 20 and plans["sam"]["encoder_batch_size"] == 4
    unclipped = _grad_norm_after_one_step(ResNetTrainer(650, 0, device="cpu"))
    plans["stage1"]["grad_clip"] = 1e-4
    plans["sam"]["num_val_iterations_per_epoch"] = 7
    save_json(plans, file)
    clipped = _grad_norm_after_one_step(ResNetTrainer(650, 0, device="cpu"))
    assert clipped <= 1e-4 * 1.001 < 1e-3 < unclipped
    assert _SamSectionTrainer.make().num_val_iterations == 7


def test_encoder_batch_size_comes_from_the_plan():
    from samunet.sam.embedding_cache import encode_volume

    data = np.random.default_rng(0).random((1, 7, 16, 16), dtype=np.float32)
    for plans, batches in (({"num_channels": 1, "sam": {"encoder_batch_size": 3}}, [3, 3, 1]),
                           ({"num_channels": 1, "sam": {}}, [4, 3])):  # a plan without the key: 4, as before
        sam = tiny_sam().configure_from_plan(plans)
        encode_volume(sam, data)
        assert sam.image_encoder.batches == batches
    with pytest.raises(ValueError, match="sam.encoder_batch_size"):
        tiny_sam().configure_from_plan({"num_channels": 1, "sam": {"encoder_batch_size": 0}})


def test_stage1_loss_comes_from_the_plan():
    from samunet.training.trainers.resnet_trainer import ResNetTrainer

    def loss_of(stage1: dict) -> torch.nn.Module:
        t = ResNetTrainer.__new__(ResNetTrainer)
        t.plans, t.ignore_label = {"stage1": stage1}, None
        return t.build_loss()

    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 1, 8, 8))
    values = {name: float(loss_of({"loss": name})(logits, target)) for name in ("dice_ce", "ce", "dice")}
    assert values["dice_ce"] == pytest.approx(values["ce"] + values["dice"], rel=1e-5)
    assert values["ce"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, target[:, 0])), rel=1e-5)
    assert float(loss_of({})(logits, target)) == pytest.approx(values["dice_ce"])  # old plans: Dice + CE
    with pytest.raises(ValueError, match="stage1.loss is 'focal'"):
        loss_of({"loss": "focal"})
