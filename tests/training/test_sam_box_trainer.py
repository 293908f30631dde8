"""SAMBoxTrainer: decoder-only fine-tuning, the chained prediction, prompt modes."""

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from samunet.inference.predictor import predict_folder
from samunet.run.train import train
from samunet.training.trainers.sam_box_trainer import SAMBoxTrainer


@pytest.fixture
def small_planned(samunet_roots):
    from conftest import make_synthetic_raw
    from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess

    raw = make_synthetic_raw(samunet_roots["raw"], dataset_id=653, n_cases=4, shape=(3, 64, 64))
    plan_and_preprocess(653, num_processes=1)
    return raw


def test_decoder_step_reduces_loss_and_encoders_stay_frozen(small_planned):
    t = SAMBoxTrainer(653, "domain_A", device="cpu", num_epochs=1, num_iterations_per_epoch=1,
                      stage1_epochs=1, stage1_iters=1)
    t.ensure_stage1()
    t.initialize()
    t.make_datasets()
    enc_before = {k: v.clone() for k, v in t.sam.image_encoder.state_dict().items()}
    pe_before = {k: v.clone() for k, v in t.sam.prompt_encoder.state_dict().items()}
    batch = t._batch(t.train_prompts, 4, np.random.default_rng(0), jitter=False)

    def loss_now():
        with torch.no_grad():
            return float(t.loss(t._forward(batch), batch["target"]))

    before = loss_now()
    for _ in range(3):
        t.train_step(batch)
    assert loss_now() < before
    for k, v in t.sam.image_encoder.state_dict().items():
        assert torch.equal(v, enc_before[k]), k
    for k, v in t.sam.prompt_encoder.state_dict().items():
        assert torch.equal(v, pe_before[k]), k
    assert t.cache.is_valid("s00") and t.cache.load("s00").shape == (3, 256, 64, 64)


def test_micro_batches_give_the_whole_batch_gradient(small_planned):
    """sam.micro_batch_size accumulates the step's gradient over parts of the batch: the same loss and
    gradient as one pass (memory is the point, not the maths)."""
    t = SAMBoxTrainer(653, "domain_A", device="cpu", num_epochs=1, num_iterations_per_epoch=1,
                      stage1_epochs=1, stage1_iters=1)
    t.ensure_stage1()
    t.initialize()
    t.make_datasets()
    batch = t._batch(t.train_prompts, 4, np.random.default_rng(0), jitter=False)
    t.optimizer.step = lambda *a, **k: None  # compare the gradients, not an update
    params = [p for p in t.sam.mask_decoder.parameters() if p.requires_grad]
    runs = {}
    for micro in (0, 3, 1):
        t.options["micro_batch_size"] = micro
        loss = t.train_step(batch)
        runs[micro] = (loss, [p.grad.clone() for p in params])
    for micro in (3, 1):
        assert runs[micro][0] == pytest.approx(runs[0][0], rel=1e-5)
        scale = max(float(g.abs().max()) for g in runs[0][1])
        for a, b in zip(runs[micro][1], runs[0][1]):  # float32 sums in another order: 1e-5 of the gradient's scale
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * scale)
    assert any(float(g.abs().sum()) > 0 for g in runs[0][1])


