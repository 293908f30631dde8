"""The data of ``samunet_report``: results collected from every ``summary.json`` and the tables
built from them. Pure data and text formatting, no matplotlib: :mod:`samunet.evaluation.report_render`
turns them into markdown, CSV and charts, :mod:`samunet.evaluation.report_html` into ``report.html``.
See :mod:`samunet.evaluation.report` for what the tables hold.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from samunet.experiment_planning.planner import DEFAULT_PLANS_NAME
from samunet.paths import results_root
from samunet.utilities.dataset_name import resolve_dataset
from samunet.utilities.file_io import load_json

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


UNASSIGNED = "unassigned"


# --------------------------------------------------------------------------- cell text


def format_value(v: float, std: float | None = None) -> str:
    if v is None or math.isnan(v):
        return "–"
    s = f"{v:.4f}"
    if std is not None and not math.isnan(std):
        s += f" ± {std:.4f}"
    return s


def cell_text(t: Table, row: str, col: str) -> str:
    """The text of a cell as both report.md and report.html show it (without the best marking):
    ``0.7000``, ``0.6500 ± 0.0707``, ``0.9500 (1 fold)``, ``0.9000 (1/2)``, ``*`` for missing
    predictions, ``–`` when absent."""
    s = format_value(t.value(row, col), t.std.get(row, {}).get(col) if t.std else None)
    if t.std and t.n.get(row, {}).get(col) == 1:
        s += " (1 fold)"
    if col == "AVG" and 0 < t.n.get(row, {}).get("AVG", 0) < len(t.columns) - 1:
        s += f" ({t.n[row]['AVG']}/{len(t.columns) - 1})"
    if col in t.flagged.get(row, set()) and s != "–":
        s += "*"
    return s


# --------------------------------------------------------------------------- per domain


def section_evaluations(tree: ResultsTree) -> list[Evaluation]:
    """The evaluations the per-domain sections are built from: the test splits of the domain
    folds (every prompt mode) when there are any, else every validation split."""
    evs = [e for e in tree.evaluations if e.split == "test" and domain_of_fold(e.fold) is not None]
    return evs or [e for e in tree.evaluations if e.split == "validation"]


def _section_column(e: Evaluation) -> str:
    src = domain_of_fold(e.fold)
    return source_column(src) if src is not None and e.split == "test" else f"fold {e.fold}"


def _case_domain(e: Evaluation, case: str) -> str:
    for d, agg in (e.summary.get("per_domain") or {}).items():
        if case in (agg.get("missing_predictions") or []):
            return d
    return UNASSIGNED


def per_domain_tables(tree: ResultsTree, missing_as_zero: bool = False) -> dict[str, tuple[Table, Table]]:
    """``{target domain: (Dice table, NSD table)}``: rows as in the other tables, one column per
    fold of :func:`section_evaluations` (``A → rest`` for a domain fold, ``fold 0`` otherwise);
    a cell is that summary's ``per_domain[domain].foreground_mean`` (the overall foreground mean
    under ``unassigned`` when the summary has no domains)."""
    evs = section_evaluations(tree)
    rows = _row_order({(e.trainer, e.plans, e.mode) for e in evs})
    per: dict[str, list[tuple[Evaluation, str, dict]]] = {}
    for e in evs:
        pd = e.summary.get("per_domain") or {UNASSIGNED: e.summary}
        for d, agg in pd.items():
            if d != domain_of_fold(e.fold) or e.split != "test":
                per.setdefault(d, []).append((e, _section_column(e), agg))
    out = {}
    for d in sorted(per):
        cols = sorted({c for _, c, _ in per[d]})
        d_rows = [r for r in rows if any(e.row == r for e, _, _ in per[d])]
        pair = []
        for metric in METRICS:
            t = Table(f"Target domain {d}: foreground mean {metric}", metric, d_rows, cols, {})
            for e, col, agg in per[d]:
                t.cells.setdefault(e.row, {})[col] = _fg(agg, metric, missing_as_zero)
                t.n.setdefault(e.row, {})[col] = 1
                if agg.get("missing_predictions"):
                    t.flagged.setdefault(e.row, set()).add(col)
            t.mark_best()
            pair.append(t)
        out[d] = (pair[0], pair[1])
    return out


@dataclass
class CaseRef:
    """One case of one evaluation, for an overlay thumbnail."""

    evaluation: Evaluation
    case: str
    domain: str
    dice: float  # foreground mean Dice of the case; NaN when missing or empty
    missing: bool = False

    @property
    def prediction_folder(self) -> Path:
        return self.evaluation.path.parent


def worst_cases_by_domain(tree: ResultsTree, limit: int = 6) -> dict[str, list[CaseRef]]:
    """``{domain: [CaseRef]}``: per target domain the ``limit`` worst cases over every evaluation of
    :func:`section_evaluations`: cases without prediction first, then by Dice, lowest first
    (cases where every label is absent from both masks last)."""
    per: dict[str, list[CaseRef]] = {}
    for e in section_evaluations(tree):
        for c in e.summary.get("missing_predictions") or []:
            d = _case_domain(e, c)
            per.setdefault(d, []).append(CaseRef(e, c, d, math.nan, missing=True))
        for r in e.summary.get("metric_per_case", []):
            v = _nanmean([_num(m["Dice"]) for m in r["metrics"].values()])
            d = r.get("domain") or UNASSIGNED
            per.setdefault(d, []).append(CaseRef(e, r["case"], d, v))

    def key(c: CaseRef):
        return (not c.missing, math.isnan(c.dice), 0.0 if math.isnan(c.dice) else c.dice, c.evaluation.row,
                c.evaluation.fold, c.case)

    return {d: sorted(per[d], key=key)[: max(0, int(limit))] for d in sorted(per)}
