import numpy as np

from samunet.training.data_loading import SliceDataset


def test_batches_shapes_oversampling_and_determinism(synthetic_planned):
    _, summary = synthetic_planned
    folder = summary["preprocessing"]["folder"]
    ds = SliceDataset(folder, ["s00", "s01", "s02"], (48, 80), [1], oversample_foreground=0.5)
    b = ds.batch(6, np.random.default_rng(1))
    assert b["data"].shape == (6, 1, 48, 80) and b["seg"].shape == (6, 1, 48, 80)
    assert all((b["seg"][i] == 1).any() for i in range(3, 6))  # the oversampled half holds foreground
    b2 = ds.batch(6, np.random.default_rng(1))
    np.testing.assert_array_equal(b["data"], b2["data"])
    assert (folder and list(__import__("pathlib").Path(folder).glob("*.data.npy")))


def test_missing_case_is_explained(synthetic_planned):
    _, summary = synthetic_planned
    import pytest

    with pytest.raises(FileNotFoundError, match="samunet_plan_and_preprocess"):
        SliceDataset(summary["preprocessing"]["folder"], ["nope"], (32, 32), [1])
