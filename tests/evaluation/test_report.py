"""samunet_report: tables from hand-made summary.json trees and from a small trained tree."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image

import trained_tree
from samunet.evaluation.report import build_report, collect_results, main

DS = "Dataset777_Fake"


# --------------------------------------------------------------------------- a fake results tree


def fake_summary(per_domain: dict[str, tuple[float, float]], missing=(), labels=None, class_means=None) -> dict:
    """A summary.json with one case per domain whose Dice/NSD equal the given per-domain values."""
    labels = labels or {"1": "gland"}
    rows, pd = [], {}
    for i, (dom, (d, n)) in enumerate(sorted(per_domain.items())):
        rows.append({"case": f"c{dom}{i}", "domain": dom,
                     "metrics": {lab: {"Dice": d, "NSD": n, "n_ref": 10, "n_pred": 10} for lab in labels}})
        agg = {"foreground_mean": {"Dice": d, "NSD": n}, "foreground_mean_with_missing_as_0": {"Dice": d, "NSD": n},
               "n_cases": 1, "n_missing": 0, "missing_predictions": []}
        pd[dom] = agg
    fg = {m: float(np.mean([v[k] for v in per_domain.values()])) for k, m in enumerate(("Dice", "NSD"))}
    means = class_means or {lab: {"Dice": fg["Dice"], "NSD": fg["NSD"], "n_cases": len(rows)} for lab in labels}
    fg0 = fg
    if missing:
        fg0 = {m: fg[m] * len(rows) / (len(rows) + len(missing)) for m in fg}
        first = sorted(pd)[0]
        pd[first]["missing_predictions"] = list(missing)
        pd[first]["n_missing"] = len(missing)
        pd[first]["foreground_mean_with_missing_as_0"] = {m: 0.5 * pd[first]["foreground_mean"][m] for m in fg}
    return {"protocol": {"tag": "per_case_3d"}, "labels": labels, "metric_per_case": rows, "mean": means,
            "foreground_mean": fg, "mean_with_missing_as_0": means, "foreground_mean_with_missing_as_0": fg0,
            "n_cases": len(rows), "per_domain": pd, "missing_predictions": list(missing), "unmatched_predictions": []}


def write(root, trainer, fold, split, summary):
    p = root / DS / f"{trainer}__samunetPlans" / f"fold_{fold}" / split / "summary.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(summary))


@pytest.fixture
def fake_tree(samunet_roots):
    res = samunet_roots["results"]
    # domain hold-out: sources A, B; targets are the other domains
    write(res, "ResNetTrainer", "domain_A", "test", fake_summary({"B": (0.6, 0.5), "C": (0.8, 0.7)}))
    write(res, "ResNetTrainer", "domain_A", "validation", fake_summary({"A": (0.9, 0.9)}))
    write(res, "ResNetTrainer", "domain_B", "test", fake_summary({"A": (0.5, 0.4), "C": (0.7, 0.6)}))
    write(res, "ResNetTrainer", "domain_B", "validation", fake_summary({"B": (0.9, 0.9)}))
    write(res, "SAMBoxTrainer", "domain_A", "test", fake_summary({"B": (0.7, 0.6), "C": (0.7, 0.6)}, missing=["cX"]))
    write(res, "SAMBoxTrainer", "domain_A", "test_gt_box", fake_summary({"B": (0.9, 0.8), "C": (0.9, 0.9)}))
    write(res, "SAMBoxTrainer", "domain_A", "test_full_box", fake_summary({"B": (0.3, 0.2), "C": (0.5, 0.4)}))
    write(res, "SAMBoxTrainer", "domain_A", "validation", fake_summary({"A": (0.9, 0.9)}))
    # SAMBoxTrainer domain_B: trained, never evaluated
    (res / DS / "SAMBoxTrainer__samunetPlans" / "fold_domain_B").mkdir(parents=True)
    (res / DS / "SAMBoxTrainer__samunetPlans" / "fold_domain_B" / "checkpoint_final.pth").write_bytes(b"x")
    # five folds: two classes, folds 0 and 1 for ResNetTrainer, fold 0 for SAMBoxTrainer
    labels = {"1": "PZ", "2": "CG"}
    for fold, (a, b) in ((0, (0.6, 0.8)), (1, (0.7, 0.9))):
        cm = {"1": {"Dice": a, "NSD": a - 0.1, "n_cases": 2}, "2": {"Dice": b, "NSD": b - 0.1, "n_cases": 2}}
        s = fake_summary({"A": ((a + b) / 2, (a + b) / 2 - 0.1)}, labels=labels, class_means=cm)
        write(res, "ResNetTrainer", fold, "validation", s)
    cm = {"1": {"Dice": 0.5, "NSD": 0.4, "n_cases": 2}, "2": {"Dice": 0.95, "NSD": 0.9, "n_cases": 2}}
    write(res, "SAMBoxTrainer", 0, "validation", fake_summary({"A": (0.725, 0.65)}, labels=labels, class_means=cm))
    return res


def test_domain_holdout_table_rows_columns_values_and_best(fake_tree):
    r = build_report(777)
    dice, nsd = r["tables"]["domain_holdout_dice"], r["tables"]["domain_holdout_nsd"]
    assert dice.rows == ["ResNetTrainer", "SAMBoxTrainer", "SAMBoxTrainer (full_box)", "SAMBoxTrainer (gt_box)"]
    assert dice.columns == ["A → rest", "B → rest", "AVG"]
    assert dice.value("ResNetTrainer", "A → rest") == pytest.approx((0.6 + 0.8) / 2)
    assert dice.value("ResNetTrainer", "B → rest") == pytest.approx((0.5 + 0.7) / 2)
    assert dice.value("ResNetTrainer", "AVG") == pytest.approx((0.7 + 0.6) / 2)
    assert nsd.value("ResNetTrainer", "A → rest") == pytest.approx((0.5 + 0.7) / 2)
    assert dice.value("SAMBoxTrainer (gt_box)", "A → rest") == pytest.approx(0.9)
    assert math.isnan(dice.value("SAMBoxTrainer", "B → rest"))
    assert dice.best["A → rest"] == {"SAMBoxTrainer (gt_box)"}
    assert dice.best["B → rest"] == {"ResNetTrainer"} and dice.best["AVG"] == {"ResNetTrainer"}
    md = (r["output_folder"] / "report.md").read_text()
    assert "| SAMBoxTrainer (gt_box) | **0.9000** |" in md
    assert "| ResNetTrainer | 0.7000 | **0.6000** | **0.6500** |" in md  # best AVG among complete rows
    assert "| SAMBoxTrainer (gt_box) | **0.9000** | – | 0.9000 (1/2) |" in md
    # SAMBoxTrainer has a missing prediction: marked and listed, its domain_B fold listed as not evaluated
    assert "0.7000*" in md
    assert "| SAMBoxTrainer | domain_A | test | cX |" in md
    assert "| SAMBoxTrainer | domain_B | validation | not evaluated" in md
    assert "| SAMBoxTrainer | domain_B | test | not evaluated" in md
    with open(r["output_folder"] / "report.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    cell = next(x for x in rows if x["table"] == "domain_holdout_dice" and x["trainer"] == "SAMBoxTrainer (gt_box)"
                and x["column"] == "A → rest")
    assert float(cell["value"]) == pytest.approx(0.9) and cell["best"] == "1"
    assert any(x["table"] == "missing_prediction" and x["value"] == "cX" for x in rows)
    for name in ("domain_holdout_dice", "domain_holdout_nsd", "five_fold_dice", "five_fold_nsd",
                 "case_dice_by_domain"):
        with Image.open(r["output_folder"] / f"{name}.png") as im:
            assert im.format == "PNG" and im.size[0] >= 600


def test_missing_as_zero_uses_the_other_means(fake_tree):
    t = build_report(777, missing_as_zero=True, charts=False)["tables"]["domain_holdout_dice"]
    assert t.value("SAMBoxTrainer", "A → rest") == pytest.approx((0.35 + 0.7) / 2)  # domain B halved in the fake


def test_five_fold_table_mean_std(fake_tree):
    r = build_report(777, charts=False)
    t = r["tables"]["five_fold_dice"]
    assert t.columns == ["PZ (1)", "CG (2)", "foreground mean"]
    assert t.rows == ["ResNetTrainer", "SAMBoxTrainer"]
    assert t.value("ResNetTrainer", "PZ (1)") == pytest.approx(0.65)
    assert t.std["ResNetTrainer"]["PZ (1)"] == pytest.approx(np.std([0.6, 0.7], ddof=1))
    assert t.n["ResNetTrainer"]["PZ (1)"] == 2
    assert t.best["CG (2)"] == {"SAMBoxTrainer"} and t.best["PZ (1)"] == {"ResNetTrainer"}
    assert r["tables"]["five_fold_nsd"].value("ResNetTrainer", "CG (2)") == pytest.approx(0.75)
    assert "0.6500 ± 0.0707" in r["markdown"] and "**0.9500 (1 fold)**" in r["markdown"]


def test_cli_default_output_folder_and_unknown_dataset(fake_tree, capsys):
    assert main(["-d", "777"]) == 0
    assert (fake_tree / DS / "report" / "report.md").is_file()
    assert "A → rest" in capsys.readouterr().out
    assert main(["-d", "778"]) == 2


# --------------------------------------------------------------------------- the trained tree


@pytest.fixture
def trained(tmp_path_factory, monkeypatch):
    with trained_tree.single_thread():
        yield trained_tree.use(tmp_path_factory, monkeypatch)


def _cell_by_hand(summary_file, source):
    """Mean over target domains of (mean over labels of (mean over cases of Dice))."""
    s = json.loads(summary_file.read_text())
    by_dom = {}
    for row in s["metric_per_case"]:
        by_dom.setdefault(row["domain"], []).append(row["metrics"])
    dom_means = []
    for dom, ms in by_dom.items():
        assert dom != source
        per_label = [np.nanmean([np.nan if m[lab]["Dice"] is None else m[lab]["Dice"] for m in ms]) for lab in ms[0]]
        dom_means.append(np.nanmean(per_label))
    return float(np.mean(dom_means))


def test_report_on_trained_tree(trained, tmp_path):
    out = tmp_path / "rep"
    assert main(["-d", "650", "-o", str(out)]) == 0
    r = build_report(650, out, charts=False)
    t = r["tables"]["domain_holdout_dice"]
    assert t.rows == ["ResNetTrainer"] and t.columns == ["A → rest", "B → rest", "AVG"]
    folder = trained_tree.model_folder(trained)
    for dom in ("A", "B"):
        expect = _cell_by_hand(folder / f"fold_domain_{dom}" / "test" / "summary.json", dom)
        assert t.value("ResNetTrainer", f"{dom} → rest") == pytest.approx(expect, abs=1e-9)
    ff = r["tables"]["five_fold_dice"]
    s0 = json.loads((folder / "fold_0" / "validation" / "summary.json").read_text())
    assert ff.value("ResNetTrainer", "foreground mean") == pytest.approx(s0["foreground_mean"]["Dice"])
    assert not r["missing"] and not r["tree"].not_evaluated
    assert {p.name for p in out.iterdir()} >= {"report.md", "report.csv", "domain_holdout_dice.png",
                                                "case_dice_by_domain.png", "five_fold_dice.png"}


def test_missing_prediction_listed_on_trained_tree(trained, tmp_path, monkeypatch):
    from samunet.evaluation.evaluate import evaluate_folder

    res = tmp_path / "results"
    shutil.copytree(trained["results"], res, ignore=shutil.ignore_patterns("*.pth", "report"))
    monkeypatch.setenv("SAMUNET_results", str(res))
    test = res / trained_tree.DATASET / "ResNetTrainer__samunetPlans" / "fold_domain_A" / "test"
    old = json.loads((test / "summary.json").read_text())
    cases = sorted(r["case"] for r in old["metric_per_case"])
    (test / f"{cases[0]}.nii.gz").unlink()
    dj = json.loads((trained["raw"] / trained_tree.DATASET / "dataset.json").read_text())
    evaluate_folder(trained["raw"] / trained_tree.DATASET / "labelsTr", test, dj, cases=cases)
    shutil.rmtree(res / trained_tree.DATASET / "ResNetTrainer__samunetPlans" / "fold_0" / "validation")
    r = build_report(650, charts=False)
    assert [m["case"] for m in r["missing"]] == [cases[0]]
    assert f"| ResNetTrainer | domain_A | test | {cases[0]} |" in r["markdown"]
    assert "A → rest" in r["tables"]["domain_holdout_dice"].flagged["ResNetTrainer"]
    assert any(d["fold"] == "0" and d["split"] == "validation" for d in collect_results(650).not_evaluated)
    assert "| ResNetTrainer | 0 | validation | not evaluated" in r["markdown"]
