"""samunet_report's modules: pure tables, rendering, HTML; report.py keeps the entry point and the old names."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import samunet.evaluation.report as report
from samunet.evaluation import report_html, report_render, report_tables

PACKAGE = Path(report.__file__).parent


def test_tables_module_is_pure():
    """Collecting and the tables need neither matplotlib nor torch; importing report.py draws nothing either."""
    code = ("import sys, samunet.evaluation.report_tables, samunet.evaluation.report; "
            "print(sorted(m for m in ('matplotlib', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_report_reexports_the_moved_names():
    for mod, names in ((report_tables, ("collect_results", "Table", "ResultsTree", "Evaluation", "ReportError",
                                        "domain_holdout_tables", "five_fold_tables", "case_dice_by_domain",
                                        "missing_predictions", "row_label", "domain_of_fold", "source_column",
                                        "METRICS", "FIVE_FOLDS")),
                       (report_render, ("table_markdown", "bar_chart", "box_plot", "_csv_rows", "_fmt")),
                       (report_html, ("write_html", "table_html"))):
        for name in names:
            assert getattr(report, name) is getattr(mod, name), name
    assert callable(report.main) and callable(report.build_report)
    with open(PACKAGE.parents[1] / "pyproject.toml", "rb") as f:
        assert tomllib.load(f)["project"]["scripts"]["samunet_report"] == "samunet.evaluation.report:main"


def test_no_report_module_over_450_lines():
    for f in sorted(PACKAGE.glob("report*.py")):
        assert len(f.read_text(encoding="utf-8").splitlines()) <= 450, f.name
