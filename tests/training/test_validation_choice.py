"""The chain's original-vs-adapted decoder choice keeps what it did not choose measurable."""

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from samunet.training.trainers.sam_box_trainer import SAMBoxTrainer
from samunet.training.trainers.validation_choice import ValidationChoiceMixin


class _Chain(ValidationChoiceMixin):
    """A decoder whose weight *is* its validation Dice, and a stage 1 worth ``stage1_dice``."""

    def __init__(self, adapted: float, original: float, stage1_dice: float):
        self.sam = SimpleNamespace(mask_decoder=nn.Linear(1, 1, bias=False))
        with torch.no_grad():
            self.sam.mask_decoder.weight.fill_(original)
        self.pretrained_decoder = {k: v.clone() for k, v in self.sam.mask_decoder.state_dict().items()}
        with torch.no_grad():
            self.sam.mask_decoder.weight.fill_(adapted)
        self.stage1_dice = stage1_dice
        self.split = {"val": ["a", "b"]}
        self.foreground_labels = [1]

    def _validation_dice(self, cases, use_stage1=False):
        return {1: self.stage1_dice if use_stage1 else float(self.sam.mask_decoder.weight.item())}

    def chain_setting(self, key, default):
        return default


def test_original_chosen_keeps_the_adapted_weights_for_the_checkpoint():
    t = _Chain(adapted=0.6, original=0.8, stage1_dice=0.7)
    choice = t.choose_on_validation()
    assert choice["decoder"] == "original" and choice["labels"] == {"1": "sam"}
    assert t.sam.mask_decoder.weight.item() == torch.tensor(0.8).item()  # the network now holds the original
    assert t.adapted_decoder["weight"].item() == torch.tensor(0.6).item()  # ... and the adapted one is kept
    fake = SimpleNamespace(stage1=SimpleNamespace(network=nn.Linear(1, 1), network_config=lambda: {}, options={}),
                           final_choice=choice, adapted_decoder=t.adapted_decoder, label_depths_state=lambda: {})
    state = SAMBoxTrainer.extra_checkpoint_state(fake)
    assert torch.equal(state["adapted_decoder"]["weight"], t.adapted_decoder["weight"])
    assert json.loads(state["final_choice"])["decoder"] == "original"


def test_adapted_chosen_stores_no_second_decoder_and_stage1_wins_a_label():
    t = _Chain(adapted=0.8, original=0.6, stage1_dice=0.9)
    choice = t.choose_on_validation()
    assert choice["decoder"] == "adapted" and choice["labels"] == {"1": "stage1"}
    assert t.sam.mask_decoder.weight.item() == torch.tensor(0.8).item()
    assert t.adapted_decoder is None
    fake = SimpleNamespace(stage1=SimpleNamespace(network=nn.Linear(1, 1), network_config=lambda: {}, options={}),
                           final_choice=choice, adapted_decoder=None, label_depths_state=lambda: {})
    assert "adapted_decoder" not in SAMBoxTrainer.extra_checkpoint_state(fake)


class _EnsembleChain(_Chain):
    """Stage 1 worth ``ensemble`` as the mean of its heads and ``single`` as the fold's head alone."""

    def __init__(self, ensemble: float, single: float):
        super().__init__(adapted=0.8, original=0.6, stage1_dice=0.0)
        self.stage1 = SimpleNamespace(ensemble_members=[nn.Linear(1, 1), nn.Linear(1, 1)], network=nn.Linear(1, 1),
                                      network_config=lambda: {}, options={})
        self.dice_of = {True: ensemble, False: single}

    def _validation_dice(self, cases, use_stage1=False):
        if use_stage1:
            return {1: self.dice_of[bool(self.stage1.ensemble_members)]}
        return super()._validation_dice(cases)


