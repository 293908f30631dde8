"""Which automatic prompt gets the most out of SAM? Prompt variants on a trained chain.

Reads the chain that ``bench_generalisation.py`` trained (same ``--work``; default polyp_dev,
``domain_KvasirSEG``), computes the chain's stage-1 probabilities once per case (its head
ensemble, with test-time flipping, as ``samunet_predict`` does) and turns them into masks in
several ways, all with LiteMedSAM's *original* mask decoder, on the source validation and the
unseen test cases (preprocessed frame, mean Dice per case):

- stage 1 alone (argmax);
- boxes of the stage-1 mask's components at θ1 = 0.75 (the default), 0.5, 0.3;
- the θ1 = 0.5 boxes made 5 % / 10 % larger per side;
- SAM's and stage 1's probabilities averaged (arithmetic, geometric);
- one refinement round: boxes of SAM's own mask decoded again; SAM's own low-resolution
  logits fed back as a mask prompt with the box (SAM's iterative refinement);
- SAM's three multimask outputs, choosing the one closest to the stage-1 mask or the one its
  IoU head rates best;
- box plus a positive point at the stage-1 component's most interior pixel;
- the reference box (upper bound).

Usage (after ``bench_generalisation.py --work DIR``; ~15 min on 2 CPU cores)::

    python benchmarks/bench_prompt_variants.py --work /tmp/bench_gen
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def load_chain(dataset_id: int, fold: str):
    import torch

    from samunet.training.trainers.sam_box_trainer import SAMBoxTrainer

    t = SAMBoxTrainer(dataset_id, fold, device="cpu", time_budget="none")
    t.initialize()
    state = torch.load(t.output_folder / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    t.restore_inference_state(state)
    t.cache = t.make_cache()
    t.stage1.sam, t.stage1.cache = t.sam, t.cache
    if hasattr(t.stage1, "build_flip_cache"):
        t.stage1.build_flip_cache(t.split["val"] + t.split.get("test", []), t.make_cache)
    t.sam.mask_decoder.load_state_dict(t.make_sam().mask_decoder.state_dict())  # LiteMedSAM's own decoder
    t.sam.eval()
    return t


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * float((a & b).sum()) / s


def expand(box, frac: float, hw) -> np.ndarray:
    x0, y0, x1, y1 = (int(v) for v in box)
    dx, dy = int(round(frac * (x1 - x0 + 1))), int(round(frac * (y1 - y0 + 1)))
    return np.array([max(0, x0 - dx), max(0, y0 - dy), min(hw[1] - 1, x1 + dx), min(hw[0] - 1, y1 + dy)])


class Decoder:
    """SAM's prompt encoder + decoder on one slice's embedding."""

    def __init__(self, t, emb, scaled_hw, hw):
        self.t, self.emb, self.scaled_hw, self.hw = t, emb, scaled_hw, hw

    def logits(self, boxes, points=None, dense=None, multimask=False):
        import torch

        sam = self.t.sam
        b = sam.scale_boxes(torch.as_tensor(np.stack(boxes), dtype=torch.float32), self.hw)
        pts = lab = None
        if points is not None:
            pts = sam.scale_points(torch.as_tensor(np.asarray(points), dtype=torch.float32), self.hw)
            lab = torch.ones(pts.shape[:2], dtype=torch.int64)
        sparse, dense0 = sam.encode_prompts(boxes=b, points=pts, point_labels=lab)
        return sam.decode(self.emb, sparse, dense0 if dense is None else dense, None, multimask_output=multimask)

    def probs(self, logits):
        import torch

        return torch.sigmoid(self.t.sam.postprocess_logits(logits, self.scaled_hw, self.hw)).numpy()

    def mask(self, boxes, **kw) -> np.ndarray:
        if not len(boxes):
            return np.zeros(self.hw, bool)
        return (self.probs(self.logits(boxes, **kw)[0])[:, 0] > 0.5).any(0)


def variants(t, p1: np.ndarray, dec: Decoder, ref: np.ndarray) -> dict[str, np.ndarray]:
    from scipy import ndimage

    from samunet.sam.prompts import component_boxes, mask_box

    hw = dec.hw
    empty = np.zeros(hw, bool)
    boxes = {th: component_boxes(p1, th, 0.2, 4, 16) for th in (0.75, 0.5, 0.3)}
    out = {"stage 1 alone": p1 > 0.5}
    for th, bx in boxes.items():
        out[f"boxes at θ1 {th}" + (" (default)" if th == 0.75 else "")] = dec.mask(bx)
    bx = boxes[0.5]
    for frac in (0.05, 0.1):
        out[f"θ1 0.5 boxes, {int(frac * 100)} % larger"] = dec.mask([expand(b, frac, hw) for b in bx])
    if bx:
        logits, iou = dec.logits(bx)
        psam = dec.probs(logits)[:, 0].max(0)
        out["mean of SAM and stage 1"] = (psam + p1) / 2 > 0.5
        out["geometric mean of SAM and stage 1"] = np.sqrt(psam * p1) > 0.5
        out["refined: boxes of SAM's mask, decoded again"] = dec.mask(component_boxes(psam, 0.5, 0.2, 4, 16))
        own = dec.t.sam.prompt_encoder._embed_masks(logits)
        out["refined: SAM's logits as mask prompt + box"] = (dec.probs(dec.logits(bx, dense=own)[0])[:, 0] > 0.5).any(0)
        mm_logits, mm_iou = dec.logits(bx, multimask=True)
        mm = dec.probs(mm_logits) > 0.5
        s1 = p1 > 0.5
        closest, rated = empty.copy(), empty.copy()
        for i in range(mm.shape[0]):
            closest |= mm[i][int(np.argmax([dice(c, s1) for c in mm[i]]))]
            rated |= mm[i][int(np.argmax(mm_iou[i].numpy()))]
        out["multimask, closest to stage 1"] = closest
        out["multimask, best by SAM's IoU head"] = rated
        points = []
        for b in bx:
            sub = np.zeros(hw, bool)
            sub[b[1]:b[3] + 1, b[0]:b[2] + 1] = s1[b[1]:b[3] + 1, b[0]:b[2] + 1]
            dt = ndimage.distance_transform_edt(sub)
            yy, xx = np.unravel_index(int(np.argmax(dt)), dt.shape)
            points.append([[xx, yy]])
        out["box + interior positive point"] = dec.mask(bx, points=points)
    else:
        for k in ("mean of SAM and stage 1", "geometric mean of SAM and stage 1",
                  "refined: boxes of SAM's mask, decoded again", "refined: SAM's logits as mask prompt + box",
                  "multimask, closest to stage 1", "multimask, best by SAM's IoU head", "box + interior positive point"):
            out[k] = empty
    rb = mask_box(ref)
    out["reference box (upper bound)"] = empty if rb is None else dec.mask([rb])
    return out


def run(t, cases: list[str]) -> dict[str, float]:
    import torch

    from samunet.preprocessing.preprocessor import load_preprocessed_case

    label = t.foreground_labels[0]
    scores: dict[str, list[float]] = {}
    for case in cases:
        data, seg, _ = load_preprocessed_case(t.data_folder, case)
        probs = t.stage1.predict_preprocessed(data, case=case)
        for z in range(data.shape[1]):
            ref = np.asarray(seg[0, z]) == label
            if not ref.any():
                continue
            emb, scaled_hw = t.slice_embedding(data, z, case)
            with torch.no_grad():
                masks = variants(t, probs[1, z], Decoder(t, emb, scaled_hw, data.shape[2:]), ref)
            for name, m in masks.items():
                scores.setdefault(name, []).append(dice(m, ref))
    return {k: float(np.mean(v)) for k, v in scores.items()}


def main(argv=None) -> None:
    from bench_generalisation import cpu_name, setup_roots

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/samunet_bench_generalisation"))
    p.add_argument("--dataset", type=int, default=601)
    p.add_argument("--fold", default="domain_KvasirSEG")
    p.add_argument("--max_cases", type=int, default=None, help="only the first N cases of each split (a smoke run)")
    args = p.parse_args(argv)
    setup_roots(args.work)
    t0 = time.perf_counter()
    t = load_chain(args.dataset, args.fold)
    n = args.max_cases
    rows = {"source validation": run(t, t.split["val"][:n]), "unseen test": run(t, t.split.get("test", [])[:n])}
    print(f"\n## Prompt variants, {args.fold}, LiteMedSAM's original decoder (mean Dice per slice with an object)\n")
    print(f"CPU: {cpu_name()}; {time.perf_counter() - t0:.0f} s\n")
    print("| prompt | source validation | unseen test |\n|---|---|---|")
    for name in rows["unseen test"]:
        print(f"| {name} | {rows['source validation'].get(name, float('nan')):.3f} | {rows['unseen test'][name]:.3f} |")
    (args.work / "bench_prompt_variants.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("SAMUNET_PROGRESS", "0")
    main()
