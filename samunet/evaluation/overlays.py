"""``samunet_plot_overlays``: one PNG per case, image + reference contour + prediction contour.

For each chosen case (``--cases`` or the ``--worst N`` by foreground Dice) the slice through
the largest reference object is shown: the largest 3D connected component of the reference
foreground (all labels together), and of its slices the one where that component has the
largest area. Without reference foreground the largest predicted object is used, and the
middle slice when both are empty.

Inputs: the image from ``SAMUNET_raw/DatasetXXX/imagesTr/CASE_0000<ending>`` (first channel;
RGB for 3-channel 2D images), the reference from ``labelsTr/CASE<ending>`` and the prediction
from ``SAMUNET_results/DatasetXXX/<Trainer>__<plans>/fold_<f>/<split>/CASE<ending>``. Case Dice
and domain come from that folder's ``summary.json`` when present (computed otherwise).

Colours: reference contours solid green/cyan/yellow…, prediction contours dashed
red/magenta/orange…, one colour per label, with a legend. The title gives case, domain,
Dice and slice.

Prompts are drawn only if a ``prompts.json`` lies beside the predictions, in the form
``{"CASE": [{"z": 3, "label": 1, "box": [x0, y0, x1, y1]},
{"z": 3, "label": 1, "points": [[x, y], ...], "point_labels": [1, 0, ...]}]}`` (pixel
coordinates of the written prediction, x = column, y = row, z = slice index in array order).
Without that file prompts are skipped.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from samunet.paths import raw_root, results_root
from samunet.utilities.file_io import atomic_path, load_json

logger = logging.getLogger(__name__)

DEFAULT_PLANS_NAME = "samunetPlans"
FIGSIZE = (6.0, 6.4)  # inches at DPI below: every PNG is 600 x 640 pixels
DPI = 100
REF_COLORS = ["#00ff00", "#00ffff", "#ffff00", "#7fff7f", "#00bfff", "#bfff00"]
PRED_COLORS = ["#ff2020", "#ff00ff", "#ff8c00", "#ff6f9f", "#b040ff", "#ffb0b0"]


class OverlayError(ValueError):
    pass


# --------------------------------------------------------------------------- inputs


def _dataset_json(dataset_name: str, model: Path) -> dict:
    from samunet.paths import preprocessed_root

    for f in (raw_root() / dataset_name / "dataset.json", preprocessed_root() / dataset_name / "dataset.json",
              model / "dataset.json"):
        if f.is_file():
            return load_json(f)
    raise OverlayError(f"no dataset.json for {dataset_name} in SAMUNET_raw, SAMUNET_preprocessed or {model}")


def default_split(fold_folder: Path, fold: str) -> str:
    """``test`` for a domain fold that has test predictions, else ``validation``."""
    return "test" if fold.startswith("domain_") and (fold_folder / "test").is_dir() else "validation"


def case_dice_from_summary(summary: dict) -> dict[str, float]:
    out = {}
    for r in summary.get("metric_per_case", []):
        vals = [m["Dice"] for m in r["metrics"].values() if m["Dice"] is not None and not math.isnan(m["Dice"])]
        out[r["case"]] = float(np.mean(vals)) if vals else math.nan
    return out


def dice_per_label(ref: np.ndarray, pred: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    out = {}
    for v in labels:
        a, b = ref == v, pred == v
        s = int(a.sum()) + int(b.sum())
        out[v] = 2.0 * int((a & b).sum()) / s if s else math.nan
    return out


def largest_object_slice(ref: np.ndarray, pred: np.ndarray | None = None) -> int:
    """Index (axis 0 of a ``(Z, Y, X)`` array) of the slice with the largest area of the largest
    3D connected component of the reference foreground (prediction if the reference is empty)."""
    from scipy import ndimage

    for mask in (ref > 0, None if pred is None else pred > 0):
        if mask is None or not mask.any():
            continue
        lab, n = ndimage.label(mask)
        sizes = np.bincount(lab.ravel())[1:]
        biggest = int(np.argmax(sizes)) + 1
        areas = (lab == biggest).sum(axis=(1, 2))
        return int(np.argmax(areas))
    return ref.shape[0] // 2


def _window(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1
    return np.clip((img - lo) / (hi - lo), 0, 1)


# --------------------------------------------------------------------------- drawing


def plot_case(image: np.ndarray, ref: np.ndarray, pred: np.ndarray | None, z: int, output_file: Path,
              title: str, label_names: dict[int, str], spacing_yx=(1.0, 1.0), prompts: list | None = None) -> Path:
    """Write one overlay PNG. ``image`` ``(C, Z, Y, X)``; ``ref``/``pred`` ``(Z, Y, X)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    fig = plt.figure(figsize=FIGSIZE, dpi=DPI)
    ax = fig.add_axes([0.02, 0.1, 0.96, 0.8])
    if image.shape[0] == 3 and image.shape[1] == 1:  # an RGB 2D image
        rgb = np.moveaxis(image[:, z], 0, -1)
        ax.imshow(_window(rgb), interpolation="nearest", aspect=spacing_yx[0] / spacing_yx[1])
    else:
        ax.imshow(_window(image[0, z]), cmap="gray", interpolation="nearest", aspect=spacing_yx[0] / spacing_yx[1])
    h, w = ref.shape[1:]
    yy, xx = np.arange(-1, h + 1), np.arange(-1, w + 1)

    def contour(mask, **kw):  # padded with background so a mask touching the border is closed
        ax.contour(xx, yy, np.pad(mask.astype(np.uint8), 1), levels=[0.5], linewidths=1.8, **kw)

    handles = []
    for i, (v, name) in enumerate(sorted(label_names.items())):
        rc, pc = REF_COLORS[i % len(REF_COLORS)], PRED_COLORS[i % len(PRED_COLORS)]
        if (ref[z] == v).any():
            contour(ref[z] == v, colors=[rc])
        handles.append(Line2D([], [], color=rc, lw=2, label=f"reference: {name}"))
        if pred is not None:
            if (pred[z] == v).any():
                contour(pred[z] == v, colors=[pc], linestyles="dashed")
            handles.append(Line2D([], [], color=pc, lw=2, ls="--", label=f"prediction: {name}"))
    for p in prompts or []:
        if int(p.get("z", -1)) != z:
            continue
        if "box" in p:
            x0, y0, x1, y1 = [float(c) for c in p["box"]]
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="#ffd700", lw=1.2, ls=":"))
        if "points" in p:
            pts = np.asarray(p["points"], dtype=float).reshape(-1, 2)
            pl = np.asarray(p.get("point_labels", [1] * len(pts)))
            ax.scatter(pts[pl == 1, 0], pts[pl == 1, 1], marker="*", c="#ffd700", s=60)
            ax.scatter(pts[pl != 1, 0], pts[pl != 1, 1], marker="x", c="#1e90ff", s=40)
    if prompts and any(int(p.get("z", -1)) == z for p in prompts):
        handles.append(Line2D([], [], color="#ffd700", lw=1.2, ls=":", label="prompt"))
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 3), fontsize=8, frameon=False)
    with atomic_path(output_file, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    return output_file


# --------------------------------------------------------------------------- folder


def plot_overlays(dataset: str | int, trainer: str, fold: str, output_folder: str | Path,
                  cases: Sequence[str] | None = None, worst: int | None = None, split: str | None = None,
                  plans_name: str = DEFAULT_PLANS_NAME) -> list[Path]:
    """Write ``<output_folder>/<case>.png`` for ``cases``, or the ``worst`` N cases by Dice
    (default: the 5 worst). Returns the files written."""
    from samunet.utilities.dataset_name import resolve_dataset
    from samunet.imageio import reader_writer_for

    name = resolve_dataset(dataset)
    fold = str(fold)
    model = results_root() / name / f"{trainer}__{plans_name}"
    fold_folder = model / f"fold_{fold}"
    if not fold_folder.is_dir():
        have = sorted(p.name for p in model.glob("fold_*")) if model.is_dir() else []
        raise OverlayError(f"{fold_folder} does not exist (folds of {trainer}: {have or 'none'})")
    split = split or default_split(fold_folder, fold)
    pred_folder = fold_folder / split
    if not pred_folder.is_dir():
        have = sorted(p.name for p in fold_folder.iterdir() if p.is_dir())
        raise OverlayError(f"{pred_folder} does not exist; prediction folders of this fold: {have}")
    dj = _dataset_json(name, model)
    fe = dj["file_ending"]
    io = reader_writer_for(fe, dj.get("overwrite_image_reader_writer"))
    raw = raw_root() / name
    labels = {int(v): k for k, v in dj["labels"].items() if int(v) != 0} if isinstance(dj["labels"], dict) else {}
    summary = load_json(pred_folder / "summary.json") if (pred_folder / "summary.json").is_file() else None
    dice = case_dice_from_summary(summary) if summary else {}
    domains = dict(dj.get("domains") or {})
    if summary:
        domains.update({r["case"]: r["domain"] for r in summary.get("metric_per_case", []) if r.get("domain")})
    missing = set(summary.get("missing_predictions", [])) if summary else set()

    if cases:
        chosen = list(cases)
    else:
        n = 5 if worst is None else int(worst)
        if summary is None:  # rank by Dice computed here
            for p in sorted(pred_folder.glob(f"*{fe}")):
                c = p.name[: -len(fe)]
                ref_file = raw / "labelsTr" / f"{c}{fe}"
                if ref_file.is_file():
                    r, _ = io.read_seg(ref_file)
                    q, _ = io.read_seg(p)
                    vals = [v for v in dice_per_label(r[0], q[0], labels).values() if not math.isnan(v)]
                    dice[c] = float(np.mean(vals)) if vals else math.nan
        ranked = sorted(missing) + sorted(dice, key=lambda c: (math.isnan(dice[c]), dice[c], c))
        chosen = ranked[:n]
    prompts_all = load_json(pred_folder / "prompts.json") if (pred_folder / "prompts.json").is_file() else {}

    out = Path(output_folder)
    written = []
    for c in chosen:
        ref_file = raw / "labelsTr" / f"{c}{fe}"
        pred_file = pred_folder / f"{c}{fe}"
        img_files = sorted((raw / "imagesTr").glob(f"{c}_[0-9][0-9][0-9][0-9]{fe}"))
        if not img_files:
            raise OverlayError(f"no image {raw / 'imagesTr' / (c + '_0000' + fe)} for case {c!r}")
        if not ref_file.is_file():
            raise OverlayError(f"no reference label {ref_file} for case {c!r}")
        image, props = io.read_images(img_files)
        ref, _ = io.read_seg(ref_file)
        ref = ref[0]
        pred = io.read_seg(pred_file)[0][0] if pred_file.is_file() else None
        if pred is not None and pred.shape != ref.shape:
            raise OverlayError(f"{pred_file} has shape {pred.shape}, reference {ref.shape}")
        z = largest_object_slice(ref, pred)
        if pred is None:
            dtxt = "prediction missing"
        else:
            d = dice.get(c)
            if d is None:
                vals = [v for v in dice_per_label(ref, pred, labels).values() if not math.isnan(v)]
                d = float(np.mean(vals)) if vals else math.nan
            dtxt = "Dice n/a (empty)" if math.isnan(d) else f"Dice {d:.3f}"
            if len(labels) > 1:
                per = dice_per_label(ref, pred, labels)
                dtxt += " (" + ", ".join(f"{labels[v]} {'n/a' if math.isnan(x) else f'{x:.2f}'}"
                                         for v, x in per.items()) + ")"
        sp = [float(s) for s in props.get("spacing", [1.0, 1.0, 1.0])]
        title = (f"{c}  |  domain {domains.get(c, '–')}  |  {dtxt}\n"
                 f"{trainer} fold {fold} {split}  |  slice {z + 1}/{ref.shape[0]}")
        written.append(plot_case(image, ref, pred, z, out / f"{c}.png", title, labels,
                                 (sp[-2], sp[-1]) if len(sp) >= 2 else (1.0, 1.0), prompts_all.get(c)))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="samunet_plot_overlays",
        description="PNG overlays (image, reference and prediction contours) of chosen or worst cases of a fold.")
    p.add_argument("-d", "--dataset", required=True, help="dataset ID or name")
    p.add_argument("-tr", "--trainer", default="SAMBoxTrainer", help="trainer name (default %(default)s)")
    p.add_argument("-f", "--fold", required=True, help="fold, e.g. 0 or domain_RUNMC")
    p.add_argument("-o", "--output", required=True, help="output folder for <case>.png")
    p.add_argument("-p", "--plans", default=DEFAULT_PLANS_NAME, help="plans name (default %(default)s)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--cases", nargs="+", help="case identifiers to plot")
    g.add_argument("--worst", type=int, default=None, help="plot the N cases with the lowest Dice (default 5)")
    p.add_argument("--split", default=None,
                   help="prediction folder of the fold: validation, test, or validation_<mode>/test_<mode> "
                        "(default: test for domain folds, validation otherwise)")
    args = p.parse_args(argv)
    try:
        files = plot_overlays(args.dataset, args.trainer, args.fold, args.output, args.cases, args.worst, args.split,
                              args.plans)
    except (OverlayError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for f in files:
        print(f)
    print(f"{len(files)} overlays written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
