"""Cross-validation and domain-hold-out splits, made once at planning time.

- ``splits_final.json`` (nnU-Net's schema): a list of ``{"train": [...], "val": [...]}``,
  five folds by case (fewer when the dataset has fewer than five cases or groups).
- ``splits_domains.json``: ``{"domain_<name>": {"train", "val", "test"}}``: train on 80%
  of one domain, validate on the other 20% of it, test on every case of every other
  domain. Domains with fewer than two cases (groups) get no fold (reason logged).

``groups`` (dataset.json, ``{case: patient or sequence}``) keeps the cases of one group on
one side of every train/val split: slices of one patient or frames of one video are near
copies, and splitting them makes validation, and the best-checkpoint choice, optimistic.
A case without a group is a group of its own, so a dataset without groups gets exactly
the case-wise splits it always had.

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


def group_members(cases, groups: dict[str, str] | None) -> dict[tuple[str, str], list[str]]:
    """``{group key: sorted cases}``; a case without a group is keyed by itself.

    Keys are ``("group", name)`` or ``("case", case)`` so that a group named like an
    ungrouped case stays apart from it."""
    groups = groups or {}
    out: dict[tuple[str, str], list[str]] = {}
    for c in sorted(cases):
        key = ("group", groups[c]) if c in groups else ("case", c)
        out.setdefault(key, []).append(c)
    return out


def groups_across(side_a, side_b, groups: dict[str, str] | None) -> list[str]:
    """Names of the groups that have cases in both ``side_a`` and ``side_b`` (sorted)."""
    groups = groups or {}
    a = {groups[c] for c in side_a if c in groups}
    return sorted(a & {groups[c] for c in side_b if c in groups})


def group_k_fold(cases, groups: dict[str, str] | None, k: int, seed: int = SPLIT_SEED) -> list[list[str]]:
    """Deal whole groups into ``k`` folds, balanced by case count; returns each fold's cases.

    Largest group first, each to the fold with the fewest cases so far (ties: lower fold
    index); groups of equal size are taken in a seeded random order, so the result is
    reproducible but not alphabetical."""
    members = group_members(cases, groups)
    keys = sorted(members)
    rank = {keys[i]: r for r, i in enumerate(np.random.default_rng(seed).permutation(len(keys)))}
    folds: list[list[str]] = [[] for _ in range(k)]
    for key in sorted(keys, key=lambda g: (-len(members[g]), rank[g])):
        j = min(range(k), key=lambda i: (len(folds[i]), i))
        folds[j].extend(members[key])
    return [sorted(f) for f in folds]


def five_fold_splits(cases: list[str], num_folds: int = 5, seed: int = SPLIT_SEED,
                     groups: dict[str, str] | None = None) -> list[dict]:
    """Cross-validation folds; with ``groups`` every group's cases are in one fold's val only."""
    cases = sorted(cases)
    if len(cases) < 2:
        raise ValueError(f"cross-validation needs at least 2 training cases, found {len(cases)}")
    members = group_members(cases, groups)
    if len(members) < 2:
        raise ValueError(
            f"cross-validation needs at least 2 groups, but all {len(cases)} cases are in one group "
            f"({next(iter(members))[1]!r}) of dataset.json's groups: give the patients/sequences their own groups"
        )
    k = min(num_folds, len(members))
    if k < num_folds:
        what = "cases" if len(members) == len(cases) else "groups"
        logger.warning("only %d %s: making %d folds instead of %d", len(members), what, k, num_folds)
    if len(members) == len(cases):  # no multi-case group: the case-wise folds splits_final.json always had
        order = np.random.default_rng(seed).permutation(len(cases))
        folds = [[cases[j] for j in part] for part in np.array_split(order, k)]
    else:
        folds = group_k_fold(cases, groups, k, seed)
    splits = []
    for i in range(k):
        val = sorted(folds[i])
        train = sorted(set(cases) - set(val))
        splits.append({"train": train, "val": val})
    return splits


def domain_fold_name(domain: str) -> str:
    return f"domain_{domain}"


def _validation_groups(members: dict[tuple[str, str], list[str]], n_val: int, rng) -> list[str]:
    """Cases of whole groups, taken in a seeded order while they fit into ``n_val`` cases
    (at least one group: the smallest when none fits). Never all groups."""
    keys = sorted(members)
    order = [keys[i] for i in rng.permutation(len(keys))]
    val: list[str] = []
    for key in order:
        if len(val) + len(members[key]) <= n_val:
            val += members[key]
    if not val:
        val = list(members[min(order, key=lambda g: len(members[g]))])
    return val


def domain_holdout_splits(domains: dict[str, str], seed: int = SPLIT_SEED,
                          groups: dict[str, str] | None = None) -> tuple[dict, dict[str, str]]:
    """Return ``(splits, skipped)`` where ``skipped`` maps a domain to why it has no fold.

    The validation share of the training domain is carved out by group, so no group has
    cases in both train and val."""
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
        grouped = group_members(members, groups)
        if len(grouped) < 2:
            skipped[dom] = (
                f"domain {dom!r} has {len(members)} cases but all are in group {next(iter(grouped))[1]!r} "
                "(dataset.json groups): a domain fold needs at least 2 groups (one to train on, one to validate on)"
            )
            continue
        if len(by_domain) < 2:
            skipped[dom] = f"domain {dom!r} is the only domain: there is nothing to test on"
            continue
        rng = np.random.default_rng([seed, sum(map(ord, dom))])
        n_val = max(1, int(round(DOMAIN_VAL_FRACTION * len(members))))
        n_val = min(n_val, len(members) - 1)
        # with one case per group this takes the first n_val cases of the seeded order, as before groups
        val = _validation_groups(grouped, n_val, rng)
        splits[domain_fold_name(dom)] = {
            "train": sorted(set(members) - set(val)),
            "val": sorted(val),
            "test": sorted(c for c, d in domains.items() if d != dom),
        }
    return splits, skipped


def _cases_in(splits) -> set[str]:
    if isinstance(splits, list):
        return {c for s in splits for c in s["train"] + s["val"]}
    return {c for s in splits.values() for c in s["train"] + s["val"] + s["test"]}


def _group_leak_error(path: Path, where: str, leaks: list[str]) -> SplitsMismatchError:
    shown = ", ".join(leaks[:5]) + (f" and {len(leaks) - 5} more" if len(leaks) > 5 else "")
    return SplitsMismatchError(
        f"{path}: {where} has group(s) {shown} in both train and val (dataset.json's groups were added or "
        "changed after the splits were made), so validation sees near copies of training cases. Rerun with "
        "--new_splits to make group-wise splits (this changes what trained folds mean; retrain them)."
    )


def make_or_check_splits(preprocessed_folder: Path, cases: list[str], domains: dict[str, str] | None,
                         new_splits: bool = False, groups: dict[str, str] | None = None) -> dict:
    """Write the split files if absent (or ``new_splits``); otherwise check they still
    match ``cases`` (and keep ``groups`` together). Returns ``{"folds": n, "groups": n or None,
    "domain_folds": [...], "skipped_domains": {...}}``."""
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
        for i, s in enumerate(existing):
            leaks = groups_across(s["train"], s["val"], groups)
            if leaks:
                raise _group_leak_error(f_final, f"fold {i}", leaks)
        splits = existing
    else:
        splits = five_fold_splits(cases, groups=groups)
        save_json(splits, f_final)
    summary["folds"] = len(splits)
    summary["groups"] = len(group_members(cases, groups)) if groups else None

    dsplits, skipped = ({}, {})
    if domains:
        dsplits, skipped = domain_holdout_splits(domains, groups=groups)
        for reason in skipped.values():
            logger.warning("no domain fold: %s", reason)
    if f_dom.is_file() and not new_splits:
        existing = load_json(f_dom)
        if existing != dsplits:
            if set(existing) != set(dsplits) or _cases_in(existing) != _cases_in(dsplits):
                raise SplitsMismatchError(
                    f"{f_dom} no longer matches the dataset's domains. Rerun with --new_splits to make new domain folds."
                )
            for name, s in existing.items():
                leaks = groups_across(s["train"], s["val"], groups)
                if leaks:
                    raise _group_leak_error(f_dom, name, leaks)
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
            dj = load_json(dj) if dj.is_file() else {}
            domains = dj.get("domains") or {}
            reason = (domain_holdout_splits(domains, groups=dj.get("groups"))[1].get(fold[len("domain_"):])
                      if domains else None)
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
