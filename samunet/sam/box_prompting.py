"""Box prompts per slice and class, from stage-1 probabilities, references or the user.

Modes (``--prompt``):

- ``auto``: SAMMed's mask filtering: threshold stage-1 probabilities at θ1, then one box per
  sizeable connected component (``prompting.boxes_per_label``, ``component_min_fraction`` of
  the largest; :func:`slice_box_sets`; where nothing exceeds θ1, the components above
  ``theta1_fallback``; :func:`case_box_sets`: a label in every training case that a case has on
  no slice gets the boxes of stage 1's most probable region), or — plans without those keys, and
  :func:`slice_boxes` — the largest component of the downsampled mask only (SAMMed's rule);
- ``unfiltered_box``: the box of every stage-1 pixel above 0.9 (SAMMed's "SAM + ResNet" row);
- ``full_box``: the whole slice on every slice (SAMMed's "SAM + Full" row);
- ``gt_box``: the reference mask's tight box (the upper bound; needs reference labels).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from samunet.sam.prompts import (component_boxes, full_box, jitter_box, largest_component_box, mask_box,
                                 most_probable_region, unfiltered_box)

PROMPT_MODES = ("auto", "gt_box", "full_box", "unfiltered_box")


def slice_boxes(mode: str, fg_probs: np.ndarray | None, ref_slice: np.ndarray | None, labels: list[int],
                prompting: dict, rng: np.random.Generator | None = None,
                slice_shape: tuple[int, int] | None = None) -> dict[int, np.ndarray]:
    """Boxes ``{label: [x0, y0, x1, y1]}`` for one slice (labels without a prompt are absent).

    ``fg_probs`` ``(K_fg, Y, X)``: stage-1 probability of each foreground label;
    ``ref_slice`` ``(Y, X)``: reference labels (``gt_box`` only); ``slice_shape`` ``(Y, X)``:
    the slice's size when neither is given (``full_box`` needs nothing else).
    """
    out = {}
    if slice_shape is None and fg_probs is not None:
        slice_shape = fg_probs.shape[1:]
    elif slice_shape is None and ref_slice is not None:
        slice_shape = ref_slice.shape
    for i, label in enumerate(labels):
        if mode == "auto":
            box = largest_component_box(fg_probs[i], prompting["theta1"], prompting["mask_downsample_factor"])
        elif mode == "unfiltered_box":
            box = unfiltered_box(fg_probs[i], prompting.get("unfiltered_theta", 0.9))
        elif mode == "full_box":
            if slice_shape is None:
                raise ValueError("full_box needs the slice shape (slice_shape=...)")
            box = full_box(slice_shape)
        elif mode == "gt_box":
            if ref_slice is None:
                raise ValueError("--prompt gt_box needs reference labels (--labels DIR)")
            box = mask_box(ref_slice == label)
        else:
            raise ValueError(f"unknown prompt mode {mode!r}; choose one of {PROMPT_MODES}")
        if box is None:
            continue
        if rng is not None and mode in ("auto", "unfiltered_box", "gt_box"):
            lo, hi = prompting["box_jitter_px"]
            box = jitter_box(box, rng, int(hi), slice_shape, min_shift=int(lo))
        out[label] = np.asarray(box)
    return out


def multi_box_settings(prompting: dict) -> tuple[int, float, int] | None:
    """``(boxes_per_label, component_min_fraction, component_min_pixels)`` from the plan, or
    None for plans without them (one largest-component box, SAMMed's rule)."""
    if "boxes_per_label" not in prompting and "component_min_fraction" not in prompting:
        return None
    return (int(prompting.get("boxes_per_label", 4)), float(prompting.get("component_min_fraction", 0.2)),
            int(prompting.get("component_min_pixels", 16)))


def slice_box_sets(mode: str, fg_probs: np.ndarray | None, ref_slice: np.ndarray | None, labels: list[int],
                   prompting: dict, rng: np.random.Generator | None = None,
                   slice_shape: tuple[int, int] | None = None) -> dict[int, np.ndarray]:
    """Like :func:`slice_boxes`, but ``{label: (n, 4) boxes}``: in ``auto`` mode one box per
    sizeable connected component (:func:`samunet.sam.prompts.component_boxes`) when the plan
    sets ``prompting.boxes_per_label``; every other mode gives one box per label. A label with no
    component above θ1 gets the components above ``prompting.theta1_fallback`` (plans that set it;
    default 0.5, stage 1's own mask threshold) instead of no box."""
    settings = multi_box_settings(prompting)
    if mode != "auto" or settings is None:
        return {l: b[None] for l, b in slice_boxes(mode, fg_probs, ref_slice, labels, prompting, rng,
                                                   slice_shape).items()}
    max_boxes, min_fraction, min_pixels = settings
    shape = fg_probs.shape[1:]
    fallback = prompting.get("theta1_fallback")
    fallback = float(fallback) if fallback is not None and float(fallback) < float(prompting["theta1"]) else None
    out = {}
    for i, label in enumerate(labels):
        boxes = component_boxes(fg_probs[i], prompting["theta1"], min_fraction, max_boxes, min_pixels)
        if not boxes and fallback is not None:
            # an unsure stage 1 (an unseen site) may nowhere reach theta1 although its own mask is there
            boxes = component_boxes(fg_probs[i], fallback, min_fraction, max_boxes, min_pixels)
        boxes = _jittered(boxes, rng, prompting, shape)
        if boxes:
            out[label] = np.stack(boxes)
    return out


def candidate_box_sets(default: dict[int, np.ndarray], fg_probs: np.ndarray, labels: list[int],
                       prompting: dict, rng: np.random.Generator | None = None) -> list[tuple[int, np.ndarray]]:
    """``[(label, (n, 4) boxes)]``: each label's ``default`` boxes (first) and, with the plan's
    ``prompting.candidate_thresholds`` (off when absent or empty), its component boxes at each of
    those θ1 — distinct sets only — for :func:`pick_by_predicted_iou`. Labels without default boxes
    get no candidates (the presence prior and the fallback keep their say). With ``rng`` (test-time
    box jitter: ``default`` is jittered already) the added sets are jittered the same way, and a set
    equal to the un-jittered θ1 boxes counts as the default."""
    thetas = [float(t) for t in prompting.get("candidate_thresholds") or []]
    max_boxes, min_fraction, min_pixels = multi_box_settings(prompting) or (1, 1.0, 1)
    out = []
    for label, boxes in default.items():
        probs = fg_probs[labels.index(label)]
        sets = [np.asarray(boxes)]
        seen = list(sets)
        if rng is not None and thetas:
            at_theta1 = component_boxes(probs, float(prompting["theta1"]), min_fraction, max_boxes,
                                        min_pixels)
            seen = [np.stack(at_theta1)] if at_theta1 else []
        for theta in thetas:
            found = component_boxes(probs, theta, min_fraction, max_boxes, min_pixels)
            if found and not any(np.array_equal(np.stack(found), b) for b in seen):
                seen.append(np.stack(found))
                sets.append(np.stack(_jittered(found, rng, prompting, probs.shape)))
        out.extend((label, b) for b in sets)
    return out


def scaled_boxes(boxes: np.ndarray, factor: float, shape_hw) -> np.ndarray:
    """``(n, 4)`` inclusive boxes ``[x0, y0, x1, y1]`` scaled by ``factor`` about their centres (each
    side moves by ``(factor - 1) / 2`` of the box's width or height), clipped to a slice of
    ``shape_hw`` ``(Y, X)``; floats. ``factor`` 1: the boxes unchanged."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if factor == 1:
        return b
    if factor <= 0:
        raise ValueError(f"prompting.box_scale must be positive, got {factor}")
    grow = (float(factor) - 1.0) / 2.0 * (b[:, 2:] - b[:, :2] + 1.0)  # (n, 2): x, y
    out = np.concatenate([b[:, :2] - grow, b[:, 2:] + grow], axis=1)
    out[:, 0::2] = np.clip(out[:, 0::2], 0, shape_hw[1] - 1)
    out[:, 1::2] = np.clip(out[:, 1::2], 0, shape_hw[0] - 1)
    return out


def pick_by_predicted_iou(candidates: list[tuple[int, np.ndarray]], iou: np.ndarray) -> list[bool]:
    """Which boxes of ``candidates`` (flattened in order, ``iou`` one SAM IoU prediction per box) to
    keep: per label, the candidate set with the highest mean predicted IoU (the first on ties)."""
    best: dict[int, tuple[float, int]] = {}
    start = 0
    for i, (label, boxes) in enumerate(candidates):
        score = float(np.mean(iou[start:start + len(boxes)]))
        if label not in best or score > best[label][0]:
            best[label] = (score, i)
        start += len(boxes)
    chosen = {i for _, i in best.values()}
    return [i in chosen for i, (_, boxes) in enumerate(candidates) for _ in boxes]


def _jittered(boxes: list, rng: np.random.Generator | None, prompting: dict, shape_hw) -> list:
    """``boxes`` each grown by a random ``prompting.box_jitter_px`` per side (none without ``rng``)."""
    if rng is None:
        return boxes
    lo, hi = prompting["box_jitter_px"]
    return [jitter_box(b, rng, int(hi), shape_hw, min_shift=int(lo)) for b in boxes]


def case_box_sets(fg_probs: np.ndarray, labels: list[int], prompting: dict, rng: np.random.Generator | None = None,
                  present: frozenset | set | None = None) -> list[dict[int, np.ndarray]]:
    """The automatic boxes of every slice of a case (``fg_probs`` ``(K_fg, Z, Y, X)``): one
    :func:`slice_box_sets` per slice. The presence prior: a label in ``present`` (one in every
    training case, so in this case too) that got a box on no slice gets, on each slice it spans,
    the box of stage 1's most probable region (:func:`samunet.sam.prompts.most_probable_region`
    at ``prompting.presence_relative`` of the case's peak; connected across slices in a volume).
    Where stage 1 found the label on any slice nothing changes."""
    sets = [slice_box_sets("auto", fg_probs[:, z], None, labels, prompting, rng) for z in range(fg_probs.shape[1])]
    if not present or multi_box_settings(prompting) is None:
        return sets
    for i, label in enumerate(labels):
        if label not in present or any(label in s for s in sets):
            continue
        region = most_probable_region(fg_probs[i], float(prompting.get("presence_relative", 0.5)))
        for z in ([] if region is None else np.flatnonzero(region.any(axis=(1, 2)))):
            sets[z][label] = np.stack(_jittered([mask_box(region[z])], rng, prompting, region.shape[1:]))
    return sets


def labels_in_every_case(label_maps, labels) -> frozenset:
    """The ``labels`` present in every one of ``label_maps`` (``(Z, Y, X)`` each, one per training
    case: an image or a volume), for the presence prior of :func:`case_box_sets`."""
    present, seen = {int(l) for l in labels}, False
    for seg in map(np.asarray, label_maps):
        present, seen = {l for l in present if (seg == l).any()}, True
    return frozenset(present) if seen else frozenset()


def nested_label_depths(label_maps, labels, min_fraction: float = 0.5, slices_per_case: int = 64) -> dict[int, int]:
    """How deep each of ``labels`` lies inside the others in ``label_maps`` (``(Z, Y, X)`` each,
    the training cases): ``{label: depth}`` for the labels with depth >= 1.

    SAM decodes each label from its own box, and a box around an outer label (a disc rim around
    the optic cup, a liver around its tumour, the peripheral zone around the central gland) yields
    the filled outer object, covering the inner label. Label ``b`` counts as nested in ``a`` when,
    on the slices holding both, at least ``min_fraction`` of ``b``'s pixels lie inside ``a``'s
    bounding box, and a larger fraction than of ``a``'s pixels inside ``b``'s box. Its depth is
    the number of labels it is nested in; where several labels' masks overlap, the deepest wins
    (:func:`samunet.training.class_probabilities.prefer_inner_labels_`). At most
    ``slices_per_case`` evenly spaced slices of a volume are read."""
    from scipy import ndimage

    labels = [int(l) for l in labels]
    if len(labels) < 2:
        return {}
    n = max(labels) + 1
    inside = np.zeros((n, n))  # [a, b]: pixels of b inside a's box, on slices holding both
    total = np.zeros((n, n))  # [a, b]: all pixels of b, on those slices
    for seg in map(np.asarray, label_maps):
        seg = seg[None] if seg.ndim == 2 else seg
        for sl in seg[::max(1, -(-seg.shape[0] // slices_per_case))]:
            sl = np.where((sl > 0) & (sl < n), sl, 0).astype(np.int32)
            boxes = ndimage.find_objects(sl, max_label=n - 1)
            present = [l for l in labels if boxes[l - 1] is not None]
            if len(present) < 2:
                continue
            idx = np.array(present)
            total[np.ix_(idx, idx)] += np.bincount(sl.ravel(), minlength=n)[idx]  # (the diagonal is unused)
            for a in present:
                inside[a, idx] += np.bincount(sl[boxes[a - 1]].ravel(), minlength=n)[idx]
    frac = np.divide(inside, total, out=np.zeros_like(inside), where=total > 0)
    depths = {b: sum(1 for a in labels if a != b and frac[a, b] >= min_fraction and frac[a, b] > frac[b, a])
              for b in labels}
    return {b: d for b, d in depths.items() if d > 0}


def component_target(label_mask: np.ndarray, box) -> np.ndarray:
    """The reference target of one box: the connected components of ``label_mask`` (8-connected)
    that overlap the box, whole (they may extend beyond it). Empty for a box on background,
    so the decoder learns to reject a false-positive box."""
    from scipy import ndimage

    m = np.asarray(label_mask, dtype=bool)
    if not m.any():
        return np.zeros_like(m)
    x0, y0, x1, y1 = (int(v) for v in box)
    comps, _ = ndimage.label(m, structure=np.ones((3, 3), dtype=bool))
    ids = np.unique(comps[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1])
    ids = ids[ids > 0]
    return np.isin(comps, ids) if ids.size else np.zeros_like(m)


def mask_to_low_res(masks: torch.Tensor, scaled_hw, input_size: int, low_res: int = 256) -> torch.Tensor:
    """``(B, Y, X)`` binary masks in the slice frame -> ``(B, 1, low_res, low_res)`` float
    targets in the frame of the decoder's low-resolution output (resize, pad, downsample)."""
    m = F.interpolate(masks[:, None].float(), size=tuple(scaled_hw), mode="nearest")
    m = F.pad(m, (0, input_size - m.shape[-1], 0, input_size - m.shape[-2]))
    if input_size != low_res:
        m = (F.interpolate(m, size=(low_res, low_res), mode="area") > 0.5).float()
    return m


def user_boxes_to_preprocessed(case_boxes: dict, props: dict) -> dict[int, dict[int, np.ndarray]]:
    """Map a user's boxes for one case into the preprocessed slice frame.

    ``case_boxes``: ``{slice_index: {label: [x0, y0, x1, y1]}}`` (JSON keys may be strings)
    in the input image's pixel grid *after the plan's transpose*: slices along the plan's
    slice axis, x = last array axis, y = the one before (for the usual transpose
    ``[0, 1, 2]`` and for 2D images these are simply the image's slice index, column and
    row; a 2D image has slice 0). Inclusive pixel coordinates, MedSAM convention.

    Crop and in-plane resampling of preprocessing are applied; slices outside the crop are
    dropped.
    """
    (z0, z1), (y0, _), (x0, _) = props["bbox"]
    cy, cx = props["shape_after_crop"][1:]
    ry, rx = props["shape_after_resampling"][1:]
    sy, sx = ry / cy, rx / cx
    out: dict[int, dict[int, np.ndarray]] = {}
    for z, per_label in case_boxes.items():
        zi = int(z) - z0
        if not 0 <= zi < z1 - z0:
            continue
        for label, box in per_label.items():
            bx0, by0, bx1, by1 = (float(v) for v in box)
            # pixel centres map as (i + 0.5) * s - 0.5; inclusive maxima stay inclusive
            mapped = [(bx0 - x0 + 0.5) * sx - 0.5, (by0 - y0 + 0.5) * sy - 0.5,
                      (bx1 - x0 + 0.5) * sx - 0.5, (by1 - y0 + 0.5) * sy - 0.5]
            mapped = np.clip(np.round(mapped), 0, [rx - 1, ry - 1, rx - 1, ry - 1]).astype(np.int64)
            out.setdefault(zi, {})[int(label)] = mapped
    return out
