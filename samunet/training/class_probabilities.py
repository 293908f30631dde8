"""Class probabilities from per-label scores: what the SAM trainers return and save.

SAM decodes one mask per label, each with its own sigmoid ``p_k`` (labels are independent,
several may exceed 0.5 at a voxel). Saved probabilities (``--save_probabilities``, ``--npz``),
fold ensembling and ``samunet_ensemble`` need what the other trainers give: ``(K, ...)``
with channel 0 the background, channels summing to 1 per voxel.

The conversion: each label's evidence is written as log-odds against the background,
``s_k = logit(p_k) - logit(θ2)``, and the class probabilities are ``softmax([0, s_1, ..., s_K])``.
For independent labels this is the probability of "exactly label k" given that at most one
label is present (``P(k) ∝ q_k / (1 - q_k)``, ``P(background) ∝ 1``, with ``q_k = sigmoid(s_k)``),
and it has three properties the pipeline relies on:

- the argmax is the label whose ``p_k`` is highest among those above θ2, background
  otherwise -- the SAM trainers' decision rule, so the exported label maps do not change;
- with one label and θ2 = 0.5 it is ``[1 - p, p]``, the stage-1 trainers' sigmoid output;
- a probability that is exactly 0 (a label not prompted on a slice) stays exactly 0.

A softmax output ``P`` (a stage-1 network) enters the same form as ``s_k = log(P_k / P_0)``
(:func:`softmax_log_odds`: with every label from stage 1 the result is stage 1's probabilities). A
chain that takes only some labels from stage 1 (the validation choice) uses
``s_k = log(P_k / max_{j != k} P_j)`` (:func:`softmax_label_odds`), positive exactly where stage 1's
argmax is ``k``, so that the labels left to SAM keep the voxels stage 1 gives to them.
"""

from __future__ import annotations

import numpy as np

# log-odds are clipped here: a sigmoid of exactly 1.0 (float32 saturates near logit 17) stays finite
MAX_LOG_ODDS = 30.0
_TINY = 1e-12  # floor for softmax probabilities before the log (a float32 softmax underflows to 0)


def _logit(theta: float) -> float:
    theta = float(theta)
    if not 0.0 < theta < 1.0:
        raise ValueError(f"θ2 = {theta}: the mask threshold must lie strictly between 0 and 1; set "
                         "prompting.theta2 in plans.json (default 0.5)")
    return float(np.log(theta) - np.log1p(-theta))


def sigmoid_log_odds(p: np.ndarray, theta: float = 0.5, out: np.ndarray | None = None) -> np.ndarray:
    """``logit(p) - logit(theta)`` for sigmoid probabilities ``p`` (any shape, float32): log-odds
    of each label against the background, 0 at ``p = theta``, ``-inf`` where ``p = 0``.
    ``out`` may be ``p`` itself (in place)."""
    shift = np.float32(_logit(theta))
    p = np.asarray(p, dtype=np.float32)
    out = np.empty_like(p) if out is None else out
    with np.errstate(divide="ignore"):
        for i in range(p.shape[0]):  # a channel at a time: temporaries of one label, not of all
            odds = 1 - p[i]
            np.divide(p[i], odds, out=odds)  # inf at p = 1
            np.log(odds, out=odds)  # -inf at p = 0
            np.subtract(odds, shift, out=out[i])
    return out


def softmax_log_odds(probs: np.ndarray) -> np.ndarray:
    """``(K, ...)`` class probabilities (background first) -> ``(K - 1, ...)`` ``log(P_k / P_0)``."""
    probs = np.asarray(probs, dtype=np.float32)
    background = np.log(np.maximum(probs[0], np.float32(_TINY)))
    out = np.empty((probs.shape[0] - 1,) + probs.shape[1:], dtype=np.float32)
    for k in range(1, probs.shape[0]):
        np.subtract(np.log(np.maximum(probs[k], np.float32(_TINY))), background, out=out[k - 1])
    return out


