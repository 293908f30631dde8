"""The demo's data staging (simulated second site), its command line, its comparison table and
short end-to-end demo runs (the default chain, and a fixed short schedule)."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from samunet.run import demo
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


@pytest.fixture
def demo_calls(monkeypatch):
    """``main`` with ``run_demo`` replaced by a recorder (nothing is trained)."""
    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda *a, **kw: calls.append((a, kw)))
    return calls


def test_cli_default_is_the_budgeted_chain_on_the_domain_fold(demo_calls):
    demo.main(["-o", "x"])
    (args, kw), = demo_calls
    assert args[3] is None and args[4] is None  # schedule and folds: run_demo's defaults
    assert kw["time_budget"] == demo.DEFAULT_TIME_BUDGET == "7m"
    assert demo.default_schedule("90s") == (("SAMBoxTrainer", None, None, {"time_budget": "90s"}),)
    demo.main(["--time_budget", "90s"])
    assert demo_calls[-1][1]["time_budget"] == "90s"


def test_cli_all_trainers_and_tr_use_the_short_schedule(demo_calls):
    demo.main(["--all_trainers"])
    assert [s[0] for s in demo_calls[-1][0][3]] == ["ResNetTrainer", "ProMISeTrainer", "SAMBoxTrainer",
                                                   "ClassPromptTrainer"]
    assert all(s[1] and s[2] for s in demo_calls[-1][0][3])  # fixed epochs x iterations, no budget
    demo.main(["-tr", "ResNetTrainer", "-f", "0"])
    (args, _) = demo_calls[-1]
    assert [s[0] for s in args[3]] == ["ResNetTrainer"] and args[4] == ("0",)


@pytest.mark.parametrize("argv", [["--time_budget", "soon"], ["--all_trainers", "--time_budget", "6m"],
                                  ["--all_trainers", "-tr", "ResNetTrainer"]])
def test_cli_refuses_bad_combinations(demo_calls, argv):
    with pytest.raises(SystemExit):
        demo.main(argv)
    assert not demo_calls


def test_comparison_table_reads_the_fold_summaries(samunet_roots):
    ds = samunet_roots["results"] / f"Dataset{demo.DEMO_DATASET_ID}_{demo.DEMO_DATASET_NAME}"
    for trainer, sub, dice in (("EmbeddingHeadTrainer", "test", 0.7), ("SAMBoxTrainer", "test", 0.75),
                               ("SAMBoxTrainer", "test_gt_box", 0.8)):
        folder = ds / f"{trainer}__samunetPlans" / f"fold_{demo.DOMAIN_FOLD}" / sub
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps({"foreground_mean": {"Dice": dice, "NSD": dice + 0.1}}))
    rows = demo.comparison_rows("EmbeddingHeadTrainer", with_resnet=True)
    assert [r[0] for r in rows] == ["ResNetTrainer from scratch (stage 1 alone)",
                                    "stage 1 alone (EmbeddingHeadTrainer)",
                                    "chain (SAMBoxTrainer), automatic boxes", "chain (SAMBoxTrainer), reference box"]
    assert rows[0][1] == {} and [r[1]["Dice"] for r in rows[1:]] == [0.7, 0.75, 0.8]
    md = demo.format_comparison("t", rows, [("whole demo", 95.0)])
    assert "| ResNetTrainer from scratch (stage 1 alone) | - | - |" in md
    assert "| chain (SAMBoxTrainer), reference box | 0.800 | 0.900 |" in md and "| whole demo | 1m35s |" in md


def _trained(results):
    """``{trainer: {fold folders}}`` under the demo dataset's results folder."""
    ds = next(results.glob("Dataset990_*"))
    return {p.name.split("__")[0]: {f.name for f in p.glob("fold_*")} for p in ds.glob("*__samunetPlans")}


@pytest.mark.slow
def test_demo_default_trains_only_the_chain_on_the_domain_fold(tmp_path, samunet_roots, capsys):
    """The default path with a tiny budget: only SAMBoxTrainer and its stage 1, only the domain
    fold; stage 1 alone is evaluated on the test cases, and the comparison table is written."""
    report = demo.run_demo(tmp_path / "demo", num_processes=1, device="cpu", time_budget="90s")
    out = capsys.readouterr().out
    fold = f"fold_{demo.DOMAIN_FOLD}"
    assert _trained(tmp_path / "demo" / "results") == {"SAMBoxTrainer": {fold}, "EmbeddingHeadTrainer": {fold}}
    ds = next((tmp_path / "demo" / "results").glob("Dataset990_*"))
    assert (ds / "EmbeddingHeadTrainer__samunetPlans" / fold / "test" / "summary.json").is_file()
    for sub in ("test", "test_gt_box"):
        assert (ds / "SAMBoxTrainer__samunetPlans" / fold / sub / "summary.json").is_file()
    comparison = report["comparison"]
    assert comparison["file"].is_file() and comparison["file"].read_text() == comparison["markdown"]
    names = [name for name, _ in comparison["rows"]]
    assert names == ["stage 1 alone (EmbeddingHeadTrainer)", "chain (SAMBoxTrainer), automatic boxes",
                     "chain (SAMBoxTrainer), reference box"]
    assert all(0 <= r["Dice"] <= 1 and 0 <= r["NSD"] <= 1 for _, r in comparison["rows"])
    assert "--time_budget 90s" in out and "whole demo" in out and "demo finished" in out
    assert comparison["markdown"] in out
    assert (report["output_folder"] / "report.md").is_file()
    assert list((tmp_path / "demo" / "overlays" / "SAMBoxTrainer").glob("*.png"))


@pytest.mark.slow
def test_demo_runs_end_to_end_with_the_stage1_trainer(tmp_path, samunet_roots, capsys):
    """A fixed schedule (the --all_trainers / -tr path) on CV fold 0 and the domain fold ->
    predict -> evaluate -> report (one cheap trainer; the SAM trainers are exercised by their own
    tests). Without a chain there is no comparison table."""
    report = demo.run_demo(tmp_path / "demo", num_processes=1, device="cpu",
                           schedule=(("ResNetTrainer", 1, 2, {}),))
    out = capsys.readouterr().out
    assert "samunet_report" in out and "demo finished" in out and "comparison" not in report
    assert _trained(tmp_path / "demo" / "results") == {"ResNetTrainer": {"fold_0", f"fold_{demo.DOMAIN_FOLD}"}}
    dh = report["tables"]["domain_holdout_dice"]
    assert any("ResNetTrainer" in r for r in dh.rows) and any(SITE_A in c for c in dh.columns)
    assert (report["output_folder"] / "report.md").is_file()
