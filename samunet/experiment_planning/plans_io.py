"""Names of plans files and of the preprocessed data folder (pure helpers, no CLI)."""

from __future__ import annotations

from samunet.experiment_planning.planner import DEFAULT_PLANS_NAME


def plans_file_name(plans_name: str = DEFAULT_PLANS_NAME) -> str:
    """``plans.json`` for the default plans, ``<plans_name>.json`` for others."""
    return "plans.json" if plans_name == DEFAULT_PLANS_NAME else f"{plans_name}.json"


def data_identifier(plans: dict) -> str:
    return f"{plans['plans_name']}_2d"
