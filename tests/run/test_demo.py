"""The demo's data staging (simulated second site) and a short end-to-end demo run."""

import numpy as np
import pytest
import SimpleITK as sitk

from samunet.run.demo import SHIFTED_CASES, SITE_A, SITE_B, simulate_scanner_shift, stage_demo_data


def test_scanner_shift_is_deterministic_and_keeps_the_range():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 1000, size=(3, 32, 40)).astype(np.float32)
    a, b = simulate_scanner_shift(img, seed=1), simulate_scanner_shift(img, seed=1)
    assert a.shape == img.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, img, rtol=0.05)  # really shifted
    assert a.min() >= np.percentile(img, 0.5) - 1e-3 and a.max() < 2 * img.max()
    assert not np.array_equal(a, simulate_scanner_shift(img, seed=2))


def test_stage_demo_data_two_sites_same_geometry(tmp_path):
    images, masks, csv = stage_demo_data(tmp_path)
    rows = dict(line.split(",") for line in csv.read_text().splitlines()[1:])
    assert sorted(rows) == [f"Case0{i}" for i in range(6)]
    assert {c for c, d in rows.items() if d == SITE_B} == set(SHIFTED_CASES)
    assert {c for c, d in rows.items() if d == SITE_A} == {"Case00", "Case01", "Case02"}
    from samunet.demo_data import PROSTATE_RUNMC6

    for case in ("Case00", SHIFTED_CASES[0]):
        orig = sitk.ReadImage(str(PROSTATE_RUNMC6 / "images" / f"{case}.nii.gz"))
        staged = sitk.ReadImage(str(images / f"{case}.nii.gz"))
        assert staged.GetSize() == orig.GetSize() and staged.GetSpacing() == orig.GetSpacing()
        assert staged.GetDirection() == orig.GetDirection() and staged.GetOrigin() == orig.GetOrigin()
        same = np.array_equal(sitk.GetArrayFromImage(staged), sitk.GetArrayFromImage(orig))
        assert same == (case not in SHIFTED_CASES)
        assert (masks / f"{case}_Segmentation.nii.gz").is_file()


@pytest.mark.slow
def test_demo_runs_end_to_end_with_the_stage1_trainer(tmp_path, samunet_roots, capsys):
    """Convert -> plan -> CV fold 0 and the domain fold -> predict -> evaluate -> report (one
    cheap trainer; the SAM trainers are exercised by their own tests)."""
    from samunet.run.demo import DOMAIN_FOLD, run_demo

    report = run_demo(tmp_path / "demo", num_processes=1, device="cpu",
                      schedule=(("ResNetTrainer", 1, 2, {}),), folds=("0", DOMAIN_FOLD))
    out = capsys.readouterr().out
    assert "samunet_report" in out and "demo finished" in out
    dh = report["tables"]["domain_holdout_dice"]
    assert any("ResNetTrainer" in r for r in dh.rows) and any(SITE_A in c for c in dh.columns)
    assert (report["output_folder"] / "report.md").is_file()
