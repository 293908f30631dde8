"""Dataset fingerprint: what the planner needs to know about the raw data.

``dataset_fingerprint.json`` holds, per case, the shape, spacing, reader, domain and
the shape after cropping to non-zero; per channel, foreground intensity statistics
(mean, std, 0.5/99.5 percentiles, ...) from voxels sampled inside the labels; and the
voxel count of every label.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from pathlib import Path

import numpy as np

from samunet.dataset_conversion.dataset_json import all_label_values, training_cases
from samunet.imageio import reader_writer_for
from samunet.utilities.cropping import nonzero_bbox
from samunet.utilities.progress import progress

logger = logging.getLogger(__name__)

FOREGROUND_SAMPLES_PER_CASE = 10000
FINGERPRINT_SEED = 1234


def case_fingerprint(case: str, image_files, label_file, dataset_json: dict) -> dict:
    """Fingerprint of one case (top-level so that worker processes can run it)."""
    rw = reader_writer_for(dataset_json["file_ending"], dataset_json.get("overwrite_image_reader_writer"))
    data, props = rw.read_images(image_files)
    seg, _ = rw.read_seg(label_file)
    bbox = nonzero_bbox(data, seg)
    fg = seg[0] > 0
    # seeded per case so that the fingerprint does not depend on the worker count
    rng = np.random.default_rng([FINGERPRINT_SEED, sum(map(ord, case))])
    samples = []
    for c in range(data.shape[0]):
        vals = data[c][fg]
        if vals.size > FOREGROUND_SAMPLES_PER_CASE:
            vals = rng.choice(vals, FOREGROUND_SAMPLES_PER_CASE, replace=False)
        samples.append(vals.astype(np.float64))
    values, counts = np.unique(seg, return_counts=True)
    integral = bool(np.all(np.mod(data, 1) == 0))
    return {
        "case": case,
        "shape": list(data.shape[1:]),
        "spacing": [float(s) for s in props["spacing"]],
        "num_channels": int(data.shape[0]),
        "io": props["io"],
        "shape_after_crop": [b - a for a, b in bbox],
        "intensity_min": [float(data[c].min()) for c in range(data.shape[0])],
        "intensity_max": [float(data[c].max()) for c in range(data.shape[0])],
        "integer_intensities": integral,
        "label_voxels": {str(int(v)): int(n) for v, n in zip(values, counts)},
        "_foreground_samples": samples,
    }


def _worker(args):
    return case_fingerprint(*args)


def _channel_stats(samples: np.ndarray) -> dict:
    if samples.size == 0:
        return {k: None for k in ("mean", "std", "median", "min", "max", "percentile_00_5", "percentile_99_5")}
    return {
        "mean": float(samples.mean()),
        "std": float(samples.std()),
        "median": float(np.median(samples)),
        "min": float(samples.min()),
        "max": float(samples.max()),
        "percentile_00_5": float(np.percentile(samples, 0.5)),
        "percentile_99_5": float(np.percentile(samples, 99.5)),
    }


def compute_fingerprint(raw_folder: str | Path, dataset_json: dict, num_processes: int = 1) -> dict:
    cases = training_cases(raw_folder, dataset_json)
    jobs = [(c, v["images"], v["label"], dataset_json) for c, v in sorted(cases.items())]
    results = []
    desc = "fingerprint"
    if num_processes > 1 and len(jobs) > 1:
        with mp.get_context("fork").Pool(min(num_processes, len(jobs))) as pool:
            for r in progress(pool.imap(_worker, jobs), total=len(jobs), desc=desc, unit="case"):
                results.append(r)
    else:
        for j in progress(jobs, desc=desc, unit="case"):
            results.append(_worker(j))
    n_ch = results[0]["num_channels"]
    channel_stats = {}
    for c in range(n_ch):
        samples = np.concatenate([r["_foreground_samples"][c] for r in results])
        channel_stats[str(c)] = _channel_stats(samples)
    label_totals = {str(v): 0 for v in all_label_values(dataset_json)}
    for r in results:
        for v, n in r["label_voxels"].items():
            label_totals[v] = label_totals.get(v, 0) + n
        del r["_foreground_samples"]
    domains = dataset_json.get("domains") or {}
    for r in results:
        r["domain"] = domains.get(r["case"])
    return {
        "dataset_name": Path(raw_folder).name,
        "num_cases": len(results),
        "cases": {r.pop("case"): r for r in results},
        "foreground_intensity_properties_per_channel": channel_stats,
        "label_voxel_counts": label_totals,
        "domains": sorted(set(d for d in domains.values())),
    }
