"""Fixtures shared by the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests needing it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared sample data not found at {SHARED_DATA}")
    return SHARED_DATA


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
