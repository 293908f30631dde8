"""Preprocessing steps and the preprocess -> revert round trip on real MRI."""

import numpy as np
import pytest
import SimpleITK as sitk

from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess
from samunet.preprocessing.cropping import crop_to_bbox, nonzero_bbox, uncrop
from samunet.preprocessing.normalization import ct_normalize, percentile_rescale
from samunet.preprocessing.preprocessor import load_preprocessed_case, revert_seg
from samunet.preprocessing.resampling import resample_seg_inplane


def test_bbox_includes_labels_outside_nonzero():
    data = np.zeros((1, 4, 10, 10), np.float32)
    data[0, 1:3, 2:5, 3:6] = 1
    seg = np.zeros((1, 4, 10, 10), np.int16)
    seg[0, 3, 8, 8] = 1
    box = nonzero_bbox(data, seg)
    assert box == [[1, 4], [2, 9], [3, 9]]
    c = crop_to_bbox(seg, box)
    np.testing.assert_array_equal(uncrop(c, box, (4, 10, 10)), seg)


def test_percentile_rescale_range_and_zero_background():
    x = np.zeros((4, 20, 20), np.float32)
    x[:, 5:15, 5:15] = np.random.default_rng(0).uniform(100, 900, (4, 10, 10))
    y = percentile_rescale(x)
    assert y.min() == 0 and y.max() == pytest.approx(1)
    assert np.all(y[x == 0] == 0)
    assert np.all(percentile_rescale(np.full((2, 3, 3), 7.0)) == 0)  # constant image


def test_ct_normalize():
    y = ct_normalize(np.array([-2000.0, -100.0, 0.0, 300.0, 3000.0]), -100.0, 300.0)
    np.testing.assert_allclose(y, [0, 0, 0.25, 1, 1])


def test_seg_resampling_keeps_labels_and_shape():
    seg = np.zeros((1, 2, 40, 40), np.int16)
    seg[0, :, 10:30, 10:20] = 1
    seg[0, :, 10:30, 20:30] = 2
    out = resample_seg_inplane(seg, (20, 20), [0, 1, 2])
    assert out.shape == (1, 2, 20, 20)
    assert set(np.unique(out)) == {0, 1, 2}
    assert (out == 1).sum() == pytest.approx((seg == 1).sum() / 4, rel=0.1)


@pytest.mark.slow
def test_preprocess_then_revert_reproduces_labels(prostate_raw):
    summary = plan_and_preprocess(501, num_processes=2)
    plans = summary["plans"]
    folder = summary["preprocessing"]["folder"]
    for case in ("Case00", "Case01", "Case03"):
        data, seg, props = load_preprocessed_case(folder, case)
        assert data.dtype == np.float32 and data.shape[0] == 1
        assert 0 <= data.min() and data.max() <= 1
        assert seg.shape[1:] == data.shape[1:]
        back = revert_seg(seg[0], props, plans["label_values"])
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(prostate_raw / "labelsTr" / f"{case}.nii.gz")))
        assert back.shape == ref.shape
        if props["shape_after_resampling"] == props["shape_after_crop"]:
            np.testing.assert_array_equal(back, ref)  # no resampling: crop/transpose undone exactly
        else:  # Case00 (0.6 mm) is resampled to 0.625 mm and back
            for v in (1, 2):
                dice = 2 * ((back == v) & (ref == v)).sum() / ((back == v).sum() + (ref == v).sum())
                assert dice > 0.95, (case, v, dice)
    # a rerun skips finished cases; --clean redoes them
    again = plan_and_preprocess(501, num_processes=1)
    assert again["preprocessing"]["preprocessed"] == 0 and again["preprocessing"]["skipped"] == 6


def test_transposed_volume_roundtrip(tmp_path, samunet_roots):
    """A volume whose lowest-resolution axis is x (not z) is sliced along x and restored exactly."""
    import json

    raw = samunet_roots["raw"] / "Dataset600_Transposed"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        img = rng.uniform(1, 100, (30, 24, 6)).astype(np.float32)  # (z, y, x) array order
        lab = np.zeros(img.shape, np.uint8)
        lab[5:20, 4:15, 1:5] = 1
        for arr, f in ((img, raw / "imagesTr" / f"c{i}_0000.nii.gz"), (lab, raw / "labelsTr" / f"c{i}.nii.gz")):
            im = sitk.GetImageFromArray(arr)
            im.SetSpacing((4.0, 1.0, 1.0))  # x spacing 4 mm
            sitk.WriteImage(im, str(f))
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1},
                                                  "numTraining": 3, "file_ending": ".nii.gz"}))
    summary = plan_and_preprocess(600, num_processes=1)
    assert summary["plans"]["transpose_forward"] == [2, 0, 1]
    data, seg, props = load_preprocessed_case(summary["preprocessing"]["folder"], "c1")
    assert data.shape[1] == 6  # slices along x
    back = revert_seg(seg[0], props, [0, 1])
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / "c1.nii.gz")))
    np.testing.assert_array_equal(back, ref)
