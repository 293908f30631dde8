"""--part/--num_parts: deterministic, disjoint, complete case shards that merge by file."""

from __future__ import annotations

import pytest

from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess, shard


def test_shard_is_deterministic_disjoint_and_complete():
    cases = [f"c{i:02d}" for i in range(11)]
    parts = [shard(reversed(cases), p, 3) for p in range(3)]
    assert parts == [shard(cases, p, 3) for p in range(3)]  # input order does not matter
    assert sorted(sum(parts, [])) == cases
    assert all(not set(a) & set(b) for i, a in enumerate(parts) for b in parts[i + 1:])
    assert [len(p) for p in parts] == [4, 4, 3]
    for bad in ((3, 3), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="--part"):
            shard(cases, *bad)


def test_plan_and_preprocess_parts_merge_into_the_full_result(samunet_roots):
    from conftest import make_synthetic_raw

    make_synthetic_raw(samunet_roots["raw"], dataset_id=655, n_cases=5, shape=(3, 48, 48))
    s0 = plan_and_preprocess(655, num_processes=1, part=0, num_parts=2)
    data = samunet_roots["preprocessed"] / "Dataset655_Synthetic" / "samunetPlans_2d"
    assert s0["preprocessing"]["preprocessed"] == 3 and len(list(data.glob("*.npz"))) == 3
    s1 = plan_and_preprocess(655, num_processes=1, part=1, num_parts=2)
    assert s1["preprocessing"]["preprocessed"] == 2 and s1["plans"] == s0["plans"]
    assert sorted(p.name for p in data.glob("*.npz")) == [f"s{i:02d}.npz" for i in range(5)]
    full = plan_and_preprocess(655, num_processes=1)
    assert full["preprocessing"] == {"folder": str(data), "preprocessed": 0, "skipped": 5}
    with pytest.raises(ValueError, match="--part 2 --num_parts 2"):
        plan_and_preprocess(655, num_processes=1, part=2, num_parts=2)


@pytest.mark.slow  # six real LiteMedSAM encoder passes
def test_embedding_cache_build_parts(samunet_roots):
    from conftest import make_synthetic_raw
    from samunet.sam.build_cache import build_embedding_cache

    make_synthetic_raw(samunet_roots["raw"], dataset_id=656, n_cases=3, shape=(2, 48, 48))
    plan_and_preprocess(656, num_processes=1)
    a = build_embedding_cache(656, encoder_backend="torch", part=0, num_parts=2, device="cpu", progress=False)
    assert (a["cases"], a["encoded"]) == (2, 2)
    b = build_embedding_cache(656, encoder_backend="torch", part=1, num_parts=2, device="cpu", progress=False)
    assert (b["cases"], b["encoded"]) == (1, 1) and a["folder"] == b["folder"]
    from pathlib import Path

    assert sorted(p.name for p in Path(a["folder"]).glob("*.npy")) == ["s00.npy", "s01.npy", "s02.npy"]
    again = build_embedding_cache(656, encoder_backend="torch", device="cpu", progress=False)
    assert again["encoded"] == 0  # everything cached by the parts
