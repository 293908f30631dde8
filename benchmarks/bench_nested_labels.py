"""Nested labels: which label wins where SAM's masks of several labels overlap?

SAM fills the box of an outer label (the optic-disc rim's box gives the whole disc), so the rule
that splits overlapping masks decides the inner label's Dice. On two shared multi-label datasets,
every case, reference boxes (one per label and slice) to LiteMedSAM's original decoder, this
prints per-label Dice for:

- the most probable label (the rule before ``prompting.nesting_precedence``);
- the deepest label (the default), with the depths that
  :func:`samunet.sam.box_prompting.nested_label_depths` derives from the labels (here: all cases);
- the reverse order (the outer label always wins), as a check that the order matters.

Datasets (``../shared/data``): ``multisite_slices/Fundus`` (8 ROIs of 4 sites; 1 disc rim, 2 cup)
and ``prostate_runmc6`` (6 T2w volumes; 1 peripheral zone, 2 central gland).

Usage (~3 min on 2 CPU cores, most of it encoding)::

    python benchmarks/bench_nested_labels.py --work /tmp/bench_nested
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _roots(work: Path) -> None:
    for k in ("raw", "preprocessed", "results"):
        (work / k).mkdir(parents=True, exist_ok=True)
        os.environ[f"SAMUNET_{k}"] = str(work / k)


def _prepare(shared: Path) -> None:
    from samunet.dataset_conversion.convert_2d_folder import convert_2d_folder
    from samunet.dataset_conversion.convert_nifti_pairs import convert_nifti_pairs
    from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess
    from samunet.paths import preprocessed_root, raw_root

    if not any(raw_root().glob("Dataset701_*")):
        convert_nifti_pairs(shared / "prostate_runmc6/images", shared / "prostate_runmc6/masks", 701, "Zones",
                            label_names=["PZ", "CG"])
    if not any(raw_root().glob("Dataset702_*")):
        convert_2d_folder(shared / "multisite_slices/Fundus", 702, "Fundus", label_map="255:0,128:1,0:2",
                          label_names="disc,cup")
    for d in (701, 702):
        if not any(preprocessed_root().glob(f"Dataset{d}_*/plans.json")):
            plan_and_preprocess(d, num_processes=2)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float("nan") if s == 0 else 2.0 * float((a & b).sum()) / float(s)


def _label_map(p: np.ndarray, depths: dict[int, int]) -> np.ndarray:
    """``(K_fg, Z, Y, X)`` SAM sigmoids -> label map through the product's class probabilities."""
    from samunet.training.class_probabilities import (log_odds_to_probabilities_, prefer_inner_labels_,
                                                      sigmoid_log_odds)

    scores = np.zeros((p.shape[0] + 1,) + p.shape[1:], np.float32)
    sigmoid_log_odds(p, 0.5, out=scores[1:])
    return log_odds_to_probabilities_(prefer_inner_labels_(scores, depths)).argmax(0)


def run(dataset_id: int) -> None:
    from samunet.preprocessing.preprocessor import load_preprocessed_case
    from samunet.sam.box_prompting import nested_label_depths
    from samunet.sam.prompts import mask_box
    from samunet.training.trainers.embedding_head_trainer import EmbeddingHeadTrainer

    t = EmbeddingHeadTrainer(dataset_id, "0", device="cpu", num_epochs=1, num_iterations_per_epoch=1)
    t.initialize()
    t.make_datasets()
    sam = t.sam.eval()
    cases = sorted(t.split["train"] + t.split["val"])
    labels = list(t.foreground_labels)
    segs = {c: load_preprocessed_case(t.data_folder, c)[1][0] for c in cases}
    depths = nested_label_depths(segs.values(), labels)
    rules = {"most probable (before)": {}, f"deepest (default), depths {depths}": depths,
             "reverse order": {l: depths.get(labels[-1 - i], 0) for i, l in enumerate(labels)} if depths else {}}
    rows = {r: [] for r in rules}
    for c in cases:
        data, seg = load_preprocessed_case(t.data_folder, c)[0], segs[c]
        p = np.zeros((len(labels),) + seg.shape, np.float32)
        for z in range(seg.shape[0]):
            present = [i for i, l in enumerate(labels) if (seg[z] == l).any()]
            if not present:
                continue
            emb, scaled_hw = t.slice_embedding(data, z, c)
            for i in present:
                box = torch.as_tensor(np.stack([mask_box(seg[z] == labels[i])]), dtype=torch.float32)
                with torch.no_grad():
                    sparse, dense = sam.encode_prompts(boxes=sam.scale_boxes(box, seg.shape[1:]))
                    logits, _ = sam.decode(emb, sparse, dense, None)
                    p[i, z] = torch.sigmoid(sam.postprocess_logits(logits, scaled_hw, seg.shape[1:]))[0, 0].numpy()
        for r, d in rules.items():
            lab = _label_map(p, d)
            rows[r].append([_dice(lab == l, seg == l) for l in labels] + [_dice(lab > 0, seg > 0)])
    print(f"\n## Dataset {dataset_id}: {len(cases)} cases, reference boxes, LiteMedSAM's original decoder\n")
    print("| rule where masks overlap | " + " | ".join(f"label {l}" for l in labels) + " | union |")
    print("|---|" + "---|" * (len(labels) + 1))
    for r, v in rows.items():
        print(f"| {r} | " + " | ".join(f"{x:.3f}" for x in np.nanmean(np.array(v), 0)) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/samunet_bench_nested"))
    ap.add_argument("--shared", type=Path, default=SHARED)
    args = ap.parse_args()
    _roots(args.work)
    _prepare(args.shared)
    for d in (701, 702):
        run(d)


if __name__ == "__main__":
    main()