def test_stage1_ensemble_kept_unless_the_single_head_validates_clearly_better():
    t = _EnsembleChain(ensemble=0.78, single=0.79)  # within the margin: the ensemble stays
    choice = t.choose_on_validation()
    assert len(t.stage1.ensemble_members) == 2
    assert choice["validation_dice"]["stage1_ensemble"] == {1: 0.78}
    assert choice["validation_dice"]["stage1_single"] == {1: 0.79}
    assert choice["validation_dice"]["stage1"] == {1: 0.78}  # the per-label choice saw the ensemble

    t = _EnsembleChain(ensemble=0.70, single=0.79)  # e.g. out-of-fold heads that saw 3 volumes each
    choice = t.choose_on_validation()
    assert t.stage1.ensemble_members == []
    assert choice["validation_dice"]["stage1"] == {1: 0.79}
    fake = SimpleNamespace(stage1=t.stage1, final_choice=choice, adapted_decoder=None, label_depths_state=lambda: {})
    assert SAMBoxTrainer.extra_checkpoint_state(fake)["stage1_ensemble_weights"] == []  # predicts with one head


def test_no_ensemble_no_ensemble_entries():
    t = _Chain(adapted=0.8, original=0.6, stage1_dice=0.5)
    assert "stage1_ensemble" not in t.choose_on_validation()["validation_dice"]


def test_decoder_interpolation_moves_the_trained_weights_towards_the_pretrained_ones():
    t = _Chain(adapted=0.6, original=0.8, stage1_dice=0.7)
    t.sam.mask_decoder.register_buffer("steps", torch.tensor([3]))  # not a weight: left alone
    t.pretrained_decoder["steps"] = torch.tensor([0])
    assert t.interpolate_decoder(1.0) is False and abs(t.sam.mask_decoder.weight.item() - 0.6) < 1e-7
    assert t.interpolate_decoder(0.5) is True
    assert abs(t.sam.mask_decoder.weight.item() - 0.7) < 1e-6 and t.sam.mask_decoder.steps.item() == 3
    assert abs(t.pretrained_decoder["weight"].item() - 0.8) < 1e-7  # the reference is not touched
    t.interpolate_decoder(0.0)
    assert abs(t.sam.mask_decoder.weight.item() - 0.8) < 1e-7
    with pytest.raises(ValueError, match="decoder_interpolation"):
        t.interpolate_decoder(1.5)


class _FinishedChain(_Chain):
    """A finished run: its checkpoints hold the decoder weight, the choice and the epoch."""

    def __init__(self, folder, **kw):
        super().__init__(**kw)
        self.output_folder, self.current_epoch, self.adapted_decoder = folder, 9, None

    def checkpoint_dict(self):
        state = {"network_weights": self.sam.mask_decoder.state_dict(), "epoch": self.current_epoch,
                 "final_choice": json.dumps(getattr(self, "final_choice", None))}
        return {**state, **({"adapted_decoder": self.adapted_decoder} if self.adapted_decoder else {})}


@pytest.mark.parametrize("final, decoder", [(0.8, "adapted"), (0.4, "original")])
def test_best_checkpoint_gets_the_final_interpolation_and_choice(tmp_path, final, decoder):
    from samunet.training.checkpoint import load_checkpoint, save_checkpoint

    t = _FinishedChain(tmp_path, adapted=final, original=0.6, stage1_dice=0.0)
    save_checkpoint(tmp_path / "checkpoint_best.pth",
                    {"network_weights": {"weight": torch.tensor([[0.2]])}, "epoch": 3, "progress": "best"})
    t.interpolate_decoder(0.5)  # the final decoder: 0.7 or 0.5
    choice = t.choose_on_validation()
    assert choice["decoder"] == decoder
    live = t.sam.mask_decoder.weight.item()
    t.finish_best_checkpoint(0.5)
    best = load_checkpoint(tmp_path / "checkpoint_best.pth")
    assert json.loads(best["final_choice"]) == json.loads(json.dumps(choice))
    assert best["epoch"] == 3 and best["progress"] == "best"
    halfway = 0.5 * 0.2 + 0.5 * 0.6  # the best epoch's weight, interpolated like the final one
    if decoder == "adapted":
        assert abs(best["network_weights"]["weight"].item() - halfway) < 1e-6 and "adapted_decoder" not in best
    else:  # the network is the original decoder; the interpolated best one is kept beside it
        assert abs(best["network_weights"]["weight"].item() - 0.6) < 1e-6
        assert abs(best["adapted_decoder"]["weight"].item() - halfway) < 1e-6
    assert t.sam.mask_decoder.weight.item() == live  # the trainer keeps its final decoder
    assert (t.adapted_decoder is None) == (decoder == "adapted")


