"""Appearance views for a grey modality: does stage 1 on the SAM embedding hold under scanner changes?

Trains an ``EmbeddingHead`` (the default head: width 64, context blocks) on the LiteMedSAM embeddings
of every slice of 5 RUNMC prostate volumes (``../shared/data/prostate_runmc6``, Case00-Case04), with
and without appearance views (``samunet/sam/appearance_views.py``, all six transforms) encoded beside
them, and tests on

- the held-out volume Case05 as acquired and under five scanner changes (dark gamma with Rician
  noise, partial contrast reversal, low resolution, a strong bias field, the demo's simulated scanner),
- the real slices of 5 other sites in ``../shared/data/multisite_slices/ProstateSlice``.

Prints head-alone Dice, the chain's (the head's θ1 0.75 component boxes, fallback 0.5, to
LiteMedSAM's original decoder) and the reference box's, per test set, mean over ``--seeds``. Also
``--conditions equalise,nyul``: per-slice intensity standardisation before the encoder instead of views.
No samunet pipeline: slices are resized to 256² directly, so the numbers isolate the head.

    python benchmarks/bench_appearance_views.py                     # none vs 2 views, 2 seeds (~12 min)
    python benchmarks/bench_appearance_views.py --conditions none,views2,views4,equalise,nyul
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("SAMUNET_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generalisation import cpu_name  # noqa: E402
from bench_prompt_variants import dice  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
S = 256
SITES = ("BIDMC", "BMC", "HK", "I2CVB", "UCL")
PERCENTILES = np.array([1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99], float)


def _resize(a: np.ndarray, nearest: bool = False) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(a.astype(np.float32), mode="F")
    return np.asarray(im.resize((S, S), Image.NEAREST if nearest else Image.BILINEAR), dtype=np.float32)


def load_slices(shared: Path):
    """``(train, held_out, real)``: lists of ``(image [0, 1], mask bool)`` at 256²."""
    import nibabel as nib
    from PIL import Image

    train, held = [], []
    vols = shared / "prostate_runmc6"
    for f in sorted((vols / "images").glob("*.nii.gz")):
        case = f.name[: -len(".nii.gz")]
        img = np.asarray(nib.load(f).dataobj, dtype=np.float32)
        seg = np.asarray(nib.load(vols / "masks" / f"{case}_Segmentation.nii.gz").dataobj) > 0
        img = np.clip(img / np.percentile(img, 99.5), 0, 1)
        for z in range(img.shape[2]):
            x = _resize(np.rot90(img[:, :, z], -1))
            m = _resize(np.rot90(seg[:, :, z], -1).astype(np.float32), nearest=True) > 0.5
            (held if case == "Case05" else train).append((x, m))
    real = []
    for site in SITES:
        for part in ("train", "test"):
            (image,) = sorted((shared / "multisite_slices/ProstateSlice" / site / part / "image").glob("*.png"))
            (mask,) = sorted((shared / "multisite_slices/ProstateSlice" / site / part / "mask").glob("*.png"))
            x = np.asarray(Image.open(image).convert("L"), dtype=np.float32) / 255.0
            m = np.asarray(Image.open(mask).convert("L")) == 0  # that collection marks the prostate 0
            real.append((_resize(x), _resize(m.astype(np.float32), nearest=True) > 0.5))
    return train, held, real


def scanner_changes(x: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    from scipy import ndimage

    yy, xx = np.meshgrid(np.linspace(-1, 1, S), np.linspace(-1, 1, S), indexing="ij")
    lowres = ndimage.zoom(ndimage.zoom(x, 0.25, order=1), 4.0, order=1)[:S, :S]
    out = {
        "as acquired": x,
        "dark gamma + Rician noise": np.sqrt((x ** 2.5 + rng.normal(0, 0.03, x.shape)) ** 2
                                             + rng.normal(0, 0.03, x.shape) ** 2),
        "partial contrast reversal": np.where(x > 0.5, 1.0 - x, x),
        "low resolution": ndimage.gaussian_filter(lowres, 1.0),
        "strong bias field": x * np.exp(0.5 * yy - 0.4 * xx + 0.3 * (yy ** 2 + xx ** 2)),
        "demo's scanner": ndimage.gaussian_filter(x ** 0.6 * np.exp(0.2 * yy - 0.2 * xx), 0.7)
        + rng.normal(0, 0.03, x.shape),
    }
    return {k: np.clip(v, 0, None).astype(np.float32) for k, v in out.items()}


def standardise(x: np.ndarray, how: str, standard: np.ndarray) -> np.ndarray:
    """``none``/``views*``: as is; ``equalise``: rank transform; ``nyul``: the slice's percentiles mapped
    piecewise-linearly to ``standard`` (the training slices' mean percentiles)."""
    from scipy.stats import rankdata

    if how == "none" or how.startswith("views"):
        return x
    if how == "equalise":
        return (rankdata(x.ravel()).reshape(x.shape) / x.size).astype(np.float32)
    if how == "nyul":
        marks = np.maximum.accumulate(np.percentile(x, PERCENTILES) + np.arange(len(PERCENTILES)) * 1e-6)
        return np.interp(x, marks, standard).astype(np.float32)
    raise ValueError(f"unknown condition {how!r}")


class Bench:
    def __init__(self):
        from samunet.sam.registry import build_sam

        self.sam = build_sam("lite_medsam")
        self.sam.configure_encoder("auto")
        self.sam.eval()

    def encode(self, images: list[np.ndarray]):
        import torch

        out = []
        for i in range(0, len(images), 4):
            batch, _ = self.sam.prepare_images(torch.as_tensor(np.stack(images[i:i + 4]))[:, None])
            out.append(self.sam.encode(batch).half())
        return torch.cat(out)

    def decode(self, emb, boxes) -> np.ndarray:
        import torch

        b = self.sam.scale_boxes(torch.as_tensor(np.stack(boxes), dtype=torch.float32), (S, S))
        sparse, dense = self.sam.encode_prompts(boxes=b)
        with torch.no_grad():
            logits, _ = self.sam.decode(emb[None].float(), sparse, dense, None)
        return (torch.sigmoid(self.sam.postprocess_logits(logits, (S, S), (S, S)))[:, 0].numpy() > 0.5).any(0)

    def train_head(self, embeddings: list, masks, seed: int, iterations: int):
        """Each sample reads the plain embedding or one of its views (``embeddings[0]``: plain), as
        ``EmbeddingHeadTrainer`` does; a third of the samples are foreground slices."""
        import torch

        from samunet.networks.embedding_head import EmbeddingHead
        from samunet.training.losses import DiceBCEWithLogits

        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        net = EmbeddingHead(1, 64, 0.1, context_dilations=(2, 4))
        opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
        loss = DiceBCEWithLogits()
        fg = np.flatnonzero(masks.flatten(1).any(1).numpy())
        n = len(embeddings[0])
        for it in range(iterations):
            for g in opt.param_groups:
                g["lr"] = 2e-3 * (1 - it / iterations) ** 0.9
            idx = [int(rng.choice(fg)) if rng.random() < 0.33 else int(rng.integers(n)) for _ in range(8)]
            src = rng.integers(len(embeddings), size=8)
            x = torch.stack([embeddings[s][i] for s, i in zip(src, idx)]).float()
            value = loss(net(x), masks[idx][:, None].float())
            opt.zero_grad()
            value.backward()
            opt.step()
        return net.eval()

    def evaluate(self, net, emb, items) -> dict[str, float]:
        import torch

        from samunet.sam.prompts import component_boxes, mask_box

        with torch.no_grad():
            probs = torch.sigmoid(net(emb.float()))[:, 0].numpy()
        r: dict[str, list] = {"head": [], "chain": [], "reference box": []}
        for k, (_, m) in enumerate(items):
            if not m.any():
                continue
            p = probs[k]
            r["head"].append(dice(p > 0.5, m))
            boxes = component_boxes(p, 0.75, 0.2, 4, 16) or component_boxes(p, 0.5, 0.2, 4, 16)
            r["chain"].append(dice(self.decode(emb[k], boxes), m) if boxes else 0.0)
            r["reference box"].append(dice(self.decode(emb[k], [mask_box(m)]), m))
        return {k: float(np.mean(v)) for k, v in r.items()}


def main(argv=None) -> None:
    import torch

    from samunet.sam.appearance_views import appearance_views

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=SHARED)
    p.add_argument("--conditions", default="none,views2")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--iterations", type=int, default=400)
    args = p.parse_args(argv)
    if not (args.data / "prostate_runmc6").is_dir():
        sys.exit(f"{args.data}/prostate_runmc6 not found: pass --data to the shared data folder")
    t0 = time.time()
    train, held, real = load_slices(args.data)
    rng = np.random.default_rng(0)
    tests: dict[str, list] = {}
    for x, m in held:
        for name, changed in scanner_changes(x, rng).items():
            tests.setdefault(f"held-out volume, {name}", []).append((changed, m))
    tests["real slices of 5 other sites"] = real
    standard = np.mean([np.percentile(x, PERCENTILES) for x, _ in train], 0)
    masks = torch.as_tensor(np.stack([m for _, m in train]))
    bench = Bench()
    results: dict[str, dict[str, list]] = {}
    for how in args.conditions.split(","):
        prep = [standardise(x, how, standard) for x, _ in train]
        k = int(how[len("views"):]) if how.startswith("views") else 0
        views = [appearance_views(x[None], k, 1000 + j) for j, x in enumerate(prep)]
        embeddings = [bench.encode(prep)] + [bench.encode([v[i, 0] for v in views]) for i in range(k)]
        encoded = {name: bench.encode([standardise(x, how, standard) for x, _ in items]) for name, items in tests.items()}
        print(f"{how}: encoded ({time.time() - t0:.0f} s)", flush=True)
        for seed in range(1, args.seeds + 1):
            net = bench.train_head(embeddings, masks, seed, args.iterations)
            for name, items in tests.items():
                for metric, v in bench.evaluate(net, encoded[name], items).items():
                    results.setdefault(how, {}).setdefault(name, {}).setdefault(metric, []).append(v)
            print(f"{how}: seed {seed} done ({time.time() - t0:.0f} s)", flush=True)
    conds = list(results)
    print(f"\nStage 1 on the LiteMedSAM embedding, prostate MRI: train {len(train)} slices of 5 RUNMC volumes, "
          f"{args.iterations} iterations, mean of {args.seeds} seed(s); {cpu_name()}; {time.time() - t0:.0f} s")
    print("| test slices | " + " | ".join(f"{c}: head / chain" for c in conds) + " | reference box |")
    print("|---" * (len(conds) + 2) + "|")
    for name in tests:
        cells = [" / ".join(f"{np.mean(results[c][name][m]):.3f}" for m in ("head", "chain")) for c in conds]
        ref = np.mean(results[conds[0]][name]["reference box"])
        print(f"| {name} | " + " | ".join(cells) + f" | {ref:.3f} |")


if __name__ == "__main__":
    main()