@pytest.mark.slow
def test_chain_on_real_prostate_gt_box_beats_full_box(prostate_runmc6, samunet_roots, tmp_path):
    """plan -> stage 1 -> SAM stage -> validation with auto / gt_box / full_box prompts ->
    geometry-exact NIfTI; the reference box (upper bound) beats the whole-slice box."""
    from conftest import build_raw_from_pairs
    from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess

    src = prostate_runmc6
    images = [src / "images" / f"Case0{i}.nii.gz" for i in (0, 1, 3)]
    masks = [src / "masks" / f"Case0{i}_Segmentation.nii.gz" for i in (0, 1, 3)]
    raw = build_raw_from_pairs(samunet_roots["raw"], "Dataset502_Prostate3", images, masks)
    plan_and_preprocess(502, num_processes=2)
    t = train(502, 0, "SAMBoxTrainer", device="cpu", num_epochs=1, num_iterations=2, stage1_epochs=1, stage1_iters=2)
    folder = t.output_folder
    gt = json.loads((folder / "validation_gt_box" / "summary.json").read_text())
    full = json.loads((folder / "validation_full_box" / "summary.json").read_text())
    assert gt["foreground_mean"]["Dice"] > full["foreground_mean"]["Dice"]
    assert gt["foreground_mean"]["Dice"] > 0.5
    case = gt["metric_per_case"][0]["case"]
    a = sitk.ReadImage(str(raw / "labelsTr" / f"{case}.nii.gz"))
    b = sitk.ReadImage(str(folder / "validation" / f"{case}.nii.gz"))
    assert a.GetSize() == b.GetSize()
    for g in ("GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(a, g)() == pytest.approx(getattr(b, g)(), abs=1e-6)
    # the chained predictor from raw images, with an oracle prompt, reproduces the validation result
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(raw / "imagesTr" / f"{case}_0000.nii.gz", inp)
    predict_folder(inp, tmp_path / "out", 502, "SAMBoxTrainer", [0], device="cpu", prompt="gt_box",
                   labels_folder=raw / "labelsTr")
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / f"{case}.nii.gz")))
    val = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "validation_gt_box" / f"{case}.nii.gz")))
    assert (pred == val).mean() > 0.999
    # the user's own boxes (here: the reference boxes, written as a user would) reproduce gt_box
    from samunet.sam.prompts import mask_box

    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / f"{case}.nii.gz")))
    boxes = {case: {str(z): {str(l): [int(v) for v in mask_box(ref[z] == l)] for l in (1, 2) if (ref[z] == l).any()}
                    for z in range(ref.shape[0]) if ref[z].any()}}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    # prompts.json beside the gt_box predictions holds those boxes, mapped back to the image's grid
    recorded = json.loads((tmp_path / "out" / "prompts.json").read_text())[case]
    assert {(e["z"], e["label"]) for e in recorded} == {(int(z), int(l)) for z, b in boxes[case].items() for l in b}
    for e in recorded:
        np.testing.assert_allclose(e["box"], boxes[case][str(e["z"])][str(e["label"])], atol=2.0)
    predict_folder(inp, tmp_path / "out_boxes", 502, "SAMBoxTrainer", [0], device="cpu",
                   boxes_file=tmp_path / "boxes.json")
    user = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out_boxes" / f"{case}.nii.gz")))
    fg = (user > 0) | (val > 0)
    assert (user[fg] == val[fg]).mean() > 0.9  # same prompts up to resampling rounding


@pytest.fixture
def chain_planned(samunet_roots):
    from conftest import make_synthetic_raw
    from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess
    from samunet.paths import preprocessed_root

    make_synthetic_raw(samunet_roots["raw"], dataset_id=655, n_cases=8, shape=(3, 64, 64))
    plan_and_preprocess(655, num_processes=1)
    plans_file = next(preprocessed_root().glob("Dataset655_*")) / "samunetPlans.json"
    if not plans_file.is_file():
        plans_file = next(preprocessed_root().glob("Dataset655_*")) / "plans.json"
    plans = json.loads(plans_file.read_text())
    plans["embedding_head"]["num_views"] = 0  # keeps the test fast; views are tested with the head
    plans["sam"]["oof_folds"] = 2
    plans["sam"]["validation_views"] = 2  # off by default; the chain's choice under views is exercised here
    plans_file.write_text(json.dumps(plans))
    return 655