def test_no_best_checkpoint_is_left_alone(tmp_path):
    t = _FinishedChain(tmp_path, adapted=0.8, original=0.6, stage1_dice=0.0)
    t.finish_best_checkpoint(0.5)
    assert not (tmp_path / "checkpoint_best.pth").exists()


def test_validating_again_restores_the_runs_stage1_heads_and_choice():
    heads = [nn.Linear(1, 1) for _ in range(3)]
    stage1 = SimpleNamespace(network=nn.Linear(1, 1), ensemble_members=[], build_network=lambda: nn.Linear(1, 1))
    t = SimpleNamespace(stage1=stage1, final_choice=None, adapted_decoder=None, always_present=frozenset(),
                        restore_label_depths=lambda ck: setattr(t, "depths", json.loads(ck.get("label_depths", "{}"))))
    choice = {"decoder": "original", "labels": {"1": "stage1"}}
    ckpt = {"final_choice": json.dumps(choice), "adapted_decoder": {"weight": torch.ones(1, 1)},
            "always_present_labels": "[1]", "label_depths": '{"1": 0}', "stage1_weights": heads[0].state_dict(),
            "stage1_ensemble_weights": [h.state_dict() for h in heads[1:]]}
    ValidationChoiceMixin.restore_run_choices(t, ckpt)
    assert t.final_choice == choice and t.always_present == {1} and t.depths == {"1": 0}
    assert torch.equal(t.adapted_decoder["weight"], torch.ones(1, 1))
    assert torch.equal(stage1.network.weight, heads[0].weight)
    assert [m.weight.item() for m in stage1.ensemble_members] == [h.weight.item() for h in heads[1:]]
    ValidationChoiceMixin.restore_run_choices(t, {"final_choice": "null", "stage1_weights": heads[0].state_dict()})
    assert t.final_choice is None and stage1.ensemble_members == []  # the choice had dropped the extra heads
    assert t.always_present == frozenset() and t.depths == {}  # older checkpoints: no presence prior, no nesting


class _TwoLabelChain(_Chain):
    """Two labels: SAM better on label 1, stage 1 on label 2, one by one; composed, the mixture scores
    ``mixture``."""

    def __init__(self, mixture: dict):
        super().__init__(adapted=0.8, original=0.6, stage1_dice=0.0)
        self.foreground_labels = [1, 2]
        self.mixture, self.asked = mixture, []

    def _validation_dice(self, cases, use_stage1=False, choice=None):
        if choice is not None:
            self.asked.append(choice["labels"])
            return dict(self.mixture)
        return {1: 0.5, 2: 0.8} if use_stage1 else {1: 0.6, 2: 0.7}


def test_a_per_label_mixture_is_validated_composed_and_dropped_when_it_loses():
    """The demo's case: SAM won the outer prostate zone and stage 1 the gland one by one, but composed the
    zone collapsed; every label from stage 1 (mean 0.65) then beats the mixture and every label from SAM."""
    t = _TwoLabelChain(mixture={1: 0.2, 2: 0.8})
    choice = t.choose_on_validation()
    assert t.asked == [{"1": "sam", "2": "stage1"}]
    assert choice["labels"] == {"1": "stage1", "2": "stage1"}
    assert choice["validation_dice"]["mixture"] == {1: 0.2, 2: 0.8}
    kept = _TwoLabelChain(mixture={1: 0.6, 2: 0.8}).choose_on_validation()
    assert kept["labels"] == {"1": "sam", "2": "stage1"}  # composed as validated one by one: kept


class _ViewChain(_Chain):
    """Validation as acquired (rendition 0) and under views 1, 2: SAM worth ``sam[i]``, stage 1
    ``stage1[i]``; each rendition checks that SAM and stage 1 read that rendition's caches."""

    _validation_dice = ValidationChoiceMixin._validation_dice

    def __init__(self, sam, stage1, views=2):
        super().__init__(adapted=0.5, original=0.5, stage1_dice=0.0)
        self.values, self.views = {"sam": sam, "stage1": stage1}, views
        self.cache = "plain"
        self.stage1 = SimpleNamespace(cache="plain", flip_cache="plain_flip")

    def chain_setting(self, key, default):
        return self.views if key == "validation_views" else default

    def _validation_view_caches(self, cases):
        k = int(self.chain_setting("validation_views", 0))
        return [(f"view{i}", f"cache{i}", f"flip{i}") for i in range(1, k + 1)]

    def _rendition_dice(self, cases, use_stage1, choice, transform):
        i = 0 if transform is None else int(transform[4:])
        expected = ("plain", "plain", "plain_flip") if i == 0 else (f"cache{i}", f"cache{i}", f"flip{i}")
        assert (self.cache, self.stage1.cache, self.stage1.flip_cache) == expected
        return {1: self.values["stage1" if use_stage1 else "sam"][i]}


