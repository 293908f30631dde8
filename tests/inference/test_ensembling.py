"""samunet_ensemble: averages saved probabilities (.npz of --save_probabilities / --npz) into label maps,
refuses mismatched folders before writing anything; the .npz format written by export_prediction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from samunet.imageio import reader_writer_for
from samunet.inference.ensembling import EnsembleError, check_ensemble_inputs, ensemble_folders, main
from samunet.inference.export import (
    export_prediction,
    probabilities_npz_header,
    read_probabilities_npz,
    save_probabilities_npz,
)

SHAPE = (2, 6, 8)  # array order z, y, x
SPACING_XYZ = (0.8, 0.9, 3.0)
ORIGIN = (5.0, -3.0, 1.5)


def geometry_props(tmp_path: Path) -> dict:
    """The reader's properties of a NIfTI with a known geometry (what write_seg needs)."""
    img = sitk.GetImageFromArray(np.zeros(SHAPE, np.uint8))
    img.SetSpacing(SPACING_XYZ)
    img.SetOrigin(ORIGIN)
    f = tmp_path / "geometry.nii.gz"
    sitk.WriteImage(img, str(f))
    return reader_writer_for(".nii.gz").read_seg(f)[1]


def write_probs(folder: Path, case: str, probs: np.ndarray, props: dict, labels=(0, 1, 2)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    f = folder / f"{case}.npz"
    save_probabilities_npz(f, probs, list(labels), ".nii.gz", props)
    return f


def two_class_probs(fg: tuple[float, float, float], rest=(0.9, 0.05, 0.05)) -> np.ndarray:
    """Probabilities (3, Z, Y, X): ``fg`` in the box [:, 1:4, 2:6], ``rest`` elsewhere."""
    p = np.empty((3,) + SHAPE, np.float32)
    p[:] = np.asarray(rest, np.float32)[:, None, None, None]
    p[:, :, 1:4, 2:6] = np.asarray(fg, np.float32)[:, None, None, None]
    return p


@pytest.fixture
def two_folders(tmp_path):
    props = geometry_props(tmp_path)
    a, b = tmp_path / "A", tmp_path / "B"
    # c1: A says 1 (0.6), B says 2 (0.7): mean (0.1, 0.4, 0.5) -> 2
    write_probs(a, "c1", two_class_probs((0.1, 0.6, 0.3)), props)
    write_probs(b, "c1", two_class_probs((0.1, 0.2, 0.7)), props)
    # c2: A says 0 (0.6), B says 1 (0.6): mean (0.4, 0.45, 0.15) -> 1
    write_probs(a, "c2", two_class_probs((0.6, 0.3, 0.1)), props)
    write_probs(b, "c2", two_class_probs((0.2, 0.6, 0.2)), props)
    return a, b


def read_label(f: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(f)))


def test_ensemble_averages_to_known_labels_in_the_input_geometry(two_folders, tmp_path):
    a, b = two_folders
    out = tmp_path / "out"
    main(["-i", str(a), str(b), "-o", str(out), "--save_probabilities"])
    c1, c2 = read_label(out / "c1.nii.gz"), read_label(out / "c2.nii.gz")
    expect1 = np.zeros(SHAPE, np.uint8)
    expect1[:, 1:4, 2:6] = 2
    np.testing.assert_array_equal(c1, expect1)
    np.testing.assert_array_equal(c2, (expect1 > 0).astype(np.uint8))
    img = sitk.ReadImage(str(out / "c1.nii.gz"))
    assert np.allclose(img.GetSpacing(), SPACING_XYZ) and np.allclose(img.GetOrigin(), ORIGIN)
    # the mean probabilities, in the same format (so they can be ensembled or post-processed again)
    d = read_probabilities_npz(out / "c1.npz")
    assert d["label_values"] == [0, 1, 2] and d["file_ending"] == ".nii.gz" and d["properties"]["io"]
    np.testing.assert_allclose(d["probabilities"][:, 0, 2, 3], [0.1, 0.4, 0.5], atol=2e-3)
    info = json.loads((out / "ensemble.json").read_text())
    assert info["cases"] == ["c1", "c2"] and len(info["input_folders"]) == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_refuses_different_case_sets_and_writes_nothing(two_folders, tmp_path):
    a, b = two_folders
    (b / "c2.npz").unlink()
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"different cases.*missing from .*B.*c2"):
        main(["-i", str(a), str(b), "-o", str(out)])
    assert not out.exists()


