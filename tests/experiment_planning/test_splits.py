"""Five-fold and domain-hold-out splits."""

import json

import pytest

from samunet.experiment_planning.splits import (
    SplitsMismatchError,
    domain_holdout_splits,
    five_fold_splits,
    group_k_fold,
    groups_across,
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


# --------------------------------------------------------------------------- groups (patients, video sequences)

# 9 patients with 2..8 slices each, named <site>_<patient>_<slice> as samunet_convert_2d_folder writes them
PATIENT_SIZES = [8, 6, 6, 5, 4, 4, 3, 2, 2]
SLICES = {f"S_{p:02d}_{s:02d}": f"S_{p:02d}" for p, n in enumerate(PATIENT_SIZES) for s in range(n)}


def _patients_in_both(side_a, side_b, groups) -> set[str]:
    return {groups[c] for c in side_a} & {groups[c] for c in side_b}


def test_five_folds_keep_each_group_in_one_fold():
    splits = five_fold_splits(list(SLICES), groups=SLICES)
    assert len(splits) == 5
    for s in splits:
        assert not _patients_in_both(s["train"], s["val"], SLICES)
        assert set(s["train"]) | set(s["val"]) == set(SLICES)
    vals = [set(s["val"]) for s in splits]
    assert set().union(*vals) == set(SLICES) and sum(map(len, vals)) == len(SLICES)
    sizes = sorted(map(len, vals))
    assert sizes[-1] - sizes[0] <= 2, sizes  # 40 slices: best possible is 8 per fold; greedy gives 8 +- 1
    assert five_fold_splits(list(SLICES), groups=SLICES) == splits  # seeded
    # the case-wise folds of old split slices of one patient between train and val
    assert any(_patients_in_both(s["train"], s["val"], SLICES) for s in five_fold_splits(list(SLICES)))


def test_fewer_groups_than_folds_and_one_group():
    groups = {c: g for c, g in SLICES.items() if g in ("S_00", "S_01", "S_02")}
    splits = five_fold_splits(list(groups), groups=groups)
    assert len(splits) == 3 and all(len({groups[c] for c in s["val"]}) == 1 for s in splits)
    with pytest.raises(ValueError, match="at least 2 groups"):
        five_fold_splits(["a", "b"], groups={"a": "p", "b": "p"})


def test_without_multi_case_groups_the_case_wise_folds_are_unchanged():
    own = {c: f"patient_of_{c}" for c in CASES}
    assert five_fold_splits(CASES, groups=own) == five_fold_splits(CASES) == five_fold_splits(CASES, groups={})
    assert domain_holdout_splits(DOMAINS, groups=own) == domain_holdout_splits(DOMAINS)


def test_ungrouped_cases_are_their_own_group_even_if_named_like_a_group():
    groups = {"a1": "b", "a2": "b"}  # case "b" has no group; group "b" must not swallow it
    folds = group_k_fold(["a1", "a2", "b", "c"], groups, 3)
    assert sorted(folds) == [["a1", "a2"], ["b"], ["c"]]


def test_domain_folds_carve_validation_by_group():
    domains = {c: ("A" if int(g[2:]) < 6 else "B") for c, g in SLICES.items()}
    single = {"C_00_00": "C", "C_00_01": "C"}  # domain C: two slices of one patient
    domains.update(single)
    groups = {**SLICES, **{c: "C_00" for c in single}}
    splits, skipped = domain_holdout_splits(domains, groups=groups)
    assert set(splits) == {"domain_A", "domain_B"}
    assert "C" in skipped and "at least 2 groups" in skipped["C"]
    for name, s in splits.items():
        members = {c for c, d in domains.items() if d == name[len("domain_"):]}
        assert set(s["train"]) | set(s["val"]) == members and s["train"] and s["val"]
        assert not _patients_in_both(s["train"], s["val"], groups)
        assert not set(s["test"]) & members
    # A: 33 slices, 20% = 7: whole patients give at most 7 (e.g. 3 + 4 slices), never 0
    assert 1 <= len(splits["domain_A"]["val"]) <= 7
    # case-wise carving (no groups) splits a patient of A between train and val
    old = domain_holdout_splits(domains)[0]["domain_A"]
    assert _patients_in_both(old["train"], old["val"], groups)


def test_existing_splits_that_split_a_group_are_not_kept_silently(tmp_path):
    cases = list(SLICES)
    domains = {c: ("A" if int(g[2:]) < 6 else "B") for c, g in SLICES.items()}
    make_or_check_splits(tmp_path, cases, domains)  # made before groups were known
    with pytest.raises(SplitsMismatchError, match="--new_splits") as e:
        make_or_check_splits(tmp_path, cases, domains, groups=SLICES)
    assert "splits_final.json" in str(e.value) and "S_0" in str(e.value)
    summary = make_or_check_splits(tmp_path, cases, domains, new_splits=True, groups=SLICES)
    assert summary["groups"] == len(PATIENT_SIZES)
    for i in range(summary["folds"]):
        f = load_fold(tmp_path, i)
        assert not _patients_in_both(f["train"], f["val"], SLICES)
    f = load_fold(tmp_path, "domain_A")
    assert not _patients_in_both(f["train"], f["val"], SLICES)
    make_or_check_splits(tmp_path, cases, domains, groups=SLICES)  # group-wise files are accepted as they are


def test_groups_across_names_the_split_groups():
    assert groups_across(["S_00_00", "S_01_00"], ["S_00_01", "x"], SLICES) == ["S_00"]


def test_plan_and_preprocess_makes_group_wise_splits_from_dataset_json(samunet_roots):
    from conftest import make_synthetic_raw

    from samunet.dataset_conversion.dataset_json import DatasetJsonError
    from samunet.experiment_planning.plan_and_preprocess import format_summary, plan_and_preprocess

    folder = make_synthetic_raw(samunet_roots["raw"], dataset_id=657, n_cases=10, shape=(3, 48, 48))
    groups = {"s00": "pA0", "s02": "pA0", "s04": "pA1", "s06": "pA1", "s01": "pB0", "s03": "pB0", "s05": "pB0"}
    dj = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**dj, "groups": groups}))
    summary = plan_and_preprocess(657, num_processes=1)
    assert summary["splits"]["groups"] == 6  # 3 named groups + 3 cases of their own
    assert "6 groups kept whole" in format_summary(summary)
    pre = samunet_roots["preprocessed"] / folder.name
    folds = [load_fold(pre, i) for i in range(summary["splits"]["folds"])]
    folds += [load_fold(pre, name) for name in summary["splits"]["domain_folds"]]
    assert len(folds) == 7
    for f in folds:
        assert not groups_across(f["train"], f["val"], groups)

    (folder / "dataset.json").write_text(json.dumps({**dj, "groups": {**groups, "s99": "pB0"}}))
    with pytest.raises(DatasetJsonError, match=r"dataset.json: \"groups\" names 1 case\(s\) that are not in imagesTr: s99"):
        plan_and_preprocess(657, num_processes=1, skip_integrity_check=True)
