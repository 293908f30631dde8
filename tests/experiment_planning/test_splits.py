"""Five-fold and domain-hold-out splits."""

import json

import pytest

from samunet.experiment_planning.splits import (
    SplitsMismatchError,
    domain_holdout_splits,
    five_fold_splits,
    load_fold,
    make_or_check_splits,
)

CASES = [f"case_{i:02d}" for i in range(23)]
DOMAINS = {c: ("A" if i < 10 else "B" if i < 18 else "C" if i < 22 else "D") for i, c in enumerate(CASES)}


def test_five_folds_disjoint_and_cover():
    splits = five_fold_splits(CASES)
    assert len(splits) == 5
    vals = [set(s["val"]) for s in splits]
    for i in range(5):
        assert set(splits[i]["train"]).isdisjoint(vals[i])
        assert set(splits[i]["train"]) | vals[i] == set(CASES)
        for j in range(i + 1, 5):
            assert vals[i].isdisjoint(vals[j])
    assert set().union(*vals) == set(CASES)
    assert five_fold_splits(CASES) == splits  # seeded


def test_few_cases_give_fewer_folds():
    assert len(five_fold_splits(["a", "b", "c"])) == 3
    with pytest.raises(ValueError):
        five_fold_splits(["a"])


def test_domain_folds_never_test_on_source():
    splits, skipped = domain_holdout_splits(DOMAINS)
    assert set(splits) == {"domain_A", "domain_B", "domain_C"}
    assert "D" in skipped and "1 case" in skipped["D"]
    for name, s in splits.items():
        dom = name[len("domain_"):]
        members = {c for c, d in DOMAINS.items() if d == dom}
        assert set(s["train"]) | set(s["val"]) == members
        assert set(s["train"]).isdisjoint(s["val"])
        assert not members & set(s["test"])
        assert set(s["test"]) == set(CASES) - members
        assert len(s["val"]) == max(1, round(0.2 * len(members)))


def test_splits_are_not_silently_regenerated(tmp_path):
    make_or_check_splits(tmp_path, CASES, DOMAINS)
    first = json.loads((tmp_path / "splits_final.json").read_text())
    make_or_check_splits(tmp_path, CASES, DOMAINS)
    assert json.loads((tmp_path / "splits_final.json").read_text()) == first
    with pytest.raises(SplitsMismatchError, match="--new_splits"):
        make_or_check_splits(tmp_path, CASES[:-1], None)
    make_or_check_splits(tmp_path, CASES[:-1], None, new_splits=True)
    assert load_fold(tmp_path, 0)["val"]
    assert set(load_fold(tmp_path, "all")["train"]) == set(CASES[:-1])
    with pytest.raises(KeyError, match="fold 7"):
        load_fold(tmp_path, 7)


def test_load_domain_fold(tmp_path):
    make_or_check_splits(tmp_path, CASES, DOMAINS)
    f = load_fold(tmp_path, "domain_B")
    assert f["test"] and f["train"]
    with pytest.raises(KeyError, match="domain_D"):
        load_fold(tmp_path, "domain_D")