def test_the_choice_under_validation_views_favours_what_holds_when_the_scanner_changes():
    # as acquired SAM validates better; under both views stage 1 does, and by more
    t = _ViewChain(sam=[0.8, 0.4, 0.4], stage1=[0.7, 0.6, 0.6])
    choice = t.choose_on_validation()
    assert choice["labels"] == {"1": "stage1"} and choice["validation_views"] == 2
    assert choice["validation_dice"]["stage1"][1] == pytest.approx((0.7 + 0.6 + 0.6) / 3)
    assert choice["validation_dice"]["adapted_decoder"][1] == pytest.approx((0.8 + 0.4 + 0.4) / 3)
    # the caches are the plain ones again, and the views are gone
    assert (t.cache, t.stage1.cache, t.stage1.flip_cache) == ("plain", "plain", "plain_flip")
    assert t.validation_renditions == []
    # without views (colour inputs, plans written before the key): the cases as acquired decide
    t = _ViewChain(sam=[0.8, 0.4, 0.4], stage1=[0.7, 0.6, 0.6], views=0)
    choice = t.choose_on_validation()
    assert choice["labels"] == {"1": "sam"} and choice["validation_views"] == 0
    assert choice["validation_dice"]["stage1"][1] == pytest.approx(0.7)


def test_a_failing_rendition_restores_the_plain_caches():
    t = _ViewChain(sam=[0.8, 0.4, 0.4], stage1=[0.7, 0.6, 0.6])
    t.validation_renditions = t._validation_view_caches(["a"])

    def boom(cases, use_stage1, choice, transform):
        if transform is not None:
            raise RuntimeError("view failed")
        return {1: 0.5}

    t._rendition_dice = boom
    with pytest.raises(RuntimeError, match="view failed"):
        t._validation_dice(["a"])
    assert (t.cache, t.stage1.cache, t.stage1.flip_cache) == ("plain", "plain", "plain_flip")


@pytest.mark.parametrize("stored, expected", [
    (None, 2), ({"planned": 2, "used": 2}, 2), ({"planned": 2, "used": 1}, 1), ({"planned": 2, "used": 0}, 0),
    ("not json", 2),
    # under a budget of 100 s (allowance 20 s): 10 % = 10 s for validation views; each costs 2 cases x 5
    # slices x 2 (flipped too) = 20 passes: at 0.25 s per slice 5 s -> both fit, at 0.3 s 6 s -> one, at 0.6 s none
    ({"planned": 2, "used": 2, "seconds_per_slice": 0.25, "allowance_s": 20.0}, 2),
    ({"planned": 2, "used": 2, "seconds_per_slice": 0.3, "allowance_s": 20.0}, 1),
    ({"planned": 2, "used": 2, "seconds_per_slice": 0.6, "allowance_s": 20.0}, 0),
    ({"planned": 2, "used": 2, "seconds_per_slice": 0.6, "allowance_s": None}, 2)])
def test_validation_views_follow_the_time_budget(tmp_path, stored, expected):
    t = _Chain(adapted=0.5, original=0.5, stage1_dice=0.5)
    t.chain_setting = lambda key, default: 2 if key == "validation_views" else default
    t.stage1 = SimpleNamespace(output_folder=tmp_path, flip_cache="flipped")
    t.cache = SimpleNamespace(info=lambda case: {"shape": (5, 256, 64, 64)})
    if stored is not None:
        (tmp_path / "appearance_views.json").write_text(stored if isinstance(stored, str) else json.dumps(stored))
    assert t._validation_view_count(["a", "b"]) == expected
