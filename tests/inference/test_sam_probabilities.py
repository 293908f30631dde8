"""What a SAM trainer saves with --save_probabilities / --npz: class probabilities (background
first, summing to 1, argmax = the exported label map), which samunet_ensemble can average with
another model's; the chain's per-label stage-1 choice gives stage 1's probabilities.

SAM and stage 1 are stand-ins with known outputs (the real networks are tested elsewhere): the
decoder answers each box with 0.97 on the box grown by 2 px, stage 1 is a softmax from the
reference labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samunet.imageio import reader_writer_for
from samunet.inference.ensembling import ensemble_folders
from samunet.inference.export import export_prediction, read_probabilities_npz
from samunet.preprocessing.preprocessor import load_preprocessed_case, revert_seg
from samunet.training.trainers.sam_box_trainer import SAMBoxTrainer

DATASET = 657
P_IN, P_OUT, GROW = 0.97, 1e-4, 2


class BoxSam:
    """The SAM wrapper's inference interface; ``decode`` gives P_IN on each box grown by GROW px."""

    def __init__(self, hw):
        self.hw = hw

    def eval(self):
        return self

    def scale_boxes(self, boxes, hw):
        return boxes

    def encode_prompts(self, boxes):
        return boxes, None

    def decode(self, emb, boxes, dense, masks, multimask_output=False):
        y, x = self.hw
        p = np.full((len(boxes), 1, y, x), P_OUT, np.float32)
        for i, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
            p[i, 0, max(0, y0 - GROW):y1 + GROW + 1, max(0, x0 - GROW):x1 + GROW + 1] = P_IN
        return torch.from_numpy(np.log(p) - np.log1p(-p)), torch.ones(len(boxes), 1)

    def postprocess_logits(self, logits, scaled_hw, hw):
        return logits


def stage1_softmax(seg: np.ndarray) -> np.ndarray:
    """``(3, Z, Y, X)``: 0.8 for the reference label, background (0.8, 0.15, 0.05) elsewhere."""
    p = np.empty((3,) + seg.shape[1:], np.float32)
    p[:] = np.array([0.8, 0.15, 0.05], np.float32)[:, None, None, None]
    for k in (1, 2):
        p[:, seg[0] == k] = np.where(np.arange(3) == k, 0.8, 0.1)[:, None]
    return p


class SoftmaxStage1:
    def __init__(self, probs: dict):
        self.probs = probs

    def predict_preprocessed(self, data, case=None, **context):
        return self.probs[case].copy()


@pytest.fixture
def chain(samunet_roots):
    """A SAMBoxTrainer on a planned two-label synthetic dataset, with the stand-ins."""
    from conftest import make_synthetic_raw
    from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess

    make_synthetic_raw(samunet_roots["raw"], dataset_id=DATASET, n_cases=2, shape=(3, 64, 64), num_labels=2)
    plan_and_preprocess(DATASET, num_processes=1)
    t = SAMBoxTrainer(DATASET, "0", device="cpu")
    cases = ["s00", "s01"]
    t.stage1 = SoftmaxStage1({c: stage1_softmax(load_preprocessed_case(t.data_folder, c)[1]) for c in cases})
    data = load_preprocessed_case(t.data_folder, cases[0])[0]
    t.sam, t.cache, t.final_choice = BoxSam(data.shape[2:]), None, None
    t.slice_embedding = lambda data, z, case=None: (torch.zeros(1, 1), tuple(data.shape[2:]))
    return t, cases


def sam_masks(prompts: list, shape) -> np.ndarray:
    """``(2, Z, Y, X)``: where the stand-in decoder said P_IN for label 1 / label 2."""
    on = np.zeros((2,) + tuple(shape), bool)
    for e in prompts:
        x0, y0, x1, y1 = e["box"]
        on[e["label"] - 1, e["z"], max(0, y0 - GROW):y1 + GROW + 1, max(0, x0 - GROW):x1 + GROW + 1] = True
    return on