@pytest.mark.learns
def test_default_chain_learns_with_out_of_fold_boxes_and_records_its_choice(chain_planned, monkeypatch):
    """EmbeddingHead stage 1 -> out-of-fold boxes -> decoder -> validation choice; on the other
    domain the automatic chain reaches a real Dice, and no training box came from a stage-1
    model that saw its case."""
    monkeypatch.setattr(SAMBoxTrainer, "ENSEMBLE_MARGIN", 1.0)  # keep the heads' mean: it is checked below
    t = train(chain_planned, "domain_A", "SAMBoxTrainer", device="cpu", num_epochs=1, num_iterations=6,
              stage1_epochs=3, stage1_iters=15)
    assert type(t.stage1).__name__ == "EmbeddingHeadTrainer"
    assert set(t.oof_sources) == set(t.split["train"])
    for case, trained_on in t.oof_sources.items():
        assert case not in trained_on
    ckpt = torch.load(t.output_folder / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    choice = json.loads(ckpt["final_choice"])
    assert choice["decoder"] in ("adapted", "original") and set(choice["labels"]) == {"1"}
    assert {"stage1_ensemble", "stage1_single"} <= set(choice["validation_dice"])
    # the choice was also validated under 2 appearance views of the validation cases (and their mirror images)
    assert choice["validation_views"] == t.plans["sam"]["validation_views"] == 2
    view_caches = sorted(d.name for d in t.preprocessed_folder.rglob("valview*") if d.is_dir())
    assert len(view_caches) == 4 and sum(n.endswith("_flip") for n in view_caches) == 2, view_caches
    assert ckpt["stage1_trainer"] == "EmbeddingHeadTrainer"
    auto = json.loads((t.output_folder / "test" / "summary.json").read_text())["foreground_mean"]["Dice"]
    ref = json.loads((t.output_folder / "test_gt_box" / "summary.json").read_text())["foreground_mean"]["Dice"]
    assert auto > 0.7 and ref > 0.7
    # the checkpoint alone restores stage 1 and the choice
    loaded = SAMBoxTrainer.from_checkpoint(t.output_folder / "checkpoint_final.pth", "cpu")
    assert type(loaded.stage1).__name__ == "EmbeddingHeadTrainer" and loaded.final_choice == choice
    # an adapted decoder the choice did not take stays in the checkpoint (and survives a reload)
    if choice["decoder"] == "original":
        assert set(ckpt["adapted_decoder"]) == set(ckpt["network_weights"])
        assert set(loaded.adapted_decoder) == set(ckpt["network_weights"])
    else:
        assert "adapted_decoder" not in ckpt and loaded.adapted_decoder is None
    # the adapted decoder is halfway between the weights as trained (checkpoint_latest) and the pretrained ones
    trained = torch.load(t.output_folder / "checkpoint_latest.pth", map_location="cpu", weights_only=True)
    trained = trained["network_weights"]
    adapted = ckpt["adapted_decoder"] if choice["decoder"] == "original" else ckpt["network_weights"]
    pretrained = t.make_sam().mask_decoder.state_dict()
    moved = [k for k in trained if trained[k].is_floating_point() and not torch.equal(trained[k], pretrained[k])]
    assert moved  # the decoder trained at all
    for k in moved:
        torch.testing.assert_close(adapted[k], 0.5 * trained[k] + 0.5 * pretrained[k], atol=1e-6, rtol=1e-5)
    # ... and the out-of-fold heads, whose mean with the fold's head gives the automatic boxes
    assert len(ckpt["stage1_ensemble_weights"]) == 2
    members = loaded.stage1.ensemble_members
    assert len(members) == 2
    from samunet.preprocessing.preprocessor import load_preprocessed_case

    case = t.split["test"][0]
    data, _, _ = load_preprocessed_case(t.data_folder, case)
    loaded.stage1.options = {**loaded.stage1.options, "test_time_flip": False}  # heads only (flipping: its own test)
    mean = loaded.stage1.predict_preprocessed(data, case)
    each = [loaded.stage1.predict_preprocessed(data, case, network=n) for n in [loaded.stage1.network, *members]]
    np.testing.assert_allclose(mean, np.mean(each, axis=0), atol=1e-5)
    assert max(np.abs(e - each[0]).max() for e in each[1:]) > 1e-3  # three different heads
    # checkpoint_best (here the one epoch's) gets the same interpolation and choice: --use_best predicts alike
    best = torch.load(t.output_folder / "checkpoint_best.pth", map_location="cpu", weights_only=True)
    assert json.loads(best["final_choice"]) == choice
    for k, v in ckpt["network_weights"].items():
        torch.testing.assert_close(best["network_weights"][k], v)
    # validating again (--val_only) restores the run's stage-1 heads and choice from the checkpoint
    again = train(chain_planned, "domain_A", "SAMBoxTrainer", device="cpu", val_only=True, skip_validation=True,
                  stage1_epochs=3, stage1_iters=15)
    assert again.final_choice == choice and len(again.stage1.ensemble_members) == 2
    for k, v in ckpt["stage1_weights"].items():
        torch.testing.assert_close(again.stage1.network.state_dict()[k], v)


def test_stage1_choice_is_validated(small_planned):
    with pytest.raises(KeyError, match="no trainer named"):
        SAMBoxTrainer(653, "domain_A", device="cpu", stage1="NoSuchTrainer")._stage1_class()
    with pytest.raises(ValueError, match="stage-1 trainer"):
        SAMBoxTrainer(653, "domain_A", device="cpu", stage1="SAMBoxTrainer_GTBoxes")._stage1_class()


def _tiny_chain(samunet_roots, dataset_id: int, **raw) -> SAMBoxTrainer:
    """A planned synthetic dataset (4 cases) and its domain_A chain, stage 1 trained one step, ready to predict."""
    from conftest import make_synthetic_raw
    from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess

    make_synthetic_raw(samunet_roots["raw"], dataset_id=dataset_id, n_cases=4, **raw)
    plan_and_preprocess(dataset_id, num_processes=1)
    t = SAMBoxTrainer(dataset_id, "domain_A", device="cpu", num_epochs=1, num_iterations_per_epoch=1,
                      stage1_epochs=1, stage1_iters=1, oof_folds=0)
    t.ensure_stage1()
    t.initialize()
    t.make_datasets()
    return t


def test_the_chain_passes_its_appearance_view_options_to_an_embedding_stage1(small_planned):
    from samunet.training.trainers.embedding_head_trainer import EmbeddingHeadTrainer
    from samunet.training.trainers.resnet_trainer import ResNetTrainer

    t = SAMBoxTrainer(653, "domain_A", device="cpu", num_views=0, view_ops="blur_lowres")
    assert t._stage1_options(EmbeddingHeadTrainer) == {"num_views": 0, "view_ops": "blur_lowres"}
    assert t._stage1_options(ResNetTrainer) == {}  # not on the SAM embedding: nothing to pass


def test_presence_prior_on_images_and_volumes_and_in_the_checkpoint(samunet_roots):
    """Cases that all hold the label: a test image (or volume) where stage 1 is unsure everywhere
    still gets a box (on every slice of its most probable region); plans without the key do not."""
    from samunet.preprocessing.preprocessor import load_preprocessed_case

    t = _tiny_chain(samunet_roots, 657, shape=(1, 64, 64))
    assert t.always_present == {1}
    case = t.split["test"][0]
    data, _, _ = load_preprocessed_case(t.data_folder, case)
    assert data.shape[1] == 1
    faint = np.zeros((2, *data.shape[1:]), dtype=np.float32)
    faint[1, 0, 20:30, 20:34] = 0.2  # unsure everywhere: nowhere above theta1 or the fallback
    faint[0] = 1 - faint[1]
    t.stage1.predict_preprocessed = lambda d, **kw: np.repeat(faint, d.shape[1], axis=1)
    t.final_choice = None
    assert t.prompting["box_scale"] == 1.1  # the planner's default: automatic boxes grown by 5 % per side
    used = []
    t.predict_preprocessed(data, case, prompt="auto", prompts_out=used)
    assert [u["box"] for u in used] == [[19, 20, 34, 30]]  # 14 x 10 px: 0.7 / 0.5 px more per side
    t.plans["prompting"]["box_scale"] = 1.0  # the region's own box, as stage 1 gives it
    used = []
    t.predict_preprocessed(data, case, prompt="auto", prompts_out=used)
    assert [u["box"] for u in used] == [[20, 20, 33, 29]]
    used = []  # reference boxes are never scaled
    t.plans["prompting"]["box_scale"] = 2.0
    ref = np.zeros((1, *data.shape[1:]), dtype=np.int16)
    ref[0, 0, 20:30, 20:34] = 1
    t.predict_preprocessed(data, case, reference_seg=ref, prompt="gt_box", prompts_out=used)
    assert [u["box"] for u in used] == [[20, 20, 33, 29]]
    t.plans["prompting"]["box_scale"] = 1.0
    # a volume: the region spans its slices, each gets its box; once stage 1 finds the label on a
    # slice, only the threshold rule speaks
    used = []
    t.predict_preprocessed(np.repeat(data, 3, axis=1), None, prompt="auto", prompts_out=used)
    assert [(u["z"], u["box"]) for u in used] == [(z, [20, 20, 33, 29]) for z in range(3)]
    found = np.repeat(faint, 3, axis=1)
    found[1, 1, 40:50, 40:50], found[0, 1, 40:50, 40:50] = 0.9, 0.1
    t.stage1.predict_preprocessed = lambda d, **kw: found
    used = []
    t.predict_preprocessed(np.repeat(data, 3, axis=1), None, prompt="auto", prompts_out=used)
    assert [(u["z"], u["box"]) for u in used] == [(1, [40, 40, 49, 49])]
    t.stage1.predict_preprocessed = lambda d, **kw: np.repeat(faint, d.shape[1], axis=1)
    t.always_present = frozenset()
    used = []
    t.predict_preprocessed(data, case, prompt="auto", prompts_out=used)
    assert used == []
    # restored from the checkpoint
    t.always_present = frozenset({1})
    t.save("checkpoint_final.pth")
    loaded = SAMBoxTrainer.from_checkpoint(t.output_folder / "checkpoint_final.pth", "cpu")
    assert loaded.always_present == {1}
    # plans without presence_prior: off
    t.plans["prompting"].pop("presence_prior")
    assert t.always_present_labels() == frozenset()


def test_in_sample_training_boxes_need_no_mirrored_encoder_pass(small_planned):
    """Without out-of-fold heads the fold's own head gives the decoder's training boxes, like an
    out-of-fold head would: one head, no test-time flipping (an encoder pass per training slice)."""
    t = SAMBoxTrainer(653, "domain_A", device="cpu", num_epochs=1, num_iterations_per_epoch=1,
                      stage1_epochs=1, stage1_iters=1, oof_folds=0)
    t.ensure_stage1()
    t.initialize()
    t.make_datasets()
    assert t.stage1.test_time_flip

    def no_mirrored_pass(*args, **kwargs):
        raise AssertionError("training boxes encoded mirrored slices")

    t.stage1.mirrored_embeddings_of = no_mirrored_pass
    prompts = t.collect_prompts(t.split["train"], "stage1")
    assert prompts and {p[0] for p in prompts} <= set(t.split["train"])


def test_stage1_budget_shares_what_encoding_left_and_warns_when_encoding_took_most(small_planned, caplog):
    """Stage 1's models share ``stage1_time_share`` of the budget left after encoding and the
    validation reserve; when encoding took more than half of it the log says so and what to do."""
    import logging
    import time

    t = SAMBoxTrainer(653, "domain_A", device="cpu")
    t.budget_start = time.perf_counter() - 100  # encoding took 100 s
    with caplog.at_level(logging.INFO):
        assert t.stage1_budget(1000.0, heads=4) == pytest.approx((850 - 100) * 0.5 / 4, abs=0.5)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert t.stage1_budget(200.0, heads=4) == pytest.approx((170 - 100) * 0.5 / 4, abs=0.5)
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "encoding took 100 s of the 200 s" in warnings[0]
        assert "--time_budget" in warnings[0]
    t.budget_start = time.perf_counter() - 500  # nothing left: each stage trains its minimum
    assert t.stage1_budget(200.0, heads=4) == 1.0
    t.plans["sam"]["stage1_time_share"] = 1.0
    with pytest.raises(ValueError, match="stage1_time_share"):
        t.stage1_budget(1000.0, heads=1)


def test_nested_labels_the_deepest_wins_where_masks_overlap_and_the_checkpoint_keeps_it(samunet_roots):
    """SAM fills an outer label's box: with label 2 inside label 1 in the training labels, label 2
    wins where both masks are on (the most probable label won before); restored from the checkpoint;
    plans without the key keep the old rule."""
    t = _tiny_chain(samunet_roots, 658, shape=(2, 48, 48), num_labels=2)
    assert t.label_depths() == {}  # the synthetic blob and square lie side by side
    yy, xx = np.mgrid[:48, :48]
    r = np.hypot(yy - 24, xx - 24)
    disc = np.where(r < 6, 2, np.where(r < 14, 1, 0))[None, None].repeat(2, axis=1)  # rim 1 around cup 2
    t._segs = {c: disc for c in t.split["train"]}
    t._label_depths = None
    assert t.label_depths() == {2: 1}

    def decide(trainer):
        scores = trainer.empty_label_scores((1, 1, 4, 4))
        scores[1], scores[2] = 0.95, 0.8  # SAM's filled disc is surer than the cup
        return trainer.class_probabilities(scores).argmax(0)

    assert (decide(t) == 2).all()
    t.save("checkpoint_final.pth")
    loaded = SAMBoxTrainer.from_checkpoint(t.output_folder / "checkpoint_final.pth", "cpu")
    assert loaded.label_depths() == {2: 1} and (decide(loaded) == 2).all()
    t.plans["prompting"].pop("nesting_precedence")
    t._label_depths = None
    assert t.label_depths() == {} and (decide(t) == 1).all()


def test_sams_iou_prediction_picks_the_box_set_among_the_candidate_thresholds(samunet_roots):
    """Plan prompting.candidate_thresholds: each label's box sets at those θ1 are decoded and the set SAM's
    IoU head rates best is used (and recorded); without the key only the θ1 boxes are decoded."""
    from samunet.preprocessing.preprocessor import load_preprocessed_case

    t = _tiny_chain(samunet_roots, 659, shape=(1, 64, 64))
    assert t.prompting["candidate_thresholds"] == [0.5, 0.75, 0.9]  # new plans: on
    data, _, _ = load_preprocessed_case(t.data_folder, t.split["test"][0])
    probs = np.zeros((2, 1, 64, 64), dtype=np.float32)
    probs[1, 0, 10:40, 10:40] = 0.6  # an unsure rim (boxed at θ1 0.5) ...
    probs[1, 0, 20:30, 20:30] = 0.95  # ... around a sure core (θ1 0.75 and 0.9)
    probs[0] = 1 - probs[1]
    t.stage1.predict_preprocessed = lambda d, **kw: probs
    t.final_choice = None
    t.plans["prompting"]["box_scale"] = 1.0  # the sets' own boxes (the scale has its own test)
    decode, rated = t.sam.decode, []

    def rated_decode(*args, **kw):  # SAM's masks, with IoU predictions set by the test
        logits, _ = decode(*args, **kw)
        rated.append(logits.shape[0])
        return logits, torch.tensor(scores[:logits.shape[0]])[:, None]

    t.sam.decode = rated_decode
    for scores, box in (([0.2, 0.9], [10, 10, 39, 39]), ([0.9, 0.2], [20, 20, 29, 29])):
        used = []
        t.predict_preprocessed(data, None, prompt="auto", prompts_out=used)
        assert [u["box"] for u in used] == [box] and rated[-1] == 2  # two distinct sets, one kept
    t.plans["prompting"]["candidate_thresholds"] = []
    used = []
    t.predict_preprocessed(data, None, prompt="auto", prompts_out=used)
    assert [u["box"] for u in used] == [[20, 20, 29, 29]] and rated[-1] == 1


class _CountingCache:
    def __init__(self, cache):
        self.cache, self.loads = cache, 0

    def load(self, case):
        self.loads += 1
        return self.cache.load(case)

    def info(self, case):
        return self.cache.info(case)


def test_decoder_training_samples_draw_the_views_stage1_trained_on(small_planned):
    """sam.decoder_views: a decoder training sample takes the plain embedding or one of the appearance
    views stage 1 encoded (no more), each alike; without views the samples are those of before."""
    from samunet.training.view_budget import DECISION_FILE, read_decision
    from samunet.utilities.file_io import save_json

    t = SAMBoxTrainer(653, "domain_A", device="cpu", num_epochs=1, num_iterations_per_epoch=1,
                      stage1_epochs=1, stage1_iters=1, oof_folds=0)
    t.ensure_stage1()
    t.initialize()
    t.make_datasets()
    assert t.plans["sam"]["decoder_views"] is True and t.plans["embedding_head"]["num_views"] == 2  # grey data
    decision = read_decision(t.stage1_checkpoint.parent)
    assert decision["used"] == 2 and [c.folder.name for c in t.decoder_view_caches] == decision["views"]
    plain = _CountingCache(t.cache)
    views = [_CountingCache(c) for c in t.decoder_view_caches]
    t.cache = plain
    t._batch(t.train_prompts, 300, np.random.default_rng(0), jitter=False, views=views)
    counts = [plain.loads] + [v.loads for v in views]
    assert sum(counts) == 300 and all(60 < n < 140 for n in counts), counts
    a = t._batch(t.train_prompts, 8, np.random.default_rng(1), jitter=False, views=None)
    b = t._batch(t.train_prompts, 8, np.random.default_rng(1), jitter=False, views=[])
    assert torch.equal(a["embeddings"], b["embeddings"]) and torch.equal(a["boxes"], b["boxes"])
    # only the views stage 1 used; none when the plan (or --opt) turns it off
    save_json({**decision, "used": 1}, t.stage1_checkpoint.parent / DECISION_FILE)
    assert len(t.stage1_view_caches()) == 1
    t.options["decoder_views"] = False
    assert t.stage1_view_caches() == []
