"""Which image channels feed SAM's 3-channel image encoder, and how: a plan decision.

SAM's encoders were pretrained on RGB photographs and take exactly 3 channels. The plan's
``sam`` section records the choice in two keys:

- ``input_channels``: 1 or 3 channel indices of the preprocessed image;
- ``input_channel_mode``: ``"replicate"`` (one grey channel copied to R, G and B, the
  MedSAM/LiteMedSAM convention for MR and CT) or ``"rgb"`` (3 channels used as R, G, B, e.g.
  a natural colour image, or three MR modalities chosen by editing the plan).

A plan written before these keys existed keeps the old behaviour: 3 channels as RGB, any
other count channel 0 replicated (now with a warning when channels are left out).
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

MODES = ("replicate", "rgb")
PLAN_KEYS = "sam.input_channels and sam.input_channel_mode"
EDIT_HINT = (f'edit {PLAN_KEYS} in plans.json (e.g. "input_channels": [0, 1, 2], "input_channel_mode": "rgb" '
             "to feed three modalities as SAM's R, G, B) and rerun samunet_plan_and_preprocess --keep_plans")
NATURAL_NAMES = ({"r", "red"}, {"g", "green"}, {"b", "blue"})


def legacy_sam_input(num_channels: int) -> dict:
    """What samunet fed SAM before the plan decided: 3 channels as RGB, else channel 0 replicated."""
    if int(num_channels) == 3:
        return {"channels": [0, 1, 2], "mode": "rgb"}
    return {"channels": [0], "mode": "replicate"}


def check_sam_input(channels, mode, num_channels: int, where: str = "plans.json") -> dict:
    """``{"channels": [...], "mode": ...}`` after checking it against the dataset's channel count;
    a ValueError naming ``where`` and the fix otherwise."""
    if mode not in MODES:
        raise ValueError(f"{where}: sam.input_channel_mode is {mode!r}; choose one of {MODES}")
    if not isinstance(channels, (list, tuple)) or not all(isinstance(c, int) and not isinstance(c, bool)
                                                         for c in channels):
        raise ValueError(f"{where}: sam.input_channels must be a list of channel indices, got {channels!r}")
    need = 1 if mode == "replicate" else 3
    if len(channels) != need:
        raise ValueError(f"{where}: sam.input_channel_mode {mode!r} needs {need} channel(s) in sam.input_channels, "
                         f"got {list(channels)}")
    bad = [c for c in channels if not 0 <= c < int(num_channels)]
    if bad:
        raise ValueError(f"{where}: sam.input_channels {list(channels)} names channel(s) {bad}, but the dataset has "
                         f"{num_channels} channel(s) (0..{int(num_channels) - 1})")
    return {"channels": [int(c) for c in channels], "mode": mode}


def plan_sam_input(plans: dict, where: str = "plans.json") -> dict:
    """The plan's SAM input ``{"channels", "mode"}``; a plan without the keys gets :func:`legacy_sam_input`."""
    sam = plans.get("sam") or {}
    num_channels = int(plans["num_channels"])
    if "input_channels" not in sam and "input_channel_mode" not in sam:
        return legacy_sam_input(num_channels)
    channels = sam.get("input_channels", [0])
    mode = sam.get("input_channel_mode", "rgb" if isinstance(channels, list) and len(channels) == 3 else "replicate")
    return check_sam_input(channels, mode, num_channels, where)


def sam_input_cache_key(plans: dict) -> dict | None:
    """The embedding-cache key entry for the plan's SAM input: None when it encodes what the old
    behaviour did (caches built before the keys existed stay valid), else the selection, with the
    canvas (``sam.canvas_px``) when the plan has one."""
    chosen = plan_sam_input(plans)
    canvas = (plans.get("sam") or {}).get("canvas_px")
    if canvas is not None:
        return {**chosen, "canvas_px": canvas}
    return None if chosen == legacy_sam_input(int(plans["num_channels"])) else chosen


def dropped_channels(plans: dict) -> list[int]:
    """Channels of the dataset that do not reach SAM under the plan's choice."""
    used = set(plan_sam_input(plans)["channels"])
    return [c for c in range(int(plans["num_channels"])) if c not in used]


def dropped_channels_warning(plans: dict) -> str | None:
    """A sentence naming the dataset, the channels SAM does not see and the plan keys to edit; None
    when every channel is used."""
    if "num_channels" not in plans:
        return None
    dropped = dropped_channels(plans)
    if not dropped:
        return None
    chosen = plan_sam_input(plans)
    return (f"{plans.get('dataset_name', 'this dataset')} has {plans['num_channels']} channels but SAM's image "
            f"encoder sees only channel(s) {chosen['channels']} ({chosen['mode']}); channel(s) {dropped} do not "
            f"reach SAM (stage-1 networks still use every channel). To choose, {EDIT_HINT}")


def _is_natural_rgb(dataset_json: dict, normalization: list[dict], natural_io: bool) -> bool:
    names = [str(dataset_json["channel_names"][k]).strip().lower()
             for k in sorted(dataset_json["channel_names"], key=int)]
    if len(names) != 3:
        return False
    if all(n in allowed for n, allowed in zip(names, NATURAL_NAMES)):
        return True
    return natural_io and all(s["scheme"] == "Rescale255" for s in normalization)


def choose_sam_input(dataset_json: dict, normalization: list[dict], natural_io: bool,
                     dataset_name: str) -> tuple[dict, str]:
    """The planner's choice ``({"input_channels", "input_channel_mode"}, reason)``.

    One channel: replicated. Three channels of a natural colour image (channel names R, G, B,
    or an 8-bit natural image file): RGB. Anything else (e.g. T1/T2/FLAIR, or 2 or 4 modalities):
    the first channel replicated, with a warning, since modalities have no meaningful mapping
    onto R, G, B that SAM was pretrained for; the user may pick three by editing the plan."""
    n = len(dataset_json["channel_names"])
    names = [dataset_json["channel_names"][k] for k in sorted(dataset_json["channel_names"], key=int)]
    if n == 1:
        return {"input_channels": [0], "input_channel_mode": "replicate"}, (
            f"one channel ({names[0]}): replicated to SAM's 3 input channels (MedSAM convention)")
    if _is_natural_rgb(dataset_json, normalization, natural_io):
        return {"input_channels": [0, 1, 2], "input_channel_mode": "rgb"}, (
            f"natural colour image ({', '.join(map(str, names))}): fed to SAM as R, G, B")
    reason = (f"{n} channels ({', '.join(map(str, names))}) are not an RGB image: SAM sees channel 0 "
              f"({names[0]}) replicated, channels {list(range(1, n))} do not reach SAM; {EDIT_HINT}")
    logger.warning("%s: %s", dataset_name, reason)
    return {"input_channels": [0], "input_channel_mode": "replicate"}, reason


def describe_sam_input(plans: dict) -> str:
    """One line for the plan summary, e.g. ``channel 0 (T2) replicated`` or ``channels [0, 1, 2] as RGB``."""
    chosen = plan_sam_input(plans)
    names = {int(n["channel"]): n["name"] for n in plans.get("normalization", [])}
    label = ", ".join(f"{c} ({names[c]})" if c in names else str(c) for c in chosen["channels"])
    text = (f"channel {label} replicated" if chosen["mode"] == "replicate" else f"channels {label} as R, G, B")
    if "input_channels" not in (plans.get("sam") or {}):
        text += " (plan without sam.input_channels: the old default)"
    dropped = dropped_channels(plans)
    if dropped:
        text += f"; WARNING channel(s) {dropped} not seen by SAM (edit {PLAN_KEYS})"
    return text
