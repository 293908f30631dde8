"""Which image channels reach SAM's encoder is the plan's decision (issue 15.4): the wrapper,
the embedding cache (its key), the prediction LRU, trainers and the cache builder all follow
plans.json sam.input_channels / sam.input_channel_mode; old plans keep the old behaviour.

A real SamWrapper with a tiny stand-in encoder keeps every test well under a second."""

import json
import logging

import numpy as np
import pytest
import torch
from torch import nn

from samunet.experiment_planning.sam_input import (describe_sam_input, dropped_channels_warning, plan_sam_input,
                                                   sam_input_cache_key)
from samunet.sam.embedding_cache import EmbeddingCache, encode_volume
from samunet.sam.embedding_lru import slice_key
from samunet.sam.wrapper import SamWrapper
from samunet.utilities.file_io import save_npz


class CountingEncoder(nn.Module):
    """``(B, 3, 256, 256) -> (B, 256, 64, 64)``, recording each call's batch size."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 256, 4, stride=4)
        self.batches = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return self.conv(x)


def tiny_sam() -> SamWrapper:
    return SamWrapper("tiny", CountingEncoder(), nn.Module(), nn.Module(), input_size=256)


def plan(num_channels: int, channels=None, mode=None, **sam) -> dict:
    section = dict(sam)
    if channels is not None:
        section["input_channels"] = channels
    if mode is not None:
        section["input_channel_mode"] = mode
    return {"dataset_name": "Dataset042_Brain", "num_channels": num_channels, "sam": section,
            "normalization": [{"channel": str(c), "name": n}
                              for c, n in enumerate(["T1", "T1c", "T2", "FLAIR"][:num_channels])]}


def two_channel_slices() -> torch.Tensor:
    """``(2, 2, 40, 30)``: channel 0 a left-right ramp, channel 1 a bright square (they differ)."""
    x = torch.zeros(2, 2, 40, 30)
    x[:, 0] = torch.linspace(0, 1, 30)
    x[:, 1, 10:20, 5:15] = 1.0
    return x


def test_plan_choosing_channel_1_changes_the_encoder_input():
    x = two_channel_slices()
    default, _ = tiny_sam().prepare_images(x)  # the old code: channel 0, whatever the plan says
    chosen, _ = tiny_sam().configure_from_plan(plan(2, [1], "replicate")).prepare_images(x)
    only_1, _ = tiny_sam().prepare_images(x[:, 1:2])
    assert torch.equal(chosen, only_1)  # channel 1, replicated to R, G, B
    assert torch.equal(chosen[:, 0], chosen[:, 2])
    assert (chosen - default).abs().max() > 0.5


def test_rgb_mode_takes_three_chosen_modalities_in_order():
    x = torch.rand(1, 4, 32, 32)
    images, _ = tiny_sam().configure_from_plan(plan(4, [3, 1, 0], "rgb")).prepare_images(x)
    reference, _ = tiny_sam().prepare_images(x[:, [3, 1, 0]])  # 3 channels: used as they are
    assert torch.equal(images, reference)
    assert not torch.equal(images[:, 0], images[:, 1])


def test_old_plans_keep_the_old_behaviour():
    assert plan_sam_input(plan(3)) == {"channels": [0, 1, 2], "mode": "rgb"}
    assert plan_sam_input(plan(2)) == {"channels": [0], "mode": "replicate"}
    x = two_channel_slices()
    old, _ = tiny_sam().configure_from_plan(plan(2)).prepare_images(x)
    assert torch.equal(old, tiny_sam().prepare_images(x[:, :1])[0])
    rgb = torch.rand(1, 3, 16, 16)
    assert torch.equal(tiny_sam().configure_from_plan(plan(3)).prepare_images(rgb)[0],
                       tiny_sam().prepare_images(rgb)[0])
    # an old multi-channel plan no longer drops channels silently
    warning = dropped_channels_warning(plan(4))
    assert "Dataset042_Brain" in warning and "[1, 2, 3]" in warning and "sam.input_channels" in warning
    assert "old default" in describe_sam_input(plan(4)) and "WARNING" in describe_sam_input(plan(4))


@pytest.mark.parametrize("channels, mode, message", [
    ([4], "replicate", "names channel(s) [4]"),
    ([0, 1], "rgb", "needs 3 channel(s)"),
    ([0], "false_colour", "choose one of"),
])
def test_a_bad_plan_choice_is_refused_naming_the_key(channels, mode, message):
    with pytest.raises(ValueError, match="sam.input_channel") as err:
        plan_sam_input(plan(4, channels, mode), "Dataset042_Brain/plans.json")
    assert message in str(err.value) and "Dataset042_Brain/plans.json" in str(err.value)


def test_encode_volume_and_the_prediction_lru_follow_the_choice():
    data = two_channel_slices().numpy().transpose(1, 0, 2, 3)  # (C, Z, Y, X)
    sam = tiny_sam()
    e0, _ = encode_volume(sam, data)
    key0 = slice_key(sam, data[:, 0])
    sam.configure_from_plan(plan(2, [1], "replicate"))
    e1, _ = encode_volume(sam, data)
    assert np.abs(e1 - e0).max() > 1e-3
    assert slice_key(sam, data[:, 0]) != key0  # an LRU entry of channel 0 is not reused for channel 1


def test_the_cache_key_depends_on_the_choice(tmp_path):
    folder = tmp_path / "Dataset042_Brain"
    (folder / "plans_2d").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        save_npz(folder / "plans_2d" / f"{c}.npz", data=rng.random((2, 2, 24, 24), dtype=np.float32),
                 seg=np.zeros((1, 2, 24, 24), np.int16))
    # the old default spelled out in a new plan: same embeddings, so caches built before stay valid
    assert sam_input_cache_key(plan(2, [0], "replicate")) is None and sam_input_cache_key(plan(2)) is None
    assert sam_input_cache_key(plan(3, [0], "replicate")) == {"channels": [0], "mode": "replicate"}

    def cache(p):
        return EmbeddingCache(folder, "plans_2d", "tiny", "w", 256, sam_input=sam_input_cache_key(p))

    sam = tiny_sam().configure_from_plan(plan(2))
    assert cache(plan(2)).build(["a", "b"], sam, progress=False) == 2
    first = np.asarray(cache(plan(2)).load("a"), np.float32)
    assert cache(plan(2, [0], "replicate")).build(["a", "b"], sam, progress=False) == 0  # same key: all hits
    p1 = plan(2, [1], "replicate")
    sam.configure_from_plan(p1)
    c1 = cache(p1)
    assert c1.build(["a", "b"], sam, progress=False) == 2  # another choice: rebuilt
    assert json.loads((c1.folder / "meta.json").read_text())["sam_input"] == {"channels": [1], "mode": "replicate"}
    assert np.abs(np.asarray(c1.load("a"), np.float32) - first).max() > 1e-3


def _fingerprint(num_channels: int, io: str = "SimpleITKIO", integer: bool = False) -> dict:
    case = {"shape": [20, 64, 64], "shape_after_crop": [20, 64, 64], "spacing": [3.0, 1.0, 1.0], "io": io,
            "intensity_min": [0.0] * num_channels, "intensity_max": [200.0] * num_channels,
            "integer_intensities": integer}
    return {"cases": {f"c{i}": dict(case) for i in range(3)}, "label_voxel_counts": {"0": 9000, "1": 1000},
            "foreground_intensity_properties_per_channel": {}}


def _dataset_json(names) -> dict:
    return {"channel_names": {str(i): n for i, n in enumerate(names)}, "labels": {"background": 0, "tumour": 1},
            "numTraining": 3, "file_ending": ".nii.gz"}


def test_plan_for_four_modalities_records_the_choice_and_warns(caplog):
    from samunet.experiment_planning.planner import plan_experiment

    with caplog.at_level(logging.WARNING, logger="samunet.experiment_planning.sam_input"):
        plans = plan_experiment(_dataset_json(["T1", "T1c", "T2", "FLAIR"]), _fingerprint(4), "Dataset042_Brain")
    assert (plans["sam"]["input_channels"], plans["sam"]["input_channel_mode"]) == ([0], "replicate")
    text = caplog.text
    assert "Dataset042_Brain" in text and "sam.input_channels" in text and "[1, 2, 3]" in text
    assert "[1, 2, 3]" in plans["decisions"]["sam_input"]
    assert describe_sam_input(plans).startswith("channel 0 (T1) replicated; WARNING channel(s) [1, 2, 3]")


def test_plan_for_t1_t2_flair_is_not_false_colour_but_rgb_stays_rgb(caplog):
    from samunet.experiment_planning.planner import plan_experiment

    with caplog.at_level(logging.WARNING, logger="samunet.experiment_planning.sam_input"):
        mr = plan_experiment(_dataset_json(["T1", "T2", "FLAIR"]), _fingerprint(3), "Dataset043_Mr3")
    assert plan_sam_input(mr) == {"channels": [0], "mode": "replicate"} and "Dataset043_Mr3" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="samunet.experiment_planning.sam_input"):
        rgb = plan_experiment(_dataset_json(["R", "G", "B"]), _fingerprint(3, "NaturalImage2DIO", True),
                              "Dataset044_Rgb")
        grey = plan_experiment(_dataset_json(["MRI"]), _fingerprint(1), "Dataset045_Grey")
    assert plan_sam_input(rgb) == {"channels": [0, 1, 2], "mode": "rgb"} and dropped_channels_warning(rgb) is None
    assert plan_sam_input(grey) == {"channels": [0], "mode": "replicate"}
    assert caplog.text == ""


def test_trainers_feed_sam_what_the_plan_says(monkeypatch, caplog, tmp_path):
    """SAMTrainerMixin.make_sam (every SAM trainer, training and prediction) configures the encoder
    input from the plan, the encoder batch too, and warns about channels SAM does not see."""
    import samunet.sam.registry as registry
    from samunet.training.trainers.sam_common import SAMTrainerMixin

    monkeypatch.setattr(registry, "build_sam", lambda name, checkpoint, device: tiny_sam())
    trainer = SAMTrainerMixin()
    trainer.options, trainer.device, trainer.output_folder = {}, torch.device("cpu"), None
    trainer.preprocessed_folder, trainer.plans_name = tmp_path, "samunetPlans"
    trainer.plans = plan(3, [2], "replicate", model="tiny", encoder_batch_size=3)
    with caplog.at_level(logging.WARNING):
        sam = trainer.make_sam()
    assert (sam.input_channels, sam.input_channel_mode, sam.encoder_batch_size) == ((2,), "replicate", 3)
    assert "channel(s) [0, 1] do not reach SAM" in caplog.text


def test_build_embedding_cache_feeds_the_plans_channels(samunet_roots, monkeypatch):
    import samunet.sam.build_cache as build_cache
    from samunet.utilities.file_io import save_json

    folder = samunet_roots["preprocessed"] / "Dataset042_Brain"
    (folder / "samunetPlans_2d").mkdir(parents=True)
    data = two_channel_slices().numpy().transpose(1, 0, 2, 3)  # (2, Z=2, 40, 30)
    save_npz(folder / "samunetPlans_2d" / "a.npz", data=data, seg=np.zeros((1, 2, 40, 30), np.int16))
    p = {**plan(2, [1], "replicate", model="tiny", encoder_batch_size=1), "plans_name": "samunetPlans"}
    save_json(p, folder / "plans.json")
    sam = tiny_sam()
    monkeypatch.setattr(build_cache, "build_sam", lambda name, checkpoint, device: sam)
    monkeypatch.setattr(build_cache, "weights_identity", lambda name, path: "w")
    out = build_cache.build_embedding_cache(42, encoder_backend="torch", progress=False)
    assert out["encoded"] == 1 and sam.image_encoder.batches == [1, 1]  # the plan's encoder batch
    cached = np.load(folder / "embeddings" / "tiny" / "a.npy").astype(np.float32)
    expected, _ = encode_volume(tiny_sam(), data[1:2])  # channel 1 alone, replicated
    np.testing.assert_allclose(cached, expected, atol=2e-2)
    assert np.abs(cached - encode_volume(tiny_sam(), data[:1])[0]).max() > 1e-2


def test_the_plan_summary_states_the_sam_input(synthetic_planned):
    from samunet.experiment_planning.plan_and_preprocess import format_summary

    _, summary = synthetic_planned
    line = next(ln for ln in format_summary(summary).splitlines() if ln.startswith("SAM input"))
    assert line.split(None, 2)[2] == "channel 0 (MRI) replicated"


def test_a_hand_edited_choice_is_checked_at_keep_plans(synthetic_planned, samunet_roots):
    from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess
    from samunet.utilities.file_io import load_json, save_json

    file = samunet_roots["preprocessed"] / "Dataset650_Synthetic" / "plans.json"
    plans = load_json(file)
    plans["sam"]["input_channels"] = [3]
    save_json(plans, file)
    with pytest.raises(ValueError, match=r"plans.json: sam.input_channels \[3\] names channel\(s\) \[3\]"):
        plan_and_preprocess(650, num_processes=1, keep_plans=True)
