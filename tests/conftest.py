"""Fixtures shared by the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def pytest_addoption(parser):
    parser.addoption("--frozen-optimizers", action="store_true", default=False,
                     help="make every torch.optim optimizer's step() do nothing: the tests marked "
                          "'learns' must then fail (proof that they measure learning)")


def _all_optimizer_classes():
    import torch

    todo, seen = [torch.optim.Optimizer], []
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo.extend(c for c in cls.__subclasses__() if c not in seen)
    return seen


@pytest.fixture(autouse=True, scope="session")
def _frozen_optimizers(request):
    """With ``--frozen-optimizers``: no optimizer changes a parameter (step() returns at once)."""
    if not request.config.getoption("--frozen-optimizers"):
        yield
        return

    def step(self, closure=None):
        return None if closure is None else closure()

    mp = pytest.MonkeyPatch()
    for cls in _all_optimizer_classes():
        if "step" in vars(cls):
            mp.setattr(cls, "step", step)
    yield
    mp.undo()


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    """samunet must work offline: every test runs with non-local sockets blocked (tests/network_guard.py)."""
    from network_guard import block_network

    unblock = block_network()
    yield
    unblock()


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests needing it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared sample data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def prostate_runmc6() -> Path:
    """The six prostate volumes bundled with samunet (samunet/demo_data, the same files as
    ``../shared/data/prostate_runmc6``): tests on them never skip."""
    from samunet.demo_data import PROSTATE_RUNMC6

    return PROSTATE_RUNMC6


@pytest.fixture
def samunet_roots(tmp_path, monkeypatch) -> dict[str, Path]:
    """Point the three samunet roots at fresh temporary folders."""
    roots = {}
    for var, sub in (("SAMUNET_raw", "raw"), ("SAMUNET_preprocessed", "preprocessed"), ("SAMUNET_results", "results")):
        p = tmp_path / sub
        p.mkdir()
        monkeypatch.setenv(var, str(p))
        roots[sub] = p
    return roots


def dice(pred, ref) -> float:
    """Dice of two boolean arrays, NaN when both are empty (as samunet's metrics)."""
    import numpy as np

    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    total = int(pred.sum()) + int(ref.sum())
    return float("nan") if total == 0 else 2.0 * float((pred & ref).sum()) / total


def assert_summary_matches_files(summary: dict) -> dict[str, dict[str, float]]:
    """Recompute every case's Dice of a summary.json from its prediction and reference files
    and compare with the summary (per case and the foreground mean); returns
    ``{case: {label key: Dice}}``. Catches a summary that is not the files' (e.g. empty
    predictions reported as good)."""
    import math

    import numpy as np
    import SimpleITK as sitk

    out = {}
    for row in summary["metric_per_case"]:
        pred = sitk.GetArrayFromImage(sitk.ReadImage(row["prediction_file"]))
        ref = sitk.GetArrayFromImage(sitk.ReadImage(row["reference_file"]))
        out[row["case"]] = {}
        for key, metrics in row["metrics"].items():
            d = dice(pred == int(key), ref == int(key))
            assert (math.isnan(d) and math.isnan(metrics["Dice"])) or d == pytest.approx(metrics["Dice"], abs=1e-6), \
                (row["case"], key, d, metrics["Dice"])
            out[row["case"]][key] = d
    keys = list(summary["metric_per_case"][0]["metrics"]) if out else []
    per_label = [np.nanmean([out[c][k] for c in out]) for k in keys]
    if per_label and not all(math.isnan(v) for v in per_label):
        assert np.nanmean(per_label) == pytest.approx(summary["foreground_mean"]["Dice"], abs=1e-6)
    return out


def build_raw_from_pairs(raw_root: Path, name: str, images: list[Path], masks: list[Path], channel_name="T2",
                         labels=None, domains=None) -> Path:
    """A raw nnU-Net-format dataset made by copying image/mask pairs (no converter involved)."""
    import json
    import shutil

    folder = raw_root / name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    ending = ".nii.gz"
    for img, msk in zip(images, masks):
        case = img.name[: -len(ending)]
        shutil.copy(img, folder / "imagesTr" / f"{case}_0000{ending}")
        shutil.copy(msk, folder / "labelsTr" / f"{case}{ending}")
    dj = {
        "channel_names": {"0": channel_name},
        "labels": labels or {"background": 0, "PZ": 1, "CG": 2},
        "numTraining": len(images),
        "file_ending": ending,
    }
    if domains:
        dj["domains"] = domains
    (folder / "dataset.json").write_text(json.dumps(dj))
    return folder


@pytest.fixture
def prostate_raw(shared_data, samunet_roots) -> Path:
    """Dataset501_Prostate built from ../shared/data/prostate_runmc6 (6 cases, labels 1 and 2)."""
    src = shared_data / "prostate_runmc6"
    images = sorted((src / "images").glob("*.nii.gz"))
    masks = [src / "masks" / p.name.replace(".nii.gz", "_Segmentation.nii.gz") for p in images]
    return build_raw_from_pairs(samunet_roots["raw"], "Dataset501_Prostate", images, masks)


def make_synthetic_raw(raw_root: Path, dataset_id: int = 650, n_cases: int = 6, shape=(6, 64, 64), domains=True,
                       num_labels: int = 1) -> Path:
    """Small 3D MR-like volumes with a bright ellipsoid (label 1) and optionally a second
    object (label 2); cases alternate between domains "A" and "B"."""
    import json

    import numpy as np
    import SimpleITK as sitk

    folder = raw_root / f"Dataset{dataset_id:03d}_Synthetic"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(dataset_id)
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    doms = {}
    for i in range(n_cases):
        cy, cx = rng.integers(20, shape[1] - 20), rng.integers(20, shape[2] - 20)
        lab = (((yy - cy) / 10.0) ** 2 + ((xx - cx) / 8.0) ** 2 + ((zz - shape[0] / 2) / 3.0) ** 2 <= 1).astype(np.uint8)
        if num_labels > 1:
            lab[(np.abs(yy - 10) < 4) & (np.abs(xx - 10) < 4) & (zz > 0)] = 2
        img = rng.normal(100, 10, shape) + 80 * (lab == 1) + 40 * (lab == 2)
        for arr, f in ((img.astype(np.float32), folder / "imagesTr" / f"s{i:02d}_0000.nii.gz"),
                       (lab, folder / "labelsTr" / f"s{i:02d}.nii.gz")):
            im = sitk.GetImageFromArray(arr)
            im.SetSpacing((1.0, 1.0, 3.0))
            im.SetOrigin((5.0, -3.0, 1.5))
            sitk.WriteImage(im, str(f))
        doms[f"s{i:02d}"] = "A" if i % 2 == 0 else "B"
    labels = {"background": 0, "blob": 1}
    if num_labels > 1:
        labels["square"] = 2
    dj = {"channel_names": {"0": "MRI"}, "labels": labels, "numTraining": n_cases, "file_ending": ".nii.gz"}
    if domains:
        dj["domains"] = doms
    (folder / "dataset.json").write_text(json.dumps(dj))
    return folder


@pytest.fixture
def synthetic_planned(samunet_roots):
    """A planned and preprocessed synthetic dataset (ID 650) with domains A and B."""
    from samunet.experiment_planning.plan_and_preprocess import plan_and_preprocess

    raw = make_synthetic_raw(samunet_roots["raw"])
    summary = plan_and_preprocess(650, num_processes=1)
    return raw, summary
