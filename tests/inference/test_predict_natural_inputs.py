"""samunet_predict on a 2D natural-image dataset takes frames as the hospital ships them:
``.tif`` (or ``.jpg``, ...) files whatever the dataset's ``.png`` ending, named freely."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile
from PIL import Image

from samunet.inference.predictor import PredictionError, find_input_cases

NATURAL = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _touch(folder, *names):
    for n in names:
        (folder / n).write_bytes(b"x")


def test_natural_inputs_any_ending_and_name(tmp_path):
    _touch(tmp_path, "104.tif", "a_0000.png", "b_0000.jpg", "b_0001.jpg", "notes.txt")
    cases = find_input_cases(tmp_path, ".png", 3, NATURAL)
    assert {c: [p.name for p in f] for c, f in cases.items()} == {
        "104": ["104.tif"], "a": ["a_0000.png"], "b": ["b_0000.jpg", "b_0001.jpg"]}


def test_without_natural_endings_only_the_dataset_pattern(tmp_path):
    _touch(tmp_path, "104.tif")
    with pytest.raises(PredictionError, match=r"expected files named CASE_0000\.nii\.gz \(one per channel"):
        find_input_cases(tmp_path, ".nii.gz", 1)
    _touch(tmp_path, "c_0000.nii.gz")
    assert list(find_input_cases(tmp_path, ".nii.gz", 1)) == ["c"]


def test_two_files_of_one_case_named(tmp_path):
    _touch(tmp_path, "104.tif", "104.png")
    with pytest.raises(PredictionError, match=r"104\.png and .*104\.tif .*both case '104'"):
        find_input_cases(tmp_path, ".png", 3, NATURAL)


def test_empty_folder_says_what_is_accepted(tmp_path):
    with pytest.raises(PredictionError, match=r"CASE_0000\.png \(or any \.png/.*\.tif/\.tiff image\)"):
        find_input_cases(tmp_path, ".png", 3, NATURAL)


def test_predict_raw_clinicdb_tiffs_with_a_png_model(shared_data, samunet_roots, tmp_path):
    """Convert the three CVC-ClinicDB TIFF pairs (to PNG), train a tiny stage 1 on two folds, then
    predict the original .tif frames: one PNG mask per frame in the frame's 384 x 288 geometry,
    probabilities that samunet_ensemble averages, and post-processing chosen and applied on them."""
    import json

    from samunet.dataset_conversion.convert_2d_folder import convert_2d_folder
    from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess
    from samunet.inference.ensembling import main as ensemble_main
    from samunet.inference.postprocessing import apply_main, determine_main
    from samunet.inference.predictor import main as predict_main
    from samunet.run.train import train

    src = shared_data / "clinicdb_tiff3"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    raw = convert_2d_folder(src, 507, "ClinicTiff")
    plan_and_preprocess(507, num_processes=1)
    plans_file = next(samunet_roots["preprocessed"].glob("Dataset507_*/plans.json"))
    plans = json.loads(plans_file.read_text())
    plans["stage1"]["batch_size"] = 2
    plans["stage1"]["num_val_iterations_per_epoch"] = 0
    plans_file.write_text(json.dumps(plans))
    for fold in ("0", "1"):
        train(507, fold, "ResNetTrainer", device="cpu", num_epochs=1, num_iterations=2)
    frames = tmp_path / "frames"  # the hospital's files, named like the dataset's cases
    frames.mkdir()
    stems = ("104", "105", "106")
    for stem in stems:
        shutil.copy(src / "images" / f"{stem}.tif", frames / f"clinicdb_tiff3_{stem}.tif")
    outs = []
    for fold in ("0", "1"):
        outs.append(tmp_path / f"out{fold}")
        predict_main(["-i", str(frames), "-o", str(outs[-1]), "-d", "507", "-tr", "ResNetTrainer", "-f", fold,
                      "-device", "cpu", "--save_probabilities"])
    for stem in stems:
        seg = np.array(Image.open(outs[0] / f"clinicdb_tiff3_{stem}.png"))
        assert seg.shape == tifffile.imread(src / "images" / f"{stem}.tif").shape[:2] == (288, 384)
        assert set(np.unique(seg)) <= {0, 1}
    ens = tmp_path / "ensemble"
    ensemble_main(["-i", str(outs[0]), str(outs[1]), "-o", str(ens)])
    for stem in stems:
        p = sum(np.load(o / f"clinicdb_tiff3_{stem}.npz")["probabilities"].astype(np.float64) for o in outs)
        expected = np.argmax(p, axis=0).reshape(288, 384)
        np.testing.assert_array_equal(np.array(Image.open(ens / f"clinicdb_tiff3_{stem}.png")), expected)
    pp = tmp_path / "postprocessing.json"
    determine_main(["-i", str(ens), "-ref", str(raw / "labelsTr"), "--dataset", "507", "-o", str(pp)])
    assert json.loads(pp.read_text())
    final = tmp_path / "final"
    apply_main(["-i", str(ens), "-o", str(final), "-pp_pkl_file", str(pp)])
    for stem in stems:
        assert np.array(Image.open(final / f"clinicdb_tiff3_{stem}.png")).shape == (288, 384)
