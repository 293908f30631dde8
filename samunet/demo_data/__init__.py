"""Small real data shipped with samunet for the demo (see ATTRIBUTION.md)."""

from pathlib import Path

DEMO_DATA = Path(__file__).resolve().parent
PROSTATE_RUNMC6 = DEMO_DATA / "prostate_runmc6"