def test_refuses_different_label_sets(two_folders, tmp_path):
    a, b = two_folders
    props = read_probabilities_npz(b / "c1.npz")["properties"]
    write_probs(b, "c1", two_class_probs((0.1, 0.2, 0.7)), props, labels=(0, 1, 3))
    with pytest.raises(EnsembleError, match=r"different labels.*\[0, 1, 2\].*\[0, 1, 3\]"):
        ensemble_folders([a, b], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_a_folder_without_probabilities(two_folders, tmp_path):
    a, _ = two_folders
    labels_only = tmp_path / "labels_only"
    labels_only.mkdir()
    (labels_only / "c1.nii.gz").write_bytes(b"")
    with pytest.raises(SystemExit, match=r"no probability files.*samunet_predict with --save_probabilities"):
        main(["-i", str(a), str(labels_only), "-o", str(tmp_path / "out")])


def test_a_mismatch_in_a_later_case_is_found_before_any_file_is_written(two_folders, tmp_path):
    a, b = two_folders
    props = read_probabilities_npz(b / "c2.npz")["properties"]
    write_probs(b, "c2", np.full((3, 2, 6, 9), 1 / 3, np.float32), props)  # another image size
    out = tmp_path / "out"
    with pytest.raises(EnsembleError, match="case c2: probabilities of shape"):
        ensemble_folders([a, b], out)
    assert not out.exists() or not any(out.iterdir())


def test_needs_two_distinct_folders_and_an_output_elsewhere(two_folders, tmp_path):
    a, b = two_folders
    with pytest.raises(EnsembleError, match="at least two"):
        check_ensemble_inputs([a])
    with pytest.raises(EnsembleError, match="given twice"):
        check_ensemble_inputs([a, a])
    with pytest.raises(EnsembleError, match="must differ"):
        ensemble_folders([a, b], a)


def test_older_npz_without_metadata_uses_the_label_map_beside_it(tmp_path):
    """Files of an older samunet hold only 'probabilities': geometry and ending from CASE.nii.gz beside them."""
    props = geometry_props(tmp_path)
    rw = reader_writer_for(".nii.gz")
    for name, fg in (("A", (0.2, 0.8)), ("B", (0.6, 0.4))):
        p = np.zeros((2,) + SHAPE, np.float32)
        p[0], p[1] = 1.0, 0.0
        p[:, :, 1:4, 2:6] = np.asarray(fg, np.float32)[:, None, None, None]
        (tmp_path / name).mkdir()
        np.savez_compressed(tmp_path / name / "c1.npz", probabilities=p.astype(np.float16))
        rw.write_seg(np.argmax(p, 0).astype(np.int16), tmp_path / name / "c1.nii.gz", props)
    ensemble_folders([tmp_path / "A", tmp_path / "B"], tmp_path / "out")
    got = read_label(tmp_path / "out" / "c1.nii.gz")
    assert got.sum() == 3 * 4 * 2 and got[0, 1, 2] == 1  # mean (0.4, 0.6) -> 1
    assert np.allclose(sitk.ReadImage(str(tmp_path / "out" / "c1.nii.gz")).GetSpacing(), SPACING_XYZ)


def test_export_prediction_writes_the_ensemble_format(tmp_path):
    """samunet_predict --save_probabilities / samunet_train --npz: probabilities + labels + ending + geometry."""
    props = geometry_props(tmp_path)
    props.update({"shape_after_transpose": list(SHAPE), "bbox": [[0, s] for s in SHAPE],
                  "shape_after_crop": list(SHAPE), "transpose_forward": [0, 1, 2]})
    plans = {"label_values": [0, 1, 4], "file_ending": ".nii.gz"}
    probs = two_class_probs((0.1, 0.2, 0.7))
    seg = export_prediction(probs, props, plans, tmp_path / "c1.nii.gz", save_probabilities=True)
    assert set(np.unique(seg)) == {0, 4}
    h = probabilities_npz_header(tmp_path / "c1.npz")
    assert h == {"shape": (3,) + SHAPE, "label_values": [0, 1, 4], "file_ending": ".nii.gz"}
    d = read_probabilities_npz(tmp_path / "c1.npz")
    assert d["properties"]["sitk_geometry"]["origin"] == list(ORIGIN)
    with np.load(tmp_path / "c1.npz", allow_pickle=False) as f:  # no pickled objects
        assert f["probabilities"].dtype == np.float16
