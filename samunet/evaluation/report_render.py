"""Rendering of ``samunet_report``'s tables (:mod:`samunet.evaluation.report_tables`): the markdown
report, the long-form CSV and the PNG charts (matplotlib, imported only when a chart is drawn)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from samunet.evaluation.report_tables import ResultsTree, Table, cell_text, format_value, row_label
from samunet.utilities.file_io import atomic_path

_fmt = format_value  # the name report.py had


def table_markdown(t: Table) -> str:
    if not t.rows:
        return "_no results_\n"
    lines = ["| " + " | ".join(["trainer"] + t.columns) + " |", "|" + "---|" * (len(t.columns) + 1)]
    for r in t.rows:
        cells = []
        for c in t.columns:
            s = cell_text(t, r, c)
            if r in t.best.get(c, set()):
                s = f"**{s}**"
            cells.append(s)
        lines.append("| " + " | ".join([r] + cells) + " |")
    return "\n".join(lines) + "\n"


def _csv_rows(table_name: str, t: Table) -> list[list]:
    out = []
    for r in t.rows:
        for c in t.columns:
            v = t.value(r, c)
            std = t.std.get(r, {}).get(c, math.nan)
            out.append([table_name, t.metric, r, c, "" if math.isnan(v) else f"{v:.6f}",
                        "" if math.isnan(std) else f"{std:.6f}", t.n.get(r, {}).get(c, ""),
                        int(r in t.best.get(c, set())), int(c in t.flagged.get(r, set()))])
    return out


def _save_fig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def bar_chart(t: Table, path: Path) -> Path | None:
    if not t.rows or not t.columns:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(t.rows), len(t.columns)
    width = 0.8 / n_rows
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * n_cols + 2), 4.5))
    x = np.arange(n_cols)
    for i, r in enumerate(t.rows):
        vals = np.array([t.value(r, c) for c in t.columns], dtype=float)
        err = np.array([t.std.get(r, {}).get(c, math.nan) for c in t.columns], dtype=float) if t.std else None
        if err is not None:
            err = np.where(np.isnan(err), 0.0, err)
        ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(vals), width, yerr=err, capsize=3, label=r)
    ax.set_xticks(x)
    ax.set_xticklabels(t.columns, rotation=20 if n_cols > 4 else 0, ha="right" if n_cols > 4 else "center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(t.metric)
    ax.set_title(t.title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    _save_fig(fig, path)
    return path


def box_plot(data: dict[str, dict[str, list[float]]], path: Path) -> Path | None:
    if not data:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(data)
    domains = sorted({d for r in rows for d in data[r]})
    n = len(rows)
    width = 0.8 / n
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 * len(domains) + 2), 4.5))
    for i, r in enumerate(rows):
        pos, vals = [], []
        for j, d in enumerate(domains):
            if data[r].get(d):
                pos.append(j - 0.4 + width * (i + 0.5))
                vals.append(data[r][d])
        if not vals:
            continue
        color = colors[i % len(colors)]
        bp = ax.boxplot(vals, positions=pos, widths=width * 0.9, patch_artist=True, manage_ticks=False,
                        showfliers=False, medianprops={"color": "black"})
        for b in bp["boxes"]:
            b.set_facecolor(color)
            b.set_alpha(0.6)
        for p, v in zip(pos, vals):  # every case as a dot: boxes of a few cases hide them
            ax.scatter(np.full(len(v), p), v, s=10, color=color, edgecolors="black", linewidths=0.4, zorder=3)
        ax.plot([], [], color=colors[i % len(colors)], lw=6, alpha=0.6, label=r)
    ax.set_xticks(range(len(domains)))
    ax.set_xticklabels(domains)
    ax.set_xlabel("target domain (test cases of the domain folds)")
    ax.set_ylabel("case Dice (foreground mean)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Case Dice per target domain", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    _save_fig(fig, path)
    return path


def write_charts(tables: dict[str, Table], case_dice: dict[str, dict[str, list[float]]], out: Path) -> dict[str, Path]:
    """``<out>/<table name>.png`` per table and ``case_dice_by_domain.png``; ``{name: file}`` of those
    written (a table without rows has no chart)."""
    written = {}
    for name, t in tables.items():
        p = bar_chart(t, out / f"{name}.png")
        if p:
            written[name] = p
    p = box_plot(case_dice, out / "case_dice_by_domain.png")
    if p:
        written["case_dice_by_domain"] = p
    return written


def _tables_md(tables: dict[str, Table], charts: dict[str, Path], names) -> list[str]:
    """One ``###`` section per table: its markdown and, when drawn, its chart."""
    md = []
    for name in names:
        t = tables[name]
        md += [f"### {t.metric}", "", table_markdown(t)]
        if name in charts:
            md += [f"![{t.title}]({charts[name].name})", ""]
    return md


