"""How many of the plan's appearance views of the training slices a time budget allows.

Each appearance view costs one encoder pass per training slice (75 GFLOP with LiteMedSAM), paid
before stage 1 trains. On a slow CPU and a large dataset, two views would take most of a 30-minute
budget, so under a time budget the views encoded are capped at :data:`VIEW_BUDGET_SHARE` of it,
measured with a probe of the encoder on this device; views already cached cost nothing. The
decision is made once per fold and kept in ``<fold>/appearance_views.json``, so the fold's head, its
out-of-fold heads and a resumed run train on the same views.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from samunet.training.schedule import format_duration
from samunet.utilities.file_io import load_json, save_json

logger = logging.getLogger(__name__)

# share of the time budget that encoding appearance views may take
VIEW_BUDGET_SHARE = 0.2
DECISION_FILE = "appearance_views.json"


def views_that_fit(uncached_slices: Sequence[int], seconds_per_slice: float, allowance_s: float | None) -> int:
    """How many views, taken in order, fit ``allowance_s`` seconds of encoding when view ``v`` still
    needs ``uncached_slices[v]`` slices encoded at ``seconds_per_slice`` each (None: no budget, all)."""
    if allowance_s is None:
        return len(uncached_slices)
    if seconds_per_slice < 0 or allowance_s < 0:
        raise ValueError("seconds_per_slice and allowance_s must be >= 0")
    spent, fit = 0.0, 0
    for n in uncached_slices:
        spent += int(n) * float(seconds_per_slice)
        if spent > allowance_s + 1e-9:
            break
        fit += 1
    return fit


def decision_key(planned: int, tags: Sequence[str]) -> dict:
    """What a stored decision must match to be reused: the planned views and their cache folders."""
    return {"planned": int(planned), "views": list(tags)}


def read_decision(folder: Path) -> dict | None:
    """The fold's stored view decision (``appearance_views.json``, ``used`` as an int), or None when there
    is none or it is unreadable or malformed (a half-written or edited file: decide again). The one
    place that checks the file, so its readers need not."""
    path = Path(folder) / DECISION_FILE
    if not path.is_file():
        return None
    try:
        stored = load_json(path)
        if not isinstance(stored, dict):
            return None
        return {**stored, "used": int(stored["used"])}
    except (ValueError, TypeError, KeyError):
        return None


def used_view_tags(folder: Path) -> list[str]:
    """The cache tags of the views the fold's stage 1 encoded and trained on (the first ``used`` of the
    stored decision's ``views``); none without a readable decision."""
    stored = read_decision(folder)
    views = None if stored is None else stored.get("views")
    return [str(t) for t in views][:stored["used"]] if isinstance(views, list) else []


def stored_decision(folder: Path, key: dict) -> int | None:
    """The number of views decided earlier for this fold and these planned views, or None."""
    stored = read_decision(folder)
    if stored is None or {k: stored.get(k) for k in key} != key:
        return None
    return stored["used"]


def record_decision(folder: Path, key: dict, used: int, seconds_per_slice: float | None,
                    allowance_s: float | None, uncached: Sequence[int]) -> None:
    """Log why ``used`` of the planned views are encoded, and keep the decision in ``folder``."""
    planned = key["planned"]
    if allowance_s is None:
        reason = "no time budget: every planned view"
    else:
        need = sum(uncached) * (seconds_per_slice or 0.0)
        reason = (f"encoding the {planned} planned view(s) of the training slices would take "
                  f"{format_duration(need)} at {seconds_per_slice:.2f} s per slice; {VIEW_BUDGET_SHARE:.0%} of the "
                  f"time budget ({format_duration(allowance_s)}) allows {used}")
    if used < planned:
        logger.warning("appearance views: %d of the %d planned (%s); a larger --time_budget, a faster device or "
                       "embeddings cached ahead (samunet_build_embedding_cache) give more", used, planned, reason)
    else:
        logger.info("appearance views: %d (%s)", used, reason)
    Path(folder).mkdir(parents=True, exist_ok=True)
    save_json({**key, "used": int(used), "seconds_per_slice": seconds_per_slice, "allowance_s": allowance_s,
               "uncached_slices": [int(n) for n in uncached], "reason": reason}, Path(folder) / DECISION_FILE)
