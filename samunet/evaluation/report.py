"""``samunet_report``: one readable report of every trained trainer x fold of a dataset.

Reads every ``summary.json`` under ``SAMUNET_results/DatasetXXX/<Trainer>__<plans>/fold_<f>/<split>/``
(``split`` is ``validation``, ``test``, ``validation_<mode>`` or ``test_<mode>``; SAM trainers
write one ``<split>_<mode>`` folder per oracle/ablation prompt mode such as ``gt_box``) and
writes, into ``SAMUNET_results/DatasetXXX/report/`` (or ``-o``):

* ``report.md``: the tables below, the charts, the cases missing a prediction and the folds
  that were not evaluated;
* ``report.csv``: every number of the tables in long form (one row per table cell);
* PNG charts: a grouped bar chart per table and per-domain box plots of case Dice;
* with ``--html``, ``report.html``: one self-contained page (charts and overlay thumbnails embedded,
  no external resources) with the tables, the charts and a section per target domain with the
  overlays of its worst cases (:mod:`samunet.evaluation.report_html`).

Tables:

**Domain hold-out** (the papers' form): one row per trainer, plus one per prompt mode
(``SAMBoxTrainer (gt_box)``) when ``test_<mode>`` folders exist; one column per source
domain ``A → rest`` (fold ``domain_A``), plus ``AVG``. A cell is the mean over the target
domains of the per-domain foreground mean Dice (NSD in the second table) of that fold's
``test/summary.json``: ``mean_d(per_domain[d].foreground_mean)``. ``AVG`` is the mean of
the row's cells (``(k/N)`` when only k of the N source domains have a value). The best value of
each column is marked (bold in markdown, ``best`` column in the CSV); for ``AVG`` only rows with
every source domain compete, unless no row has them all.

**Five-fold cross-validation**: folds ``0..4`` (``validation/summary.json``), per trainer (and
prompt mode) and class: mean ± sample standard deviation over the folds of the fold means.

Cases without a prediction are never silently dropped: by default the means are over the
evaluated cases (as ``mean``/``foreground_mean`` in summary.json); the cells affected are
marked ``*`` and every missing case is listed. ``--missing_as_zero`` uses the
``*_with_missing_as_0`` means instead (missing case = Dice 0, NSD 0).

The code: :mod:`~samunet.evaluation.report_tables` (collecting and the tables, pure data),
:mod:`~samunet.evaluation.report_render` (markdown, CSV, charts), :mod:`~samunet.evaluation.report_html`;
their public names are re-exported here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from samunet.evaluation.report_html import DEFAULT_THUMBNAILS, THUMBNAIL_WIDTH, table_html, write_html
from samunet.evaluation.report_render import (
    _csv_rows,
    _fmt,
    _save_fig,
    bar_chart,
    box_plot,
    not_evaluated_rows,
    report_markdown,
    table_markdown,
    write_charts,
    write_csv,
)
from samunet.evaluation.report_tables import (
    _FOLD,
    _SPLIT,
    FIVE_FOLDS,
    METRICS,
    CaseRef,
    Evaluation,
    ReportError,
    ResultsTree,
    Table,
    _fg,
    _nanmean,
    _num,
    _row_order,
    case_dice_by_domain,
    cell_text,
    collect_results,
    domain_holdout_tables,
    domain_of_fold,
    five_fold_tables,
    format_value,
    missing_predictions,
    per_domain_tables,
    row_label,
    section_evaluations,
    source_column,
    worst_cases_by_domain,
)
from samunet.utilities.file_io import atomic_path

__all__ = [
    "FIVE_FOLDS", "METRICS", "CaseRef", "Evaluation", "ReportError", "ResultsTree", "Table", "bar_chart", "box_plot",
    "build_report", "case_dice_by_domain", "cell_text", "collect_results", "domain_holdout_tables", "domain_of_fold",
    "five_fold_tables", "format_value", "main", "missing_predictions", "not_evaluated_rows", "per_domain_tables",
    "report_markdown", "row_label", "section_evaluations", "source_column", "table_html", "table_markdown",
    "worst_cases_by_domain", "write_charts", "write_csv", "write_html",
]
_PRIVATE_REEXPORTS = (_FOLD, _SPLIT, _csv_rows, _fg, _fmt, _nanmean, _num, _row_order, _save_fig)  # old names


def build_report(dataset: str | int, output_folder: str | Path | None = None, missing_as_zero: bool = False,
                 charts: bool = True, html: bool = False, thumbnails: int = DEFAULT_THUMBNAILS,
                 thumbnail_width: int = THUMBNAIL_WIDTH) -> dict:
    """Collect every summary.json of ``dataset`` and write report.md, report.csv and the charts
    (and report.html with ``html``: ``thumbnails`` overlays per target domain, 0 for none).

    Returns ``{"tree", "tables": {name: Table}, "missing", "files": [...], "markdown", "output_folder",
    "html"}`` (``html``: the report.html written, or None).
    """
    tree = collect_results(dataset)
    out = Path(output_folder) if output_folder is not None else tree.folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    dh_dice, dh_nsd = domain_holdout_tables(tree, missing_as_zero)
    ff_dice, ff_nsd = five_fold_tables(tree, missing_as_zero)
    tables = {"domain_holdout_dice": dh_dice, "domain_holdout_nsd": dh_nsd,
              "five_fold_dice": ff_dice, "five_fold_nsd": ff_nsd}
    missing = missing_predictions(tree)
    charts_written = write_charts(tables, case_dice_by_domain(tree), out) if charts else {}
    markdown = report_markdown(tree, tables, missing, charts_written, missing_as_zero)
    with atomic_path(out / "report.md", suffix=".md") as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    write_csv(out / "report.csv", tree, tables, missing)
    files = [out / "report.md", out / "report.csv"]
    html_file = None
    if html:
        html_file = write_html(out / "report.html", tree, tables, missing, charts_written,
                               per_domain_tables(tree, missing_as_zero), worst_cases_by_domain(tree, thumbnails),
                               missing_as_zero=missing_as_zero, thumbnail_width=thumbnail_width)
        files.append(html_file)
    files += list(charts_written.values())
    return {"tree": tree, "tables": tables, "missing": missing, "files": files, "markdown": markdown,
            "output_folder": out, "html": html_file}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="samunet_report",
        description="Domain-hold-out and five-fold tables, charts and missing cases from every summary.json "
        "of a dataset's results.")
    p.add_argument("-d", "--dataset", required=True, help="dataset ID (501) or name")
    p.add_argument("-o", "--output", default=None,
                   help="output folder (default: SAMUNET_results/DatasetXXX_Name/report/)")
    p.add_argument("--missing_as_zero", action="store_true",
                   help="count a case without prediction as Dice 0 / NSD 0 (default: mean over evaluated cases, "
                        "affected cells marked *)")
    p.add_argument("--no_charts", action="store_true",
                   help="write report.md and report.csv only (and report.html without charts with --html)")
    p.add_argument("--html", action="store_true",
                   help="also write report.html: one self-contained page (no network needed) with the tables, the "
                        "charts and per target domain the overlays of its worst cases")
    p.add_argument("--thumbnails", type=int, default=DEFAULT_THUMBNAILS, metavar="N",
                   help="with --html: overlay thumbnails per target domain, worst Dice first (default %(default)s; "
                        "0: none)")
    args = p.parse_args(argv)
    if args.thumbnails < 0:
        p.error("--thumbnails must be >= 0")
    try:
        r = build_report(args.dataset, args.output, args.missing_as_zero, charts=not args.no_charts, html=args.html,
                         thumbnails=args.thumbnails)
    except (ReportError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(r["markdown"])
    print(f"report written to {r['output_folder']}: " + ", ".join(f.name for f in r["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
