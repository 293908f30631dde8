"""Evaluation: Dice / NSD metrics and folder evaluation (``samunet_evaluate``)."""

from samunet.evaluation.evaluate import EvaluationError, evaluate_folder
from samunet.evaluation.metrics import (
    DEFAULT_PROTOCOL,
    DEFAULT_TOLERANCE,
    METRIC_PROTOCOLS,
    case_metrics,
    dice,
    normalized_surface_dice,
)

__all__ = [
    "DEFAULT_PROTOCOL",
    "DEFAULT_TOLERANCE",
    "METRIC_PROTOCOLS",
    "EvaluationError",
    "case_metrics",
    "dice",
    "evaluate_folder",
    "normalized_surface_dice",
]
