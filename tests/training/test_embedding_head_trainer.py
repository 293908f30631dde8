"""EmbeddingHeadTrainer: stage 1 on the cached SAM embedding learns, maps to the slice frame,
trains out-of-fold parts that never see their held-out cases, and feeds the SAMBox chain."""

import numpy as np
import pytest
import torch

from samunet.networks.embedding_head import EmbeddingHead
from samunet.preprocessing.preprocessor import load_preprocessed_case


@pytest.fixture(scope="module")
def head_planned(tmp_path_factory):
    """One planned synthetic dataset (and its embedding cache, filled by the first test) for
    the whole module: encoding is the expensive part."""
    from conftest import make_synthetic_raw
    from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess

    base = tmp_path_factory.mktemp("head")
    with pytest.MonkeyPatch.context() as mp:
        for sub in ("raw", "preprocessed", "results"):
            (base / sub).mkdir()
            mp.setenv(f"SAMUNET_{sub}", str(base / sub))
        make_synthetic_raw(base / "raw", dataset_id=654, n_cases=6, shape=(4, 64, 64))
        plan_and_preprocess(654, num_processes=1)
        yield 654


def _dice(pred, ref):
    return 2 * float((pred & ref).sum()) / max(1, int(pred.sum()) + int(ref.sum()))


def test_head_output_frame_and_parameter_count():
    head = EmbeddingHead(3, width=64)
    out = head(torch.randn(2, 256, 64, 64))
    assert out.shape == (2, 3, 256, 256)
    assert sum(p.numel() for p in head.parameters()) < 200_000
    with pytest.raises(ValueError, match="256"):
        head(torch.randn(1, 128, 64, 64))


@pytest.mark.learns
def test_embedding_head_learns_and_generalises_to_held_out_domain(head_planned):
    """A short run on a separable synthetic set: Dice > 0.9 on the other domain's slices
    (never seen in training). An untrained head does not get there."""
    from samunet.training.trainers.embedding_head_trainer import EmbeddingHeadTrainer

    t = EmbeddingHeadTrainer(head_planned, "domain_A", device="cpu", num_epochs=4, num_iterations_per_epoch=15,
                             num_views=0)
    t.run_training()

    def held_out_dice(trainer):
        dices = []
        for case in trainer.split["test"]:
            data, seg, _ = load_preprocessed_case(trainer.data_folder, case)
            probs = trainer.predict_preprocessed(data, case=case)
            assert probs.shape == (2, *data.shape[1:])
            assert np.allclose(probs.sum(0), 1, atol=1e-4)
            dices.append(_dice(probs.argmax(0) == 1, seg[0] == 1))
        return float(np.mean(dices))

    assert set(t.split["test"]).isdisjoint(t.split["train"])
    assert held_out_dice(t) > 0.9
    # the checkpoint alone predicts the same (encoder path, no cache)
    loaded = EmbeddingHeadTrainer.from_checkpoint(t.output_folder / "checkpoint_final.pth", "cpu")
    case = t.split["test"][0]
    data, _, _ = load_preprocessed_case(t.data_folder, case)
    assert np.allclose(loaded.predict_preprocessed(data), t.predict_preprocessed(data, case=case), atol=2e-2)
    fresh = EmbeddingHeadTrainer(head_planned, "domain_A", device="cpu", num_epochs=1, num_iterations_per_epoch=1,
                                 num_views=0)
    fresh.initialize()
    fresh.make_datasets()
    assert held_out_dice(fresh) < 0.9


def test_appearance_views_are_cached_beside_the_embeddings(head_planned):
    from samunet.training.trainers.embedding_head_trainer import EmbeddingHeadTrainer

    t = EmbeddingHeadTrainer(head_planned, "domain_A", device="cpu", num_epochs=1, num_iterations_per_epoch=1,
                             num_views=1)
    t.initialize()
    t.make_datasets()
    case = t.split["train"][0]
    view = t.view_caches[0]
    assert view.folder.parent == t.cache.folder and view.is_valid(case)
    assert not view.is_valid(t.split["test"][0])  # views of training cases only
    plain, shifted = np.asarray(t.cache.load(case), np.float32), np.asarray(view.load(case), np.float32)
    assert plain.shape == shifted.shape and not np.allclose(plain, shifted, atol=1e-2)


