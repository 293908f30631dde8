"""Nothing samunet loads can run code: checkpoints and caches are read without unpickling
arbitrary objects, and crafted files are refused with an error that names them.

(Zip-slip and tampering of model zips: tests/inference/test_model_export.py. Offline
operation: tests/test_network_guard.py.)
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import pathlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

PACKAGE = Path(__file__).resolve().parents[1] / "samunet"


class _Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


# --------------------------------------------------------------------------- static scan


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", None)
            yield node, name, node.func.attr


def _keyword(node, name):
    for kw in node.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<expr>"
    return None


def test_every_load_in_the_package_is_pickle_free():
    problems, torch_loads = [], 0
    for f in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        where = f.relative_to(PACKAGE.parent)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                bad = [n for n in names if n and n.split(".")[0] in {"pickle", "dill", "cloudpickle", "joblib",
                                                                      "shelve", "marshal", "yaml"}]
                if bad:
                    problems.append(f"{where}:{node.lineno} imports {bad}")
        for node, owner, attr in _calls(tree):
            if owner == "torch" and attr == "load":
                torch_loads += 1
                if _keyword(node, "weights_only") is not True:
                    problems.append(f"{where}:{node.lineno} torch.load without weights_only=True")
            if owner in ("np", "numpy") and attr == "load" and _keyword(node, "allow_pickle") not in (None, False):
                problems.append(f"{where}:{node.lineno} np.load with allow_pickle")
            if attr in ("extractall",) or (owner == "jit" and attr == "load"):
                problems.append(f"{where}:{node.lineno} {owner}.{attr}")
    assert torch_loads >= 2  # the scan does see the checkpoint and SAM-weight loaders
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- crafted files


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"trainer_name": "ResNetTrainer", "fold": "0", "network_weights": {"w": torch.zeros(2)},
                "plans": _Payload(marker)}, path)
    return path


def test_malicious_checkpoint_refused_by_samunet_predict(samunet_roots, tmp_path):
    from samunet.inference.predictor import main as predict_main

    marker = tmp_path / "pwned"
    ckpt = _evil_checkpoint(samunet_roots["results"] / "Dataset042_Evil" / "ResNetTrainer__samunetPlans" / "fold_0"
                            / "checkpoint_final.pth", marker)
    (tmp_path / "in").mkdir()
    with pytest.raises(SystemExit) as exc:
        predict_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-d", "42", "-tr", "ResNetTrainer",
                      "-f", "0", "-device", "cpu"])
    msg = str(exc.value.code)
    assert str(ckpt) in msg and "refused for safety" in msg
    assert not marker.exists(), "the checkpoint's code ran"
    assert not (tmp_path / "out").exists()


def test_malicious_checkpoint_in_model_zip_refused(samunet_roots, tmp_path):
    from samunet.inference.model_export import ModelInstallError, install_model

    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"trainer_name": "ResNetTrainer", "fold": "0", "plans": _Payload(marker)}, buf)
    files = {"plans.json": b"{}", "dataset.json": b"{}", "fold_0/checkpoint_final.pth": buf.getvalue()}
    manifest = {"format": "samunet-model", "format_version": 1, "dataset_name": "Dataset042_Evil",
                "trainer": "ResNetTrainer", "plans_name": "samunetPlans", "folds": ["0"],
                "checkpoint_name": "checkpoint_final.pth", "samunet_version": "0",
                "files": {k: {"sha256": hashlib.sha256(v).hexdigest(), "size": len(v)} for k, v in files.items()}}
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        for k, v in files.items():
            zf.writestr(k, v)
    with pytest.raises(ModelInstallError, match="refused for safety"):
        install_model(z)
    assert not marker.exists(), "the checkpoint's code ran"
    parent = samunet_roots["results"] / "Dataset042_Evil"
    assert not parent.exists() or not list(parent.iterdir())  # nothing installed, temp folder gone


def test_pickled_cache_file_refused(tmp_path):
    from samunet.utilities.file_io import CorruptFileError, load_npz

    marker = tmp_path / "pwned"
    np.savez(tmp_path / "case.npz", data=np.array([_Payload(marker)], dtype=object))
    with pytest.raises(CorruptFileError, match="pickled Python objects") as exc:
        load_npz(tmp_path / "case.npz")
    assert str(tmp_path / "case.npz") in str(exc.value)
    assert not marker.exists()