def report_markdown(tree: ResultsTree, tables: dict[str, Table], missing: list[dict], charts: dict[str, Path],
                    missing_as_zero: bool = False) -> str:
    """The text of report.md (charts linked by file name, beside it)."""
    which = "counting a missing case as Dice 0 / NSD 0" if missing_as_zero else "over the evaluated cases"
    md = [f"# samunet report: {tree.dataset_name}", "",
          f"Results folder: `{tree.folder}`. {len(tree.evaluations)} summary.json files read. "
          f"Means are {which}; `*` marks a value from a summary with missing predictions (listed below). "
          "**Bold**: best of the column.", ""]
    md += ["## Domain hold-out", "",
           "Rows: trainers (and prompt modes); columns: the source domain the fold was trained on; cell: mean over the "
           "target domains of the per-domain foreground mean (from `fold_domain_<A>/test*/summary.json`); AVG: mean of "
           "the row.", ""]
    md += _tables_md(tables, charts, ("domain_holdout_dice", "domain_holdout_nsd"))
    if "case_dice_by_domain" in charts:
        md += ["### Case Dice per target domain", "", "![case Dice per domain](case_dice_by_domain.png)", ""]
    md += ["## Five-fold cross-validation", "",
           "Folds 0-4, `validation*/summary.json`: mean ± sample standard deviation over the folds of the per-fold "
           "means, per class.", ""]
    md += _tables_md(tables, charts, ("five_fold_dice", "five_fold_nsd"))
    md += ["## Cases missing a prediction", ""]
    if missing:
        md += ["| trainer | fold | split | case |", "|---|---|---|---|"]
        md += [f"| {m['trainer']} | {m['fold']} | {m['split']} | {m['case']} |" for m in missing]
    else:
        md += ["None: every reference case has a prediction."]
    md += ["", "## Not evaluated", ""]
    if tree.not_evaluated or tree.unreadable:
        md += ["| trainer | fold | split | reason |", "|---|---|---|---|"]
        md += [f"| {r['trainer']} | {r['fold']} | {r['split']} | {r['reason']} |" for r in not_evaluated_rows(tree)]
    else:
        md += ["Every fold found has its summary.json files."]
    md.append("")
    return "\n".join(md)


def not_evaluated_rows(tree: ResultsTree) -> list[dict]:
    """The "Not evaluated" list: ``{trainer, fold, split, reason}`` per fold/split without a readable summary."""
    rows = [{"trainer": row_label(d["trainer"], d["plans"], None), "fold": d["fold"], "split": d["split"],
             "reason": f"not evaluated: {d['reason']}"} for d in tree.not_evaluated]
    rows += [{"trainer": row_label(d["trainer"], d["plans"], None), "fold": d["fold"], "split": d["split"],
              "reason": f"unreadable summary: {d['reason']}"} for d in tree.unreadable]
    return rows


def write_csv(path: Path, tree: ResultsTree, tables: dict[str, Table], missing: list[dict]) -> Path:
    """report.csv: every table cell in long form, then the missing cases and the folds not evaluated."""
    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["table", "metric", "trainer", "column", "value", "std", "n", "best", "missing_predictions"])
            for name, t in tables.items():
                w.writerows(_csv_rows(name, t))
            for m in missing:
                w.writerow(["missing_prediction", "", m["trainer"], f"{m['fold']}/{m['split']}", m["case"], "", "", "",
                            1])
            for d in tree.not_evaluated:
                w.writerow(["not_evaluated", "", row_label(d["trainer"], d["plans"], None), f"{d['fold']}/{d['split']}",
                            d["reason"], "", "", "", ""])
    return path