def test_view_ops_choose_the_transforms(head_planned):
    from samunet.training.trainers.embedding_head_trainer import EmbeddingHeadTrainer, view_transform

    t = EmbeddingHeadTrainer(head_planned, "domain_A", device="cpu", num_epochs=1, num_iterations_per_epoch=1,
                             num_views=1, view_ops="colour_jitter,blur_lowres")
    assert t.view_ops == ("colour_jitter", "blur_lowres")
    data = np.random.default_rng(0).random((1, 2, 32, 32)).astype(np.float32)
    only_blur = view_transform(1, 0, ("blur_lowres",))(data, "c")
    assert not np.allclose(only_blur, view_transform(1, 0)(data, "c"))  # other ops, other view
    np.testing.assert_array_equal(only_blur, view_transform(1, 0, ("blur_lowres",))(data, "c"))
    t.plans["embedding_head"]["view_ops"] = ["blur_lowres"]  # the option wins over the plan
    assert t.view_ops == ("colour_jitter", "blur_lowres")
    bad = EmbeddingHeadTrainer(head_planned, "domain_A", device="cpu", num_epochs=1, num_iterations_per_epoch=1,
                               view_ops="colour_jiter")
    with pytest.raises(ValueError, match="colour_jiter.*choose from"):
        bad.view_ops


def test_scale_views_are_cached_and_their_targets_follow_the_zoom(head_planned):
    """A scale view's cached embedding is the encoder's reading of the zoomed slice, and its training
    target is the label slice zoomed the same way (foreground area scaled by the zoom squared)."""
    import zlib

    from samunet.sam.scale_views import apply_zoom, slice_zoom
    from samunet.training.trainers.embedding_head_trainer import EmbeddingHeadTrainer, scale_transform

    t = EmbeddingHeadTrainer(head_planned, "domain_A", device="cpu", num_epochs=1, num_iterations_per_epoch=1,
                             num_views=0, num_scale_views=1)
    t.initialize()
    t.make_datasets()
    assert len(t.scale_caches) == 1 and not t.view_caches
    cache = t.scale_caches[0]
    case = t.split["train"][0]
    assert cache.folder.parent == t.cache.folder and cache.is_valid(case)
    assert not cache.is_valid(t.split["test"][0])  # training cases only
    data, seg, _ = load_preprocessed_case(t.data_folder, case)
    z = int(np.argmax((seg[0] > 0).sum(axis=(1, 2))))
    zoom = slice_zoom(0, 1, zlib.crc32(case.encode()), z, data.shape[2:], t.scale_range)
    enc, _ = t.embeddings_of(scale_transform(1, 0, t.scale_range)(data, case))
    assert np.allclose(np.asarray(cache.load(case)[z], np.float32), enc[z], atol=5e-2)
    plain, target = t.target(case, z), t.target(case, z, 1)
    zoomed = apply_zoom(np.asarray(seg[0, z]), zoom, order=0, fill=0)
    ratio = (zoomed > 0).sum() / max(1, (seg[0, z] > 0).sum())
    got = (target > 0).sum() / max(1, (plain > 0).sum())
    assert abs(got - ratio) < 0.15 * ratio + 0.02
    if abs(zoom.scale - 1) > 0.1 and (seg[0, z] > 0).sum() > 50 and ratio > 0.2:
        assert not np.array_equal(plain, target)
    # a training batch draws the plain slice and the view; every target has the slice's shape
    batch = t.next_train_batch()
    assert batch["seg"].shape[1:] == (1, 256, 256) and batch["data"].shape[1:] == (256, 64, 64)


def test_context_blocks_and_heads_written_before_them():
    """Default: dilated context blocks; a config without the key (older checkpoints) builds the
    head without them, so its saved weights load unchanged."""
    from samunet.experiment_planning.method_defaults import EMBEDDING_HEAD
    from samunet.networks.embedding_head import build_embedding_head

    assert EMBEDDING_HEAD["context_dilations"] == [2, 4]
    new = build_embedding_head({"num_outputs": 1, "context_dilations": [2, 4]})
    dil = [m.dilation for m in new.context.modules() if isinstance(m, torch.nn.Conv2d)]
    assert dil == [(2, 2), (4, 4)]
    old = build_embedding_head({"num_outputs": 1})
    assert old.context is None and not any(k.startswith("context") for k in old.state_dict())
    old.load_state_dict(EmbeddingHead(1).state_dict())  # a head saved before context blocks existed


def test_test_time_flip_averages_the_mirrored_reading(head_planned):
    """With test_time_flip the probabilities are the mean of the head on the slice and, mirrored
    back, on the mirrored slice (from the flip cache for the fold's test cases, from the encoder
    for data without a case); without it, the plain reading."""
    from samunet.training.trainers.embedding_head_trainer import EmbeddingHeadTrainer, flip_transform

    t = EmbeddingHeadTrainer(head_planned, "domain_A", device="cpu", num_epochs=1, num_iterations_per_epoch=2,
                             num_views=0, test_time_flip=True)
    t.run_training()
    case = t.split["test"][0]
    assert t.flip_cache is not None and t.flip_cache.is_valid(case)
    assert not t.flip_cache.is_valid(t.split["train"][0])  # mirrored slices of the predicted cases only
    data, _, _ = load_preprocessed_case(t.data_folder, case)
    emb, hw = t.embeddings_of(data, case)
    mirrored = np.asarray(t.flip_cache.load(case), np.float32)
    plain = t.predict_embeddings(emb, hw, data.shape[2:])
    back = t.predict_embeddings(mirrored, hw, data.shape[2:])[..., ::-1]
    assert not np.allclose(plain, back, atol=1e-3)  # the mirrored view says something else
    assert np.allclose(t.predict_preprocessed(data, case=case), (plain + back) / 2, atol=1e-5)
    # no case: the mirrored slices come from the encoder, the same as the cached ones
    assert np.allclose(t.predict_preprocessed(data), (plain + back) / 2, atol=2e-2)
    assert np.allclose(t.mirrored_embeddings_of(data), mirrored, atol=5e-2)
    assert np.array_equal(flip_transform(data)[..., ::-1], data)
    t.options["test_time_flip"] = False
    assert np.allclose(t.predict_preprocessed(data, case=case), plain, atol=1e-5)


