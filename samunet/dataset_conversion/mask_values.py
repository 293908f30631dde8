"""Mask grey values -> labels for 2D folders: ``--label_map`` parsing, exact mapping with a
tolerance for JPEG noise, and the suggestion made when a mask holds values nobody listed."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from samunet.dataset_conversion.common import ConversionError

LABEL_MAP_TOLERANCE = 32  # grey levels; covers JPEG noise around the listed values


def parse_label_map(text: str | dict | None) -> dict[int, int] | None:
    """``"255:0,128:1,0:2"`` -> ``{255: 0, 128: 1, 0: 2}``."""
    if text is None or isinstance(text, dict):
        return None if text is None else {int(k): int(v) for k, v in text.items()}
    out: dict[int, int] = {}
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        m = re.fullmatch(r"(\d+)\s*:\s*(\d+)", item)
        if not m:
            raise ConversionError(f"--label_map item {item!r} is not 'source:label', e.g. 255:0,128:1,0:2.")
        src, dst = int(m.group(1)), int(m.group(2))
        if src in out:
            raise ConversionError(f"--label_map lists source value {src} twice.")
        out[src] = dst
    if not out:
        raise ConversionError("--label_map is empty; give e.g. 255:0,128:1,0:2.")
    return out


def _grey_mask(arr: np.ndarray, file: Path) -> np.ndarray:
    if arr.ndim == 3:
        if not np.all(arr == arr[..., :1]):
            raise ConversionError(
                f"{file}: colour mask whose channels differ. Masks must be grey (one value per pixel); "
                "save it as a grey image or convert the colours to values first."
            )
        arr = arr[..., 0]
    return arr


def map_labels(arr: np.ndarray, label_map: dict[int, int], file: Path) -> np.ndarray:
    """Map mask values exactly; values not listed go to the nearest listed source value within the tolerance."""
    values = np.unique(arr)
    sources = np.array(sorted(label_map), dtype=np.int64)
    dst, bad = [], []
    for v in values.tolist():
        if v in label_map:
            dst.append(label_map[v])
            continue
        d = np.abs(sources - int(v))
        j = int(np.argmin(d))
        if d[j] <= LABEL_MAP_TOLERANCE:
            dst.append(label_map[int(sources[j])])
        else:
            bad.append(v)
    if bad:
        raise ConversionError(
            f"{file}: mask values {bad} are not in --label_map {sorted(label_map)} and not within "
            f"{LABEL_MAP_TOLERANCE} grey levels of a listed value. Add them to --label_map."
        )
    return np.asarray(dst, dtype=np.int32)[np.searchsorted(values, arr)]


def _n_clusters(hist: np.ndarray, min_share: float = 0.005, gap: int = LABEL_MAP_TOLERANCE) -> list[int]:
    """Mask grey values holding at least ``min_share`` of the pixels, merged when closer than ``gap``."""
    total = hist.sum()
    if total == 0:
        return []
    big = np.flatnonzero(hist >= min_share * total)
    reps: list[int] = []
    for v in big.tolist():
        if not reps or v - reps[-1] > gap:
            reps.append(v)
        elif hist[v] > hist[reps[-1]]:
            reps[-1] = v
    return reps


def _suggest_label_map(clusters: list[int], hist: np.ndarray) -> str:
    """The most frequent grey level becomes background (0), the others 1, 2, ... by value."""
    bg = max(clusters, key=lambda v: hist[v])
    rest = [v for v in clusters if v != bg]
    return ",".join([f"{bg}:0"] + [f"{v}:{i}" for i, v in enumerate(rest, 1)])
