"""Cross-validation and domain-hold-out splits, made once at planning time.

- ``splits_final.json`` (nnU-Net's schema): a list of ``{"train": [...], "val": [...]}``,
  five folds by case (fewer when the dataset has fewer than five cases).
- ``splits_domains.json``: ``{"domain_<name>": {"train", "val", "test"}}``: train on 80%
  of one domain, validate on the other 20% of it, test on every case of every other
  domain. Domains with fewer than two cases get no fold (reason logged).

Existing split files are never regenerated silently: if they no longer match the
dataset's cases, planning stops and says how to make new ones.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from samunet.utilities.file_io import load_json, save_json

logger = logging.getLogger(__name__)

SPLIT_SEED = 12345
DOMAIN_VAL_FRACTION = 0.2


class SplitsMismatchError(ValueError):
    pass


def five_fold_splits(cases: list[str], num_folds: int = 5, seed: int = SPLIT_SEED) -> list[dict]:
    cases = sorted(cases)
    if len(cases) < 2:
        raise ValueError(f"cross-validation needs at least 2 training cases, found {len(cases)}")
    k = min(num_folds, len(cases))
    if k < num_folds:
        logger.warning("only %d cases: making %d folds instead of %d", len(cases), k, num_folds)
    order = np.random.default_rng(seed).permutation(len(cases))
    folds = np.array_split(order, k)
    splits = []
    for i in range(k):
        val = sorted(cases[j] for j in folds[i])
        train = sorted(c for c in cases if c not in set(val))
        splits.append({"train": train, "val": val})
    return splits


def domain_fold_name(domain: str) -> str:
    return f"domain_{domain}"


def domain_holdout_splits(domains: dict[str, str], seed: int = SPLIT_SEED) -> tuple[dict, dict[str, str]]:
    """Return ``(splits, skipped)`` where ``skipped`` maps a domain to why it has no fold."""
    by_domain: dict[str, list[str]] = {}
    for case, dom in domains.items():
        by_domain.setdefault(dom, []).append(case)
    splits, skipped = {}, {}
    for dom in sorted(by_domain):
        members = sorted(by_domain[dom])
        if len(members) < 2:
            skipped[dom] = (
                f"domain {dom!r} has {len(members)} case: a domain fold needs at least 2 "
                "(one to train on, one to validate on)"
            )
            continue
        if len(by_domain) < 2:
            skipped[dom] = f"domain {dom!r} is the only domain: there is nothing to test on"
            continue
        rng = np.random.default_rng([seed, sum(map(ord, dom))])
        order = [members[i] for i in rng.permutation(len(members))]
        n_val = max(1, int(round(DOMAIN_VAL_FRACTION * len(members))))
        n_val = min(n_val, len(members) - 1)
        splits[domain_fold_name(dom)] = {
            "train": sorted(order[n_val:]),
            "val": sorted(order[:n_val]),
            "test": sorted(c for c, d in domains.items() if d != dom),
        }
    return splits, skipped


def _cases_in(splits) -> set[str]:
    if isinstance(splits, list):
        return {c for s in splits for c in s["train"] + s["val"]}
    return {c for s in splits.values() for c in s["train"] + s["val"] + s["test"]}


def make_or_check_splits(preprocessed_folder: Path, cases: list[str], domains: dict[str, str] | None, new_splits: bool = False) -> dict:
    """Write the split files if absent (or ``new_splits``); otherwise check they still
    match ``cases``. Returns ``{"folds": n, "domain_folds": [...], "skipped_domains": {...}}``."""
    preprocessed_folder = Path(preprocessed_folder)
    f_final = preprocessed_folder / "splits_final.json"
    f_dom = preprocessed_folder / "splits_domains.json"
    summary = {}
    if f_final.is_file() and not new_splits:
        existing = load_json(f_final)
        if _cases_in(existing) != set(cases):
            raise SplitsMismatchError(
                f"{f_final} was made for a different set of cases ({len(_cases_in(existing))} there, {len(cases)} now). "
                "Trained folds depend on it, so it is not replaced silently: rerun with --new_splits to make new splits."
            )
        splits = existing
    else:
        splits = five_fold_splits(cases)
        save_json(splits, f_final)
    summary["folds"] = len(splits)

    dsplits, skipped = ({}, {})
    if domains:
        dsplits, skipped = domain_holdout_splits(domains)
        for reason in skipped.values():
            logger.warning("no domain fold: %s", reason)
    if f_dom.is_file() and not new_splits:
        existing = load_json(f_dom)
        if existing != dsplits:
            if set(existing) != set(dsplits) or _cases_in(existing) != _cases_in(dsplits):
                raise SplitsMismatchError(
                    f"{f_dom} no longer matches the dataset's domains. Rerun with --new_splits to make new domain folds."
                )
        dsplits = existing
    elif domains:
        save_json(dsplits, f_dom)
    summary["domain_folds"] = sorted(dsplits)
    summary["skipped_domains"] = skipped
    return summary


def load_fold(preprocessed_folder: Path, fold: str | int) -> dict:
    """``{"train": [...], "val": [...], "test": [...]}`` for fold ``0..4``, ``all`` or ``domain_<name>``."""
    preprocessed_folder = Path(preprocessed_folder)
    fold = str(fold)
    if fold.startswith("domain_"):
        f = preprocessed_folder / "splits_domains.json"
        splits = load_json(f) if f.is_file() else {}
        if fold not in splits:
            why = ""
            dj = preprocessed_folder / "dataset.json"
            domains = (load_json(dj).get("domains") or {}) if dj.is_file() else {}
            reason = domain_holdout_splits(domains)[1].get(fold[len("domain_"):]) if domains else None
            if reason:
                why = f" because {reason}; add cases of that domain and rerun samunet_plan_and_preprocess --new_splits"
            raise KeyError(f"no fold {fold!r} in {f}{why}; available: "
                           f"{sorted(splits) or 'none (dataset.json has no domains)'}")
        return splits[fold]
    splits = load_json(preprocessed_folder / "splits_final.json")
    if fold == "all":
        cases = sorted(_cases_in(splits))
        return {"train": cases, "val": cases, "test": []}
    i = int(fold)
    if not 0 <= i < len(splits):
        raise KeyError(f"fold {i} does not exist; splits_final.json has folds 0..{len(splits) - 1}")
    return {"train": splits[i]["train"], "val": splits[i]["val"], "test": []}
