"""Per-case preprocessing: transpose -> crop to non-zero -> normalise -> resample in-plane.

Output per case, in ``SAMUNET_preprocessed/DatasetXXX/<plans data identifier>/``:

- ``CASE.npz`` with ``data`` ``(C, Z, Y, X)`` float32 and ``seg`` ``(1, Z, Y, X)`` int16
  (``Z`` = slice axis after the plan's transpose; ``seg`` absent for test images);
- ``CASE.json``: what is needed to undo the steps and write a prediction in the input's
  exact geometry (reader, geometry, original shape, transpose, crop box, shapes), plus
  the slices holding each label (for foreground oversampling) and the plan hash.

The ``.json`` is written last, after the ``.npz`` has been renamed into place, so a
case counts as finished only when both are complete.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from samunet.imageio import reader_writer_for
from samunet.utilities.cropping import crop_to_bbox, nonzero_bbox, uncrop
from samunet.preprocessing.normalization import normalize
from samunet.preprocessing.resampling import (
    inplane_shape_after_resampling,
    resample_data_inplane,
    resample_probabilities_inplane,
    resample_seg_inplane,
)
from samunet.utilities.file_io import load_json, npz_is_complete, remove_stale_temp_files, save_json, save_npz

logger = logging.getLogger(__name__)


def preprocess_arrays(data: np.ndarray, seg: np.ndarray | None, properties: dict, plans: dict):
    """Apply the plan to arrays from a reader.

    ``data`` ``(C, Z, Y, X)``, ``seg`` ``(1, Z, Y, X)`` or None, both in the reader's
    array order. Returns ``(data, seg, properties)`` with properties extended by the
    bookkeeping needed by :func:`revert_seg`.
    """
    tf = plans["transpose_forward"]
    props = dict(properties)
    props["shape_before_transpose"] = list(data.shape[1:])
    props["transpose_forward"] = list(tf)
    data = data.transpose([0] + [a + 1 for a in tf])
    if seg is not None:
        seg = seg.transpose([0] + [a + 1 for a in tf])
    spacing = [props["spacing"][a] for a in tf]

    bbox = nonzero_bbox(data, seg)
    data = crop_to_bbox(data, bbox)
    if seg is not None:
        seg = crop_to_bbox(seg, bbox)
    props["shape_after_transpose"] = [int(b) for b in np.array(props["shape_before_transpose"])[tf]]
    props["bbox"] = bbox
    props["shape_after_crop"] = list(data.shape[1:])
    props["spacing_after_transpose"] = spacing

    data = normalize(data, plans["normalization"])

    target = plans["target_spacing"]
    new_yx = inplane_shape_after_resampling(data.shape[2:], spacing[1:], target[1:])
    data = resample_data_inplane(data, new_yx, order=plans.get("resampling_order_data", 3))
    if seg is not None:
        seg = resample_seg_inplane(seg, new_yx, label_map_values(plans))
    props["shape_after_resampling"] = list(data.shape[1:])
    props["spacing_after_resampling"] = [spacing[0]] + list(target[1:])
    return data.astype(np.float32, copy=False), seg, props


def label_map_values(plans: dict) -> list[int]:
    """Values a preprocessed label map holds: the plan's classes and its ignore label, if any."""
    ignore = plans.get("ignore_label")
    return list(plans["label_values"]) + ([int(ignore)] if ignore is not None else [])


def slices_with_labels(seg: np.ndarray, label_values: Sequence[int]) -> dict[str, list[int]]:
    """``{label: [slice indices containing it]}`` for every foreground label."""
    out = {}
    for v in label_values:
        if v == 0:
            continue
        present = np.any(seg[0] == v, axis=(1, 2))
        out[str(v)] = [int(i) for i in np.flatnonzero(present)]
    return out


def preprocess_case_files(image_files, seg_file, plans: dict, dataset_json: dict):
    rw = reader_writer_for(dataset_json["file_ending"], dataset_json.get("overwrite_image_reader_writer"))
    data, props = rw.read_images(image_files)
    seg = None
    if seg_file is not None:
        seg, _ = rw.read_seg(seg_file)
    return preprocess_arrays(data, seg, props, plans)


def case_is_done(output_folder: Path, case: str, plans_hash: str) -> bool:
    js, npz = output_folder / f"{case}.json", output_folder / f"{case}.npz"
    if not (js.is_file() and npz.is_file()):
        return False
    try:
        if load_json(js).get("plans_hash") != plans_hash:
            return False
    except (ValueError, OSError):
        return False
    # written atomically, but a copy or a full disk may still have cut it short: redo it then
    return npz_is_complete(npz, ("data",))


def run_case(case: str, image_files, seg_file, plans: dict, dataset_json: dict, output_folder: str, plans_hash: str) -> str:
    """Preprocess one case and write it (temp name, then rename). Returns the case id."""
    output_folder = Path(output_folder)
    data, seg, props = preprocess_case_files(image_files, seg_file, plans, dataset_json)
    arrays = {"data": data}
    if seg is not None:
        seg = seg.astype(np.int16)
        arrays["seg"] = seg
        props["slices_with_label"] = slices_with_labels(seg, plans["label_values"])
    props["case"] = case
    props["plans_hash"] = plans_hash
    props["domain"] = (dataset_json.get("domains") or {}).get(case)
    json_path = output_folder / f"{case}.json"
    if json_path.exists():
        os.remove(json_path)  # invalidate before replacing the arrays
    for name in (f"{case}.npz", f"{case}.json"):  # left by a killed run; only this process writes this case
        remove_stale_temp_files(output_folder / name)
    save_npz(output_folder / f"{case}.npz", **arrays)
    save_json(props, json_path)
    return case


def load_preprocessed_case(folder: str | Path, case: str) -> tuple[np.ndarray, np.ndarray | None, dict]:
    from samunet.utilities.file_io import load_npz

    folder = Path(folder)
    arrays = load_npz(folder / f"{case}.npz")
    return arrays["data"], arrays.get("seg"), load_json(folder / f"{case}.json")


def revert_probabilities(probs: np.ndarray, props: dict) -> np.ndarray:
    """Map ``(K, Z, Y, X)`` probabilities in the preprocessed frame back to the input's
    array order and shape (background = 1 outside the crop box)."""
    yx = props["shape_after_crop"][1:]
    probs = resample_probabilities_inplane(probs, tuple(yx))
    full = np.zeros((probs.shape[0],) + tuple(props["shape_after_transpose"]), dtype=np.float32)
    full[0] = 1.0
    full[(slice(None),) + tuple(slice(a, b) for a, b in props["bbox"])] = probs
    inv = np.argsort(props["transpose_forward"])
    return full.transpose([0] + [a + 1 for a in inv])


def revert_seg(seg: np.ndarray, props: dict, label_values: Sequence[int]) -> np.ndarray:
    """Map a ``(Z, Y, X)`` label map from the preprocessed frame back to the input's
    array order and shape. Exact when no resampling took place."""
    seg = seg[None] if seg.ndim == 3 else seg
    yx = tuple(props["shape_after_crop"][1:])
    seg = resample_seg_inplane(seg, yx, label_values)
    full = uncrop(seg[0], props["bbox"], tuple(props["shape_after_transpose"]), fill=0)
    inv = np.argsort(props["transpose_forward"])
    return full.transpose(inv)