def test_saved_probabilities_are_class_probabilities_and_ensemble_with_stage1(chain, tmp_path):
    t, cases = chain
    fe = t.plans["file_ending"]
    rw = reader_writer_for(fe)
    for case in cases:
        data, seg, props = load_preprocessed_case(t.data_folder, case)
        prompts: list = []
        probs = t.predict_preprocessed(data, case=case, prompts_out=prompts)
        on = sam_masks(prompts, data.shape[1:])
        assert on[0].any() and on[1].any()
        seg_sam = export_prediction(probs, props, t.plans, tmp_path / "sam" / f"{case}{fe}", True)
        # what the other trainers write: stage 1's probabilities, exported the same way
        export_prediction(t.stage1.predict_preprocessed(data, case), props, t.plans,
                          tmp_path / "stage1" / f"{case}{fe}", True)

        saved = read_probabilities_npz(tmp_path / "sam" / f"{case}.npz")
        p = saved["probabilities"]
        assert p.shape == (3,) + seg_sam.shape and saved["label_values"] == [0, 1, 2]
        assert p.min() >= 0 and p.max() <= 1
        np.testing.assert_allclose(p.sum(0), 1.0, atol=2e-3)  # float16 file
        assert p[0].min() < 0.05 and p[0].max() > 0.99  # a background probability, not θ2
        written = rw.read_seg(tmp_path / "sam" / f"{case}{fe}")[0][0]
        np.testing.assert_array_equal(np.asarray(saved["label_values"])[p.argmax(0)], written)
        np.testing.assert_array_equal(written, seg_sam)

        # fold ensembling: where SAM alone is sure of label l (0.97) and stage 1 leans to the background
        # (0.8 vs 0.15 / 0.05), the mean says l: (0.97 + 0.15) / 2 > (0.03 + 0.8) / 2
        # (where only one label's box covers a voxel)
        expected = np.zeros(data.shape[1:], np.int16)
        expected[on[0] & ~on[1]] = 1
        expected[on[1] & ~on[0]] = 2
        margin = (on[0] | on[1]) & (seg[0] == 0)
        assert margin.sum() > 20  # the case tests what it claims to
        (tmp_path / "expected").mkdir(exist_ok=True)
        np.save(tmp_path / "expected" / f"{case}.npy", revert_seg(expected, props, [0, 1, 2]))
        np.save(tmp_path / "expected" / f"{case}.both.npy",
                revert_seg((on[0] & on[1]).astype(np.int16), props, [0, 1]))

    ensemble_folders([tmp_path / "sam", tmp_path / "stage1"], tmp_path / "ens")
    for case in cases:
        got = rw.read_seg(tmp_path / "ens" / f"{case}{fe}")[0][0]
        want = np.load(tmp_path / "expected" / f"{case}.npy")
        both = np.load(tmp_path / "expected" / f"{case}.both.npy") > 0
        np.testing.assert_array_equal(got[~both], want[~both])  # where both boxes overlap SAM splits its 0.97


def test_stage1_choice_gives_stage1_probabilities(chain):
    t, cases = chain
    data, seg, _ = load_preprocessed_case(t.data_folder, cases[0])
    soft = t.stage1.predict_preprocessed(data, cases[0])
    t.final_choice = {"labels": {"1": "stage1", "2": "stage1"}}
    np.testing.assert_allclose(t.predict_preprocessed(data, case=cases[0]), soft, atol=1e-5)
    # label 1 from stage 1, label 2 from SAM: still a distribution, label 1 with stage 1's odds against
    # its strongest alternative (positive where stage 1's argmax is label 1)
    t.final_choice = {"labels": {"1": "stage1", "2": "sam"}}
    prompts: list = []
    mixed = t.predict_preprocessed(data, case=cases[0], prompts_out=prompts)
    np.testing.assert_allclose(mixed.sum(0), 1.0, atol=1e-5)
    np.testing.assert_allclose(mixed[1] / mixed[0], soft[1] / np.maximum(soft[0], soft[2]), rtol=1e-4)
    on2 = sam_masks(prompts, data.shape[1:])[1]
    label = mixed.argmax(0)
    assert np.all(label[(seg[0] == 1) & ~on2] == 1)  # stage 1's 0.8 against its 0.1 background
    assert np.all(label[on2 & (seg[0] != 1)] == 2)  # SAM's 0.97
    assert np.all(label[~on2 & (seg[0] == 0)] == 0)
