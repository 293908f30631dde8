"""Fingerprint numbers against independent computations; plan fields for 3D MR and 2D RGB."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from samunet.dataset_conversion.dataset_json import load_dataset_json
from samunet.experiment_planning.fingerprint import compute_fingerprint
from samunet.experiment_planning.planner import plan_experiment


def test_fingerprint_matches_independent_numbers(prostate_raw):
    dj = load_dataset_json(prostate_raw)
    fp = compute_fingerprint(prostate_raw, dj, num_processes=1)
    assert fp["num_cases"] == 6
    all_fg, counts = [], {0: 0, 1: 0, 2: 0}
    for case, info in fp["cases"].items():
        img = sitk.ReadImage(str(prostate_raw / "imagesTr" / f"{case}_0000.nii.gz"))
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(prostate_raw / "labelsTr" / f"{case}.nii.gz")))
        arr = sitk.GetArrayFromImage(img)
        assert info["shape"] == list(arr.shape)
        assert info["spacing"] == pytest.approx(list(img.GetSpacing())[::-1])
        for v in (0, 1, 2):
            counts[v] += int((lab == v).sum())
        all_fg.append(arr[lab > 0].astype(float))
    assert fp["label_voxel_counts"] == {str(k): v for k, v in counts.items()}
    fg = np.concatenate(all_fg)
    st = fp["foreground_intensity_properties_per_channel"]["0"]
    # fingerprint samples at most 10k voxels per case: statistics agree within sampling error
    assert st["mean"] == pytest.approx(fg.mean(), rel=0.03)
    assert st["std"] == pytest.approx(fg.std(), rel=0.05)
    assert st["percentile_99_5"] == pytest.approx(np.percentile(fg, 99.5), rel=0.05)
    assert st["min"] >= fg.min() and st["max"] <= fg.max()


def test_fingerprint_same_with_two_workers(prostate_raw):
    dj = load_dataset_json(prostate_raw)
    assert compute_fingerprint(prostate_raw, dj, 1) == compute_fingerprint(prostate_raw, dj, 2)


def test_plan_3d_mr(prostate_raw):
    dj = load_dataset_json(prostate_raw)
    plans = plan_experiment(dj, compute_fingerprint(prostate_raw, dj), prostate_raw.name)
    assert plans["dimension"] == "3d"
    assert plans["transpose_forward"][0] == 0  # z (3.6 mm) is the slice axis
    assert plans["target_spacing"] == pytest.approx([3.6, 0.625, 0.625])
    assert plans["normalization"][0]["scheme"] == "PercentileRescale"
    assert plans["label_values"] == [0, 1, 2]
    assert plans["sam"]["model"] == "lite_medsam"
    # one MR channel: replicated to SAM's three input channels
    assert (plans["sam"]["input_channels"], plans["sam"]["input_channel_mode"]) == ([0], "replicate")
    # grey: appearance views for stage 1's training; the chain's validation under views stays off
    assert (plans["embedding_head"]["num_views"], plans["sam"]["validation_views"]) == (2, 0)
    assert plans["prompting"]["theta1"] == 0.75 and plans["prompting"]["theta2"] == 0.5
    ps = plans["stage1"]["patch_size"]
    assert all(p % 32 == 0 and 64 <= p <= 512 for p in ps)
    assert 2 <= plans["stage1"]["batch_size"] <= 32
    assert "anisotropic" in plans["decisions"]["transpose"]  # 3.6 mm slices vs 0.625 mm in-plane
    json.dumps(plans)  # serialisable


def _rgb_dataset(folder, n=4, size=(700, 900)):
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 256, size + (3,), dtype=np.uint8)
        lab = np.zeros(size, np.uint8)
        lab[100:300, 200:400] = 1
        Image.fromarray(img).save(folder / "imagesTr" / f"c{i}_0000.png")
        Image.fromarray(lab).save(folder / "labelsTr" / f"c{i}.png")
    dj = {"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "polyp": 1},
          "numTraining": n, "file_ending": ".png"}
    (folder / "dataset.json").write_text(json.dumps(dj))
    return dj


def test_plan_2d_rgb(tmp_path):
    dj = _rgb_dataset(tmp_path / "Dataset777_Rgb")
    fp = compute_fingerprint(tmp_path / "Dataset777_Rgb", dj)
    plans = plan_experiment(dj, fp, "Dataset777_Rgb")
    assert plans["dimension"] == "2d"
    assert [n["scheme"] for n in plans["normalization"]] == ["Rescale255"] * 3
    # 900 px wide at spacing 1 is coarsened so the median slice fits 512 px
    assert plans["median_shape_after_resampling"][2] == pytest.approx(512, abs=1)
    assert plans["target_spacing"][1] == pytest.approx(900 / 512, rel=1e-3)
    assert (plans["sam"]["input_channels"], plans["sam"]["input_channel_mode"]) == ([0, 1, 2], "rgb")
    assert (plans["embedding_head"]["num_views"], plans["sam"]["validation_views"]) == (0, 0)


def test_plan_2d_grey_png_rescales_each_image_to_its_percentiles(tmp_path):
    """One grey channel in 8-bit PNGs (MR/X-ray slices): a dark site and a bright one must reach
    the networks alike, so the scheme is per-image PercentileRescale, not a division by 255."""
    from samunet.preprocessing.normalization import normalize_channel

    folder = tmp_path / "Dataset778_Grey"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    base = rng.integers(20, 200, (128, 128)).astype(np.float64)
    images = {"bright": base, "dark": base * 0.25}  # the same anatomy, a darker scanner
    images["dark"][0, :3] = 255  # one bright artefact pixel row (a coil): below the 99.5th percentile
    for i, (name, img) in enumerate(images.items()):
        Image.fromarray(img.round().astype(np.uint8)).save(folder / "imagesTr" / f"{name}_0000.png")
        lab = np.zeros((128, 128), np.uint8)
        lab[40:80, 40:80] = 1
        Image.fromarray(lab).save(folder / "labelsTr" / f"{name}.png")
    dj = {"channel_names": {"0": "grey"}, "labels": {"background": 0, "prostate": 1}, "numTraining": 2,
          "file_ending": ".png"}
    (folder / "dataset.json").write_text(json.dumps(dj))
    plans = plan_experiment(dj, compute_fingerprint(folder, dj), folder.name)
    (scheme,) = plans["normalization"]
    assert scheme["scheme"] == "PercentileRescale" and "grey" in scheme["reason"]
    assert (plans["sam"]["input_channels"], plans["sam"]["input_channel_mode"]) == ([0], "replicate")
    out = {k: normalize_channel(np.asarray(Image.open(folder / "imagesTr" / f"{k}_0000.png"), np.float32), scheme)
           for k in images}
    interior = (slice(1, None), slice(None))  # away from the artefact row
    assert out["dark"].max() <= 1.0 and out["dark"][interior].mean() > 0.4  # Rescale255 would give ~0.11
    assert np.abs(out["dark"][interior] - out["bright"][interior]).mean() < 0.03
