"""Per-label sigmoids (SAM trainers) -> class probabilities: background first, summing to 1, the
argmax the θ2 rule; stage-1 softmax labels mix in exactly."""

import numpy as np
import pytest

from samunet.training.class_probabilities import (log_odds_to_probabilities_, prefer_inner_labels_,
                                                  sigmoid_log_odds, sigmoids_to_class_probabilities,
                                                  softmax_log_odds)


def theta_rule(p: np.ndarray, theta: float) -> np.ndarray:
    """The SAM trainers' decision: the label with the highest sigmoid among those above θ2, else 0."""
    best = p.argmax(0) + 1
    return np.where(p.max(0) > theta, best, 0)


@pytest.mark.parametrize("theta", [0.5, 0.3, 0.8])
def test_probabilities_sum_to_one_and_keep_the_theta2_decision(theta):
    rng = np.random.default_rng(0)
    p = rng.random((3, 4, 20, 20)).astype(np.float32)  # three labels, often several above θ2 at once
    p[:, 0] = 0.0  # an unprompted slice
    p[1, 1, :5] = 1.0  # a saturated sigmoid
    probs = sigmoids_to_class_probabilities(p, theta)
    assert probs.shape == (4, 4, 20, 20) and probs.dtype == np.float32
    assert np.isfinite(probs).all() and probs.min() >= 0 and probs.max() <= 1
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(0), theta_rule(p, theta))
    # nothing prompted: background is certain and the labels have probability exactly 0
    assert np.all(probs[0, 0] == 1.0) and np.all(probs[1:, 0] == 0.0)
    # each label's odds against the background are its own, whatever the other labels say
    q = 1 / (1 + np.exp(-(np.log(p[2, 2:]) - np.log1p(-p[2, 2:]) - np.log(theta / (1 - theta)))))
    np.testing.assert_allclose(probs[3, 2:] / probs[0, 2:], q / (1 - q), rtol=1e-3)


def test_one_label_at_half_is_the_two_class_sigmoid():
    p = np.linspace(0, 1, 11, dtype=np.float32)[None, :, None, None]
    probs = sigmoids_to_class_probabilities(p, 0.5)
    np.testing.assert_allclose(probs[1], p[0], atol=1e-6)
    np.testing.assert_allclose(probs[0], 1 - p[0], atol=1e-6)


def test_softmax_labels_round_trip_exactly():
    """A stage-1 softmax written as log-odds against its background comes back unchanged."""
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (3, 2, 8, 8)).astype(np.float32)
    soft = np.exp(logits) / np.exp(logits).sum(0)
    scores = np.zeros_like(soft)
    scores[1:] = softmax_log_odds(soft)
    np.testing.assert_allclose(log_odds_to_probabilities_(scores), soft, atol=1e-6)
    # mixed: label 1 from the softmax, label 2 from a sigmoid, still a distribution
    scores = np.zeros_like(soft)
    scores[1] = softmax_log_odds(soft)[0]
    scores[2] = sigmoid_log_odds(rng.random((2, 8, 8)).astype(np.float32), 0.5)
    mixed = log_odds_to_probabilities_(scores)
    np.testing.assert_allclose(mixed.sum(0), 1.0, atol=1e-5)
    np.testing.assert_allclose(mixed[1] / mixed[0], soft[1] / soft[0], rtol=1e-4)


def test_theta2_outside_zero_one_names_the_plan_key():
    with pytest.raises(ValueError, match="prompting.theta2 in plans.json"):
        sigmoids_to_class_probabilities(np.zeros((1, 1, 2, 2), np.float32), 1.0)


