"""samunet_export_model / samunet_install_model: round trip, zip-slip and tampering refused."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import stat
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import trained_tree
from samunet.inference.model_export import (
    ModelExportError,
    ModelInstallError,
    export_main,
    export_model,
    install_main,
    install_model,
)
from samunet.inference.predictor import predict_folder

DS = trained_tree.DATASET


@pytest.fixture
def trained(tmp_path_factory, monkeypatch):
    with trained_tree.single_thread():
        yield trained_tree.use(tmp_path_factory, monkeypatch)


def _fresh_roots(tmp_path, monkeypatch, name="fresh"):
    roots = {}
    for var, sub in (("SAMUNET_raw", "raw"), ("SAMUNET_preprocessed", "preprocessed"), ("SAMUNET_results", "results")):
        roots[sub] = tmp_path / name / sub
        roots[sub].mkdir(parents=True)
        monkeypatch.setenv(var, str(roots[sub]))
    return roots


def _labels(folder):
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}


def test_export_install_predict_identical(trained, tmp_path, monkeypatch, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    for c in ("s01", "s02"):
        shutil.copy(trained["raw"] / DS / "imagesTr" / f"{c}_0000.nii.gz", inp)
    folds = ["domain_A", "domain_B"]
    predict_folder(inp, tmp_path / "orig", 650, "ResNetTrainer", folds, device="cpu")
    zip_file = tmp_path / "out" / "model.zip"
    assert export_main(["-d", "650", "-tr", "ResNetTrainer", "-f", *folds, "-o", str(zip_file)]) == 0
    assert not [p for p in zip_file.parent.iterdir() if p.name != "model.zip"]  # no temp files left
    with zipfile.ZipFile(zip_file) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("manifest.json"))
        ck = torch.load(io.BytesIO(z.read("fold_domain_A/checkpoint_final.pth")), weights_only=True)
    assert names == {"manifest.json", "plans.json", "dataset.json", "fold_domain_A/checkpoint_final.pth",
                     "fold_domain_B/checkpoint_final.pth"}
    assert manifest["dataset_name"] == DS and manifest["trainer"] == "ResNetTrainer"
    assert manifest["plans_name"] == "samunetPlans" and manifest["folds"] == folds
    assert manifest["checkpoint_name"] == "checkpoint_final.pth" and manifest["samunet_version"]
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert ck["optimizer_state"] == {} and ck["trainer_name"] == "ResNetTrainer"

    fresh = _fresh_roots(tmp_path, monkeypatch)  # the model now exists only in the zip
    assert install_main([str(zip_file)]) == 0
    assert "samunet_predict" in capsys.readouterr().out
    target = fresh["results"] / DS / "ResNetTrainer__samunetPlans"
    assert (target / "fold_domain_B" / "checkpoint_final.pth").is_file() and (target / "plans.json").is_file()
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temp folders left
    predict_folder(inp, tmp_path / "installed", 650, "ResNetTrainer", folds, device="cpu")
    a, b = _labels(tmp_path / "orig"), _labels(tmp_path / "installed")
    assert list(a) == ["s01.nii.gz", "s02.nii.gz"] and list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])

    # an installed model is not replaced unless asked
    assert install_main([str(zip_file)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    (target / "marker").write_text("old")
    assert install_main([str(zip_file), "--overwrite"]) == 0
    assert not (target / "marker").exists() and (target / "fold_domain_A" / "checkpoint_final.pth").is_file()


def test_export_errors(trained, tmp_path):
    with pytest.raises(ModelExportError, match="fold_3"):
        export_model(650, "ResNetTrainer", ["3"], tmp_path / "m.zip")
    with pytest.raises(ModelExportError, match="not a safe name"):
        export_model(650, "ResNetTrainer", ["../0"], tmp_path / "m.zip")
    assert not (tmp_path / "m.zip").exists()


# --------------------------------------------------------------------------- hand-made zips (no training)


def _fake_model_zip(path, extra=(), tamper=None):
    """A minimal valid model zip (a tiny checkpoint), plus ``extra`` (ZipInfo, bytes) entries;
    ``tamper`` names a file whose content is changed after its sha256 went into the manifest."""
    buf = io.BytesIO()
    torch.save({"trainer_name": "ResNetTrainer", "fold": "0", "network_weights": {"w": torch.zeros(2)}}, buf)
    files = {"plans.json": b'{"plans_name": "samunetPlans"}', "dataset.json": b'{"labels": {}}',
             "fold_0/checkpoint_final.pth": buf.getvalue()}
    manifest = {"format": "samunet-model", "format_version": 1, "dataset_name": "Dataset042_Fake",
                "trainer": "ResNetTrainer", "plans_name": "samunetPlans", "folds": ["0"],
                "checkpoint_name": "checkpoint_final.pth", "samunet_version": "0",
                "files": {k: {"sha256": hashlib.sha256(v).hexdigest(), "size": len(v)} for k, v in files.items()}}
    if tamper:
        files[tamper] = files[tamper][:-1] + bytes([files[tamper][-1] ^ 1])
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("manifest.json", json.dumps(manifest))
        for k, v in files.items():
            z.writestr(k, v)
        for info, data in extra:
            z.writestr(info, data)
    return path


def test_fake_zip_installs(samunet_roots, tmp_path):
    target = install_model(_fake_model_zip(tmp_path / "ok.zip"))
    assert target == samunet_roots["results"] / "Dataset042_Fake" / "ResNetTrainer__samunetPlans"
    assert (target / "fold_0" / "checkpoint_final.pth").is_file()


def _symlink(name):
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("entry", [zipfile.ZipInfo("../evil.txt"), zipfile.ZipInfo("/tmp/samunet_evil.txt"),
                                   zipfile.ZipInfo("fold_0/../../evil.txt"), _symlink("fold_0/link")],
                         ids=["dotdot", "absolute", "nested-dotdot", "symlink"])
def test_zip_slip_refused(samunet_roots, tmp_path, entry):
    work = tmp_path / "work"
    work.mkdir()
    z = _fake_model_zip(work / "evil.zip", extra=[(entry, b"/etc/passwd" if entry.filename.endswith("link") else b"x")])
    with pytest.raises(ModelInstallError, match="refused"):
        install_model(z)
    assert install_main([str(z)]) == 2
    assert not (tmp_path / "evil.txt").exists() and not (work.parent / "evil.txt").exists()
    assert not (samunet_roots["results"].parent / "evil.txt").exists()
    assert not list(samunet_roots["results"].iterdir())  # nothing extracted, not even a temp folder


@pytest.mark.parametrize("tampered", ["dataset.json", "fold_0/checkpoint_final.pth"])
def test_tampered_file_refused(samunet_roots, tmp_path, tampered):
    z = _fake_model_zip(tmp_path / "t.zip", tamper=tampered)
    with pytest.raises(ModelInstallError, match="sha256 mismatch"):
        install_model(z)
    parent = samunet_roots["results"] / "Dataset042_Fake"
    assert not parent.exists() or not list(parent.iterdir())  # temp folder removed, no model installed


def test_unlisted_entry_and_bad_manifest_refused(samunet_roots, tmp_path):
    z = _fake_model_zip(tmp_path / "x.zip", extra=[(zipfile.ZipInfo("fold_0/other.py"), b"print(1)")])
    with pytest.raises(ModelInstallError, match="not listed"):
        install_model(z)
    with zipfile.ZipFile(tmp_path / "y.zip", "w") as zz:
        zz.writestr("manifest.json", json.dumps({"format": "samunet-model", "dataset_name": "../x"}))
    with pytest.raises(ModelInstallError, match="dataset folder name"):
        install_model(tmp_path / "y.zip")
    (tmp_path / "n.zip").write_bytes(b"not a zip")
    with pytest.raises(ModelInstallError, match="not a zip"):
        install_model(tmp_path / "n.zip")
    assert not list(samunet_roots["results"].iterdir())
