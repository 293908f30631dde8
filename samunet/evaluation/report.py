"""``samunet_report``: one readable report of every trained trainer x fold of a dataset.

Reads every ``summary.json`` under ``SAMUNET_results/DatasetXXX/<Trainer>__<plans>/fold_<f>/<split>/``
(``split`` is ``validation``, ``test``, ``validation_<mode>`` or ``test_<mode>``; SAM trainers
write one ``<split>_<mode>`` folder per oracle/ablation prompt mode such as ``gt_box``) and
writes, into ``SAMUNET_results/DatasetXXX/report/`` (or ``-o``):

* ``report.md``: the tables below, the charts, the cases missing a prediction and the folds
  that were not evaluated;
* ``report.csv``: every number of the tables in long form (one row per table cell);
* PNG charts: a grouped bar chart per table and per-domain box plots of case Dice.

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
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from samunet.experiment_planning.planner import DEFAULT_PLANS_NAME
from samunet.paths import results_root
from samunet.utilities.dataset_name import resolve_dataset
from samunet.utilities.file_io import atomic_path, load_json

METRICS = ("Dice", "NSD")
_SPLIT = re.compile(r"^(validation|test)(?:_([A-Za-z0-9][A-Za-z0-9_\-]*))?$")
_FOLD = re.compile(r"^fold_(.+)$")
FIVE_FOLDS = ("0", "1", "2", "3", "4")


class ReportError(RuntimeError):
    pass


# --------------------------------------------------------------------------- collecting


@dataclass
class Evaluation:
    """One ``summary.json``: a trainer x fold x split (x prompt mode)."""

    trainer: str
    plans: str
    fold: str
    split: str  # "validation" or "test"
    mode: str | None  # None, or the prompt mode of a "<split>_<mode>" folder
    path: Path
    summary: dict

    @property
    def row(self) -> str:
        return row_label(self.trainer, self.plans, self.mode)


@dataclass
class ResultsTree:
    dataset_name: str
    folder: Path
    evaluations: list[Evaluation] = field(default_factory=list)
    not_evaluated: list[dict] = field(default_factory=list)  # {trainer, plans, fold, split, reason}
    unreadable: list[dict] = field(default_factory=list)


def row_label(trainer: str, plans: str, mode: str | None) -> str:
    name = trainer if plans == DEFAULT_PLANS_NAME else f"{trainer} [{plans}]"
    return name if mode is None else f"{name} ({mode})"


def collect_results(dataset: str | int) -> ResultsTree:
    """Every summary.json of the dataset, and every fold/split that has none."""
    name = resolve_dataset(dataset)
    folder = results_root() / name
    if not folder.is_dir():
        raise ReportError(f"no results for {name}: {folder} does not exist. Train a fold first (samunet_train).")
    tree = ResultsTree(name, folder)
    for model in sorted(p for p in folder.iterdir() if p.is_dir() and "__" in p.name):
        trainer, plans = model.name.split("__", 1)
        for fold_dir in sorted(p for p in model.iterdir() if p.is_dir() and _FOLD.match(p.name)):
            fold = _FOLD.match(fold_dir.name).group(1)
            split_dirs = sorted(p for p in fold_dir.iterdir() if p.is_dir() and _SPLIT.match(p.name))
            found = set()
            for sd in split_dirs:
                split, mode = _SPLIT.match(sd.name).groups()
                s = sd / "summary.json"
                base = {"trainer": trainer, "plans": plans, "fold": fold, "split": sd.name}
                if not s.is_file():
                    n_pred = sum(1 for f in sd.iterdir() if f.is_file() and not f.name.startswith("."))
                    tree.not_evaluated.append({**base, "reason": f"no summary.json in {sd} ({n_pred} files there)"})
                    continue
                try:
                    summary = load_json(s)
                    summary["foreground_mean"]  # noqa: B018 - a summary.json of samunet_evaluate
                except Exception as e:  # truncated or foreign file: listed, not fatal
                    tree.unreadable.append({**base, "reason": f"{s}: {type(e).__name__}: {e}"})
                    continue
                found.add(sd.name)
                tree.evaluations.append(Evaluation(trainer, plans, fold, split, mode, s, summary))
            expected = ["validation"] + (["test"] if fold.startswith("domain_") else [])
            for split in expected:
                if split not in found and not any(d["split"] == split and d["fold"] == fold and d["trainer"] == trainer
                                                  and d["plans"] == plans for d in tree.not_evaluated + tree.unreadable):
                    ckpt = (fold_dir / "checkpoint_final.pth").is_file()
                    reason = (f"no {split}/summary.json" + ("" if ckpt else "; no checkpoint_final.pth either (training "
                                                                                 "unfinished?)"))
                    tree.not_evaluated.append({"trainer": trainer, "plans": plans, "fold": fold, "split": split,
                                               "reason": reason})
    return tree


# --------------------------------------------------------------------------- tables


def _num(v) -> float:
    return math.nan if v is None else float(v)


def _nanmean(vals) -> float:
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def _fg(summary_or_agg: dict, metric: str, missing_as_zero: bool) -> float:
    key = "foreground_mean_with_missing_as_0" if missing_as_zero else "foreground_mean"
    return _num(summary_or_agg[key][metric])


def _row_order(rows) -> list[str]:
    """Trainer rows first, then their prompt-mode rows, alphabetical otherwise."""
    keyed = {}
    for trainer, plans, mode in rows:
        keyed[row_label(trainer, plans, mode)] = (trainer, plans, mode is not None, mode or "")
    return sorted(keyed, key=lambda r: keyed[r])


@dataclass
class Table:
    """``cells[row][column] = value`` (NaN when absent), with optional std / flags per cell."""

    title: str
    metric: str
    rows: list[str]
    columns: list[str]
    cells: dict
    std: dict = field(default_factory=dict)
    n: dict = field(default_factory=dict)
    flagged: dict = field(default_factory=dict)  # cells with missing predictions
    best: dict = field(default_factory=dict)  # column -> set of best rows

    def value(self, row: str, col: str) -> float:
        return self.cells.get(row, {}).get(col, math.nan)

    def mark_best(self) -> None:
        n_sources = len(self.columns) - 1
        for col in self.columns:
            vals = {r: self.value(r, col) for r in self.rows}
            vals = {r: v for r, v in vals.items() if not math.isnan(v)}
            if col == "AVG":  # an average over fewer source domains is not comparable: best among complete rows
                complete = {r: v for r, v in vals.items() if self.n.get(r, {}).get("AVG") == n_sources}
                vals = complete or vals
            if vals:
                top = max(vals.values())
                self.best[col] = {r for r, v in vals.items() if abs(v - top) <= 1e-12}


def domain_of_fold(fold: str) -> str | None:
    return fold[len("domain_"):] if fold.startswith("domain_") else None


def source_column(domain: str) -> str:
    return f"{domain} → rest"


def domain_holdout_tables(tree: ResultsTree, missing_as_zero: bool = False) -> tuple[Table, Table]:
    evs = [e for e in tree.evaluations if e.split == "test" and domain_of_fold(e.fold) is not None]
    domains = sorted({domain_of_fold(e.fold) for e in evs})
    cols = [source_column(d) for d in domains]
    rows = _row_order({(e.trainer, e.plans, e.mode) for e in evs})
    tables = []
    for metric in METRICS:
        t = Table(f"Domain hold-out: mean {metric} over the target domains", metric, rows, cols + ["AVG"], {})
        for e in evs:
            col = source_column(domain_of_fold(e.fold))
            per_domain = {d: a for d, a in (e.summary.get("per_domain") or {}).items() if d != domain_of_fold(e.fold)}
            if per_domain:
                v = _nanmean([_fg(a, metric, missing_as_zero) for a in per_domain.values()])
            else:  # no domains in the summary: the overall mean of the test cases
                v = _fg(e.summary, metric, missing_as_zero)
            t.cells.setdefault(e.row, {})[col] = v
            t.n.setdefault(e.row, {})[col] = len(per_domain) or 1
            if e.summary.get("missing_predictions"):
                t.flagged.setdefault(e.row, set()).add(col)
        for r in rows:
            vals = [t.value(r, c) for c in cols]
            present = [v for v in vals if not math.isnan(v)]
            t.cells.setdefault(r, {})["AVG"] = float(np.mean(present)) if present else math.nan
            t.n.setdefault(r, {})["AVG"] = len(present)
            if t.flagged.get(r):
                t.flagged[r].add("AVG")
        t.mark_best()
        tables.append(t)
    return tables[0], tables[1]


def five_fold_tables(tree: ResultsTree, missing_as_zero: bool = False) -> tuple[Table, Table]:
    evs = [e for e in tree.evaluations if e.split == "validation" and e.fold in FIVE_FOLDS]
    labels: dict[str, str] = {}
    for e in evs:
        for lab, name in (e.summary.get("labels") or {}).items():
            labels.setdefault(lab, name)
    label_keys = sorted(labels, key=lambda k: int(k) if k.lstrip("-").isdigit() else k)
    cols = [f"{labels[k]} ({k})" if labels[k] else k for k in label_keys] + ["foreground mean"]
    rows = _row_order({(e.trainer, e.plans, e.mode) for e in evs})
    mean_key = "mean_with_missing_as_0" if missing_as_zero else "mean"
    tables = []
    for metric in METRICS:
        t = Table(f"Five-fold cross-validation: {metric} (mean ± std over folds)", metric, rows, cols, {})
        per = {}  # (row, col) -> list of fold values
        for e in evs:
            for k, col in zip(label_keys, cols):
                m = (e.summary.get(mean_key) or {}).get(k)
                if m is not None:
                    per.setdefault((e.row, col), []).append(_num(m[metric]))
            per.setdefault((e.row, "foreground mean"), []).append(_fg(e.summary, metric, missing_as_zero))
            if e.summary.get("missing_predictions"):
                t.flagged.setdefault(e.row, set()).update(cols)
        for (r, c), vals in per.items():
            vals = [v for v in vals if not math.isnan(v)]
            t.cells.setdefault(r, {})[c] = float(np.mean(vals)) if vals else math.nan
            t.std.setdefault(r, {})[c] = float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan
            t.n.setdefault(r, {})[c] = len(vals)
        t.mark_best()
        tables.append(t)
    return tables[0], tables[1]


def case_dice_by_domain(tree: ResultsTree) -> dict[str, dict[str, list[float]]]:
    """``{row: {target domain: [case foreground Dice]}}`` from the test summaries of domain folds
    (a case's foreground Dice is the mean over its labels; cases where every label is absent
    from both masks are left out)."""
    out: dict[str, dict[str, list[float]]] = {}
    for e in tree.evaluations:
        if e.split != "test" or domain_of_fold(e.fold) is None:
            continue
        for r in e.summary.get("metric_per_case", []):
            v = _nanmean([_num(m["Dice"]) for m in r["metrics"].values()])
            if not math.isnan(v):
                out.setdefault(e.row, {}).setdefault(r.get("domain") or "unassigned", []).append(v)
    return out


def missing_predictions(tree: ResultsTree) -> list[dict]:
    rows = []
    for e in tree.evaluations:
        for case in e.summary.get("missing_predictions") or []:
            rows.append({"trainer": e.row, "fold": e.fold, "split": e.path.parent.name, "case": case,
                         "summary": str(e.path)})
    return rows


# --------------------------------------------------------------------------- output


def _fmt(v: float, std: float | None = None) -> str:
    if v is None or math.isnan(v):
        return "–"
    s = f"{v:.4f}"
    if std is not None and not math.isnan(std):
        s += f" ± {std:.4f}"
    return s


def table_markdown(t: Table) -> str:
    if not t.rows:
        return "_no results_\n"
    lines = ["| " + " | ".join(["trainer"] + t.columns) + " |", "|" + "---|" * (len(t.columns) + 1)]
    for r in t.rows:
        cells = []
        for c in t.columns:
            s = _fmt(t.value(r, c), t.std.get(r, {}).get(c) if t.std else None)
            if t.std and t.n.get(r, {}).get(c) == 1:
                s += " (1 fold)"
            if c == "AVG" and 0 < t.n.get(r, {}).get("AVG", 0) < len(t.columns) - 1:
                s += f" ({t.n[r]['AVG']}/{len(t.columns) - 1})"
            if c in t.flagged.get(r, set()) and s != "–":
                s += "*"
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


def build_report(dataset: str | int, output_folder: str | Path | None = None, missing_as_zero: bool = False,
                 charts: bool = True) -> dict:
    """Collect every summary.json of ``dataset`` and write report.md, report.csv and the charts.

    Returns ``{"tree", "tables": {name: Table}, "missing", "files": [...], "markdown"}``.
    """
    tree = collect_results(dataset)
    out = Path(output_folder) if output_folder is not None else tree.folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    dh_dice, dh_nsd = domain_holdout_tables(tree, missing_as_zero)
    ff_dice, ff_nsd = five_fold_tables(tree, missing_as_zero)
    tables = {"domain_holdout_dice": dh_dice, "domain_holdout_nsd": dh_nsd,
              "five_fold_dice": ff_dice, "five_fold_nsd": ff_nsd}
    missing = missing_predictions(tree)
    files = []
    charts_written = {}
    if charts:
        for name, t in tables.items():
            p = bar_chart(t, out / f"{name}.png")
            if p:
                charts_written[name] = p
        p = box_plot(case_dice_by_domain(tree), out / "case_dice_by_domain.png")
        if p:
            charts_written["case_dice_by_domain"] = p
    files += list(charts_written.values())

    which = "counting a missing case as Dice 0 / NSD 0" if missing_as_zero else "over the evaluated cases"
    md = [f"# samunet report: {tree.dataset_name}", "",
          f"Results folder: `{tree.folder}`. {len(tree.evaluations)} summary.json files read. "
          f"Means are {which}; `*` marks a value from a summary with missing predictions (listed below). "
          "**Bold**: best of the column.", ""]
    md += ["## Domain hold-out", "",
           "Rows: trainers (and prompt modes); columns: the source domain the fold was trained on; cell: mean over the "
           "target domains of the per-domain foreground mean (from `fold_domain_<A>/test*/summary.json`); AVG: mean of "
           "the row.", ""]
    for name in ("domain_holdout_dice", "domain_holdout_nsd"):
        t = tables[name]
        md += [f"### {t.metric}", "", table_markdown(t)]
        if name in charts_written:
            md += [f"![{t.title}]({charts_written[name].name})", ""]
    if "case_dice_by_domain" in charts_written:
        md += ["### Case Dice per target domain", "", "![case Dice per domain](case_dice_by_domain.png)", ""]
    md += ["## Five-fold cross-validation", "",
           "Folds 0-4, `validation*/summary.json`: mean ± sample standard deviation over the folds of the per-fold "
           "means, per class.", ""]
    for name in ("five_fold_dice", "five_fold_nsd"):
        t = tables[name]
        md += [f"### {t.metric}", "", table_markdown(t)]
        if name in charts_written:
            md += [f"![{t.title}]({charts_written[name].name})", ""]
    md += ["## Cases missing a prediction", ""]
    if missing:
        md += ["| trainer | fold | split | case |", "|---|---|---|---|"]
        md += [f"| {m['trainer']} | {m['fold']} | {m['split']} | {m['case']} |" for m in missing]
    else:
        md += ["None: every reference case has a prediction."]
    md += ["", "## Not evaluated", ""]
    if tree.not_evaluated or tree.unreadable:
        md += ["| trainer | fold | split | reason |", "|---|---|---|---|"]
        for d in tree.not_evaluated:
            md.append(f"| {row_label(d['trainer'], d['plans'], None)} | {d['fold']} | {d['split']} | "
                      f"not evaluated: {d['reason']} |")
        for d in tree.unreadable:
            md.append(f"| {row_label(d['trainer'], d['plans'], None)} | {d['fold']} | {d['split']} | "
                      f"unreadable summary: {d['reason']} |")
    else:
        md += ["Every fold found has its summary.json files."]
    md.append("")
    markdown = "\n".join(md)

    with atomic_path(out / "report.md", suffix=".md") as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    with atomic_path(out / "report.csv", suffix=".csv") as tmp:
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
    files = [out / "report.md", out / "report.csv"] + files
    return {"tree": tree, "tables": tables, "missing": missing, "files": files, "markdown": markdown,
            "output_folder": out}


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
    p.add_argument("--no_charts", action="store_true", help="write report.md and report.csv only")
    args = p.parse_args(argv)
    try:
        r = build_report(args.dataset, args.output, args.missing_as_zero, charts=not args.no_charts)
    except (ReportError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(r["markdown"])
    print(f"report written to {r['output_folder']}: " + ", ".join(f.name for f in r["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
