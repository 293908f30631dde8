"""The prompts a model used, written as ``prompts.json`` beside its predictions.

SAM trainers fill a ``prompts_out`` list during :meth:`predict_preprocessed` with entries in
the *preprocessed* slice frame::

    {"z": 3, "label": 1, "box": [x0, y0, x1, y1]}                         # SAMBoxTrainer
    {"z": 3, "label": 1, "points": [[x, y], ...], "point_labels": [1, 0]}  # ProMISeTrainer

:func:`prompts_to_input_frame` maps them back through in-plane resampling, cropping and the
plan's transpose into the pixel grid of the written prediction (x = last array axis of the
image as read, y = the one before, z = the first), the frame ``samunet_plot_overlays``
draws in. :class:`PromptsJson` collects them per case and writes the file atomically, so
an interrupted prediction never leaves a half-written ``prompts.json``; existing entries of
other cases are kept (``--continue_prediction``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from samunet.utilities.file_io import load_json, save_json

PROMPTS_FILE = "prompts.json"


def _to_input_frame(zyx_t: np.ndarray, props: dict) -> np.ndarray:
    """``(N, 3)`` (z, y, x) preprocessed coordinates -> the original array's (axis0, axis1, axis2)."""
    (z0, _), (y0, _), (x0, _) = props["bbox"]
    cy, cx = props["shape_after_crop"][1:]
    ry, rx = props["shape_after_resampling"][1:]
    sy, sx = ry / cy, rx / cx
    t = np.empty_like(zyx_t, dtype=np.float64)
    t[:, 0] = zyx_t[:, 0] + z0
    t[:, 1] = (zyx_t[:, 1] + 0.5) / sy - 0.5 + y0  # pixel centres, the inverse of the forward mapping
    t[:, 2] = (zyx_t[:, 2] + 0.5) / sx - 0.5 + x0
    orig = np.empty_like(t)
    orig[:, list(props.get("transpose_forward", [0, 1, 2]))] = t  # transposed axis i is original axis tf[i]
    return orig


def prompts_to_input_frame(entries: list[dict], props: dict) -> list[dict]:
    """Map ``prompts_out`` entries (preprocessed frame) into the written prediction's frame.

    Boxes map corner by corner; their slice is the original slice of the preprocessed one
    (with a transposed plan the box is drawn on the nearest original slice). Points keep
    their own slice each, so one entry may split into several."""
    out: list[dict] = []
    for e in entries:
        z = float(e["z"])
        extra = {k: v for k, v in e.items() if k not in ("z", "label", "box", "points", "point_labels")}
        if "box" in e:
            x0, y0, x1, y1 = (float(v) for v in e["box"])
            corners = _to_input_frame(np.array([[z, y0, x0], [z, y1, x1]]), props)
            zz = int(round(corners[0, 0]))
            (ya, yb), (xa, xb) = sorted(corners[:, 1]), sorted(corners[:, 2])
            out.append({"z": zz, "label": int(e["label"]), "box": [round(xa, 1), round(ya, 1), round(xb, 1), round(yb, 1)], **extra})
        if "points" in e:
            pts = np.asarray(e["points"], dtype=np.float64).reshape(-1, 2)
            labels = list(e.get("point_labels", [1] * len(pts)))
            mapped = _to_input_frame(np.column_stack([np.full(len(pts), z), pts[:, 1], pts[:, 0]]), props)
            by_slice: dict[int, dict] = {}
            for (pz, py, px), pl in zip(mapped, labels):
                d = by_slice.setdefault(int(round(pz)), {"points": [], "point_labels": []})
                d["points"].append([round(float(px), 1), round(float(py), 1)])
                d["point_labels"].append(int(pl))
            for zz, d in sorted(by_slice.items()):
                out.append({"z": zz, "label": int(e["label"]), **d, **extra})
    return out


def records_prompts(model) -> bool:
    """Whether ``model.predict_preprocessed`` takes a ``prompts_out`` list."""
    import inspect

    return "prompts_out" in inspect.signature(model.predict_preprocessed).parameters


class PromptsJson:
    """``prompts.json`` of one prediction folder: ``{case: [entry, ...]}``."""

    def __init__(self, folder: str | Path, name: str = PROMPTS_FILE):
        self.file = Path(folder) / name
        self.cases: dict[str, list] = {}
        if self.file.is_file():
            try:
                self.cases = dict(load_json(self.file))
            except ValueError:  # unreadable: rebuilt from this run's cases
                self.cases = {}

    def add(self, case: str, entries: list[dict], props: dict) -> None:
        self.cases[case] = prompts_to_input_frame(entries, props)

    def save(self) -> Path | None:
        if not self.cases:
            return None
        save_json(dict(sorted(self.cases.items())), self.file)
        return self.file
