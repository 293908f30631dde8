"""Export's class-at-a-time argmax equals the argmax of all reverted probabilities."""

import numpy as np
import pytest

from samunet.inference.export import argmax_in_input_frame
from samunet.preprocessing.preprocessor import revert_probabilities


@pytest.mark.parametrize("transpose", [[0, 1, 2], [2, 0, 1]])
def test_argmax_one_class_at_a_time_matches_full_argmax(transpose):
    rng = np.random.default_rng(0)
    props = {"shape_after_transpose": [4, 20, 18], "bbox": [[0, 4], [3, 15], [2, 14]],
             "shape_after_crop": [4, 12, 12], "transpose_forward": transpose}
    probs = rng.random((4, 4, 16, 16)).astype(np.float32)  # resampled in-plane 16² -> 12² on the way back
    probs[:, :, :4] = 0.0  # ties inside the crop too: the first class must win, as with np.argmax
    full = revert_probabilities(probs, props)
    got = argmax_in_input_frame(probs, props)
    assert got.shape == full.shape[1:] and got.dtype == np.int16
    np.testing.assert_array_equal(got, np.argmax(full, 0))
    assert set(np.unique(got)) == {0, 1, 2, 3}