def test_inner_labels_win_where_masks_overlap_and_nothing_else_changes():
    """Label 2 nested in 1 (depth 1), label 3 in 2 (depth 2): wherever a deeper label is above θ2 it
    is the argmax, whatever the outer labels' probabilities; elsewhere the θ2 rule is unchanged."""
    rng = np.random.default_rng(2)
    p = rng.random((3, 2, 30, 30)).astype(np.float32)
    p[0, 0, :4] = 1.0  # saturated outer label: +inf log-odds must not tie with a saturated inner one
    p[1, 0, :2] = 1.0
    p[2, 0, :2] = 0.0
    depths = {2: 1, 3: 2}
    scores = np.zeros((4,) + p.shape[1:], np.float32)
    sigmoid_log_odds(p, 0.5, out=scores[1:])
    probs = log_odds_to_probabilities_(prefer_inner_labels_(scores, depths))
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    on = p > 0.5
    expected = np.where(on[2], 3, np.where(on[1], 2, theta_rule(p[:1], 0.5)))
    np.testing.assert_array_equal(probs.argmax(0), expected)
    assert (probs.argmax(0)[0, :2] == 2).all()  # both saturated: the inner label
    # the old rule differs here (the outer label was more probable): the change does something
    assert (theta_rule(p, 0.5) != expected).any()
    # no depths, one label: untouched
    again = np.zeros_like(scores)
    sigmoid_log_odds(p, 0.5, out=again[1:])
    before = again.copy()
    assert prefer_inner_labels_(again, {}) is again
    np.testing.assert_array_equal(again, before)


def test_equally_deep_labels_keep_the_most_probable_rule():
    rng = np.random.default_rng(3)
    p = rng.random((3, 1, 25, 25)).astype(np.float32)
    scores = np.zeros((4,) + p.shape[1:], np.float32)
    sigmoid_log_odds(p, 0.5, out=scores[1:])
    probs = log_odds_to_probabilities_(prefer_inner_labels_(scores, {2: 1, 3: 1}))
    on = p[1:] > 0.5
    inner = np.where(on.any(0), 2 + np.argmax(np.where(on, p[1:], -1), 0), 0)
    np.testing.assert_array_equal(probs.argmax(0), np.where(inner > 0, inner, theta_rule(p[:1], 0.5)))


def test_stage1_softmax_labels_are_never_lowered_but_lower_the_outer_ones():
    """Every label from stage 1: exactly stage 1's probabilities. A SAM outer label around a stage-1
    inner label still yields to it."""
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 2, (3, 1, 16, 16)).astype(np.float32)
    soft = np.exp(logits) / np.exp(logits).sum(0)
    scores = np.zeros_like(soft)
    scores[1:] = softmax_log_odds(soft)
    np.testing.assert_allclose(log_odds_to_probabilities_(prefer_inner_labels_(scores, {2: 1}, frozenset({1, 2}))),
                               soft, atol=1e-6)
    scores = np.zeros_like(soft)
    scores[1] = sigmoid_log_odds(np.full((1, 16, 16), 0.99, np.float32), 0.5)  # SAM's filled outer label
    scores[2] = softmax_log_odds(soft[[0, 2]])[0]  # the inner label from stage 1
    label = log_odds_to_probabilities_(prefer_inner_labels_(scores, {2: 1}, frozenset({2}))).argmax(0)
    np.testing.assert_array_equal(label, np.where(soft[2] > soft[0], 2, 1))


def test_a_stage1_label_mixed_with_sam_claims_only_where_stage1_gives_it():
    """SAM's outer label fills its box; the inner label comes from stage 1. Where stage 1 gives a voxel to
    the outer label (its P_inner can still exceed its background) SAM's outer label keeps it; where stage
    1 gives it to the inner label, the inner label wins."""
    from samunet.training.class_probabilities import softmax_label_odds

    soft = np.zeros((3, 1, 1, 3), np.float32)
    soft[:, 0, 0, 0] = [0.05, 0.80, 0.15]  # stage 1: outer label; P_inner > P_background
    soft[:, 0, 0, 1] = [0.10, 0.20, 0.70]  # stage 1: inner label
    soft[:, 0, 0, 2] = [0.90, 0.05, 0.05]  # stage 1: background
    scores = np.zeros_like(soft)
    scores[1] = sigmoid_log_odds(np.full((1, 1, 3), 0.95, np.float32), 0.5)  # SAM's filled outer box
    scores[2] = softmax_label_odds(soft, 2)
    label = log_odds_to_probabilities_(prefer_inner_labels_(scores, {2: 1}, frozenset({2}))).argmax(0)
    np.testing.assert_array_equal(label[0, 0], [1, 2, 1])
    np.testing.assert_allclose(softmax_label_odds(soft[[0, 1]], 1), softmax_log_odds(soft[[0, 1]])[0], atol=1e-6)