def softmax_label_odds(probs: np.ndarray, k: int) -> np.ndarray:
    """``(K, ...)`` class probabilities (background first) -> ``(...)`` ``log(P_k / max_{j != k} P_j)``:
    label ``k`` against the network's strongest alternative, background included. Positive exactly
    where ``k`` is the network's argmax, so a stage-1 label mixed with SAM's labels (the validation
    choice) claims the voxels stage 1 gives it, not every voxel where ``P_k > P_0`` (in a voxel stage 1
    gives to another label, ``log(P_k / P_0)`` can be positive and took it from SAM's label). With one
    label it is ``log(P_1 / P_0)``, :func:`softmax_log_odds`."""
    probs = np.asarray(probs, dtype=np.float32)
    rest = np.max(np.delete(probs, k, axis=0), axis=0)
    return (np.log(np.maximum(probs[k], np.float32(_TINY))) - np.log(np.maximum(rest, np.float32(_TINY)))
            ).astype(np.float32)


def log_odds_to_probabilities_(scores: np.ndarray) -> np.ndarray:
    """In place: ``scores`` ``(K, ...)`` float32 whose channels ``1..K-1`` hold each label's
    log-odds against the background (channel 0 is ignored) become class probabilities,
    ``softmax([0, s_1, ..., s_{K-1}])`` over axis 0. Returns ``scores``."""
    # in place and a channel at a time: a many-label CT volume needs no second copy
    s = scores[1:]
    np.minimum(s, np.float32(MAX_LOG_ODDS), out=s)
    top = np.maximum(s.max(0), np.float32(0.0))  # the largest logit, background's 0 included
    np.exp(-top, out=scores[0])
    total = scores[0].copy()
    for k in range(1, scores.shape[0]):
        scores[k] -= top
        np.exp(scores[k], out=scores[k])  # exp(-inf) = 0: an unprompted label keeps probability 0
        total += scores[k]
    for k in range(scores.shape[0]):
        scores[k] /= total
    return scores


def prefer_inner_labels_(scores: np.ndarray, depths: dict[int, int], fixed: frozenset = frozenset(),
                         margin: float = 0.01) -> np.ndarray:
    """In place on ``scores`` as :func:`log_odds_to_probabilities_` takes them (channels ``1..``: each
    label's log-odds against the background): where a label of nesting depth ``d`` (``depths``
    ``{channel: depth}``, 0 when absent; :func:`samunet.sam.box_prompting.nested_label_depths`) is
    above θ2 (log-odds > 0), every label of a lower depth is lowered below it, so the argmax is the
    deepest label above θ2 and, among equally deep ones, the most probable. An inner label (the optic
    cup inside the disc rim) then wins over the filled outer object SAM decodes from the outer
    label's box. Channels in ``fixed`` (a stage-1 network's softmax labels, which never fill a box)
    are not lowered, though they lower the outer labels. Returns ``scores``."""
    if not depths or scores.shape[0] < 3:
        return scores
    s = scores[1:]
    np.minimum(s, np.float32(MAX_LOG_ODDS), out=s)  # equal +inf log-odds would tie after the clip below
    cap = None  # the highest log-odds of the deeper labels so far
    for d in sorted({0, *depths.values()}, reverse=True):
        level = [k for k in range(1, scores.shape[0]) if depths.get(k, 0) == d]
        if cap is not None:
            lowered = cap - np.float32(margin)
            for k in level:
                if k not in fixed:
                    np.minimum(scores[k], lowered, out=scores[k], where=cap > 0)
        for k in level:
            cap = scores[k].copy() if cap is None else np.maximum(cap, scores[k], out=cap)
    return scores


def sigmoids_to_class_probabilities(p: np.ndarray, theta: float = 0.5) -> np.ndarray:
    """``(K_fg, ...)`` per-label sigmoid probabilities -> ``(K_fg + 1, ...)`` class probabilities
    (background first, summing to 1; see the module docstring)."""
    p = np.asarray(p, dtype=np.float32)
    out = np.empty((p.shape[0] + 1,) + p.shape[1:], dtype=np.float32)
    sigmoid_log_odds(p, theta, out=out[1:])
    return log_odds_to_probabilities_(out)