def test_out_of_fold_models_never_saw_their_case(head_planned):
    from samunet.training.trainers.embedding_head_trainer import EmbeddingHeadTrainer

    t = EmbeddingHeadTrainer(head_planned, "domain_A", device="cpu", num_epochs=1, num_iterations_per_epoch=2,
                             num_views=0)
    t.initialize()
    t.make_datasets()
    oof = t.train_out_of_fold(2)
    assert set(oof) == set(t.split["train"])
    networks = {id(v["network"]) for v in oof.values()}
    assert len(networks) == 2
    for case, v in oof.items():
        assert case not in v["trained_on"]
        assert set(v["trained_on"]) < set(t.split["train"])
    # each part's trainer really trained on what it reports (its checkpoint exists under the fold)
    assert sorted(p.name for p in (t.output_folder / "oof_2").iterdir()) == ["part_0", "part_1"]
    # a second call resumes the finished parts instead of training them again
    again = t.train_out_of_fold(2)
    for case in oof:
        a, b = oof[case]["network"].state_dict(), again[case]["network"].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_out_of_fold_parts_keep_a_group_of_dataset_json_together(head_planned):
    """Two training cases of one patient (dataset.json groups) are held out by the same part, so
    neither gets its boxes from a head trained on the other; the case-wise parts split them."""
    from samunet.training.trainers.embedding_head_trainer import EmbeddingHeadTrainer

    t = EmbeddingHeadTrainer(head_planned, 0, device="cpu", num_epochs=1, num_iterations_per_epoch=1, num_views=0)
    t.initialize()
    t.make_datasets()
    cases = sorted(t.split["train"])
    assert len(cases) >= 3
    order = np.random.default_rng([t.seed, 11]).permutation(len(cases))
    a, b = cases[order[0]], cases[order[1]]  # in different parts when split case by case
    t.dataset_json = {**t.dataset_json, "groups": {a: "patient", b: "patient"}}
    t.output_folder = t.output_folder / "grouped"
    oof = t.train_out_of_fold(2)
    assert set(oof) == set(cases)
    assert b not in oof[a]["trained_on"] and a not in oof[b]["trained_on"]
    assert oof[a]["network"] is oof[b]["network"]
    for case, v in oof.items():
        assert case not in v["trained_on"]


def test_out_of_fold_parts_without_groups_are_the_case_wise_parts():
    from samunet.training.trainers.embedding_head_trainer import out_of_fold_parts

    cases = [f"c{i}" for i in range(7)]
    order = np.random.default_rng([3, 11]).permutation(7)
    assert out_of_fold_parts(cases, None, 3, [3, 11]) == [sorted(cases[i] for i in order[j::3]) for j in range(3)]
    assert out_of_fold_parts(cases, {c: "p" for c in cases}, 3, [3, 11]) == [cases]  # one group: one part


def test_appearance_views_are_capped_by_the_time_budget_and_the_cap_is_kept(head_planned):
    """A budget too small for one view's encoding encodes none, says so in appearance_views.json, and
    a later run of the fold (here without a budget) keeps the decision instead of encoding views."""
    from samunet.training.trainers.embedding_head_trainer import EmbeddingHeadTrainer
    from samunet.training.view_budget import DECISION_FILE
    from samunet.utilities.file_io import load_json

    t = EmbeddingHeadTrainer(head_planned, "domain_A", device="cpu", num_views=2, view_ops="blur_lowres",
                             time_budget="1s")
    t.initialize()
    t.make_datasets()
    assert t.view_caches == []
    stored = load_json(t.output_folder / DECISION_FILE)
    assert stored["planned"] == 2 and stored["used"] == 0 and stored["seconds_per_slice"] > 0
    assert not any(v.is_valid(c) for c in t.split["train"] for v in (t.make_cache("view1_blur_lowres"),))
    again = EmbeddingHeadTrainer(head_planned, "domain_A", device="cpu", num_epochs=1, num_iterations_per_epoch=1,
                                 num_views=2, view_ops="blur_lowres")
    again.initialize()
    again.make_datasets()
    assert again.view_caches == []
    (t.output_folder / DECISION_FILE).unlink()
