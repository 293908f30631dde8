"""Tests of samunet.experiment_planning.integrity on small synthetic raw datasets."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from samunet.dataset_conversion.dataset_json import DatasetJsonError, validate_dataset_json
from samunet.experiment_planning.integrity import (
    DatasetIntegrityError,
    check_dataset_integrity,
    main,
    verify_dataset_integrity,
)

PROSTATE = Path("/work/shared/data/prostate_runmc6")
SHAPE = (8, 16, 16)  # (z, y, x)
SPACING = (0.5, 0.5, 3.0)  # SimpleITK order (x, y, z)
ORIGIN = (-10.0, 20.0, 5.0)
LABELS = {"background": 0, "PZ": 1, "CG": 2}


# --------------------------------------------------------------------------- builder


def write_sitk(path: Path, arr: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=None) -> Path:
    img = sitk.GetImageFromArray(arr)
    dim = img.GetDimension()
    img.SetSpacing(tuple(spacing)[:dim])
    img.SetOrigin(tuple(origin)[:dim])
    if direction is not None:
        img.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def noise(shape, dtype=np.float32) -> np.ndarray:
    """A non-constant image (the check refuses constant ones)."""
    return np.random.default_rng(7).integers(0, 200, shape).astype(dtype)


def label_array(seed: int, shape=SHAPE) -> np.ndarray:
    seg = np.zeros(shape, np.uint8)
    seg[1:-1, 4:9, 4:9] = 1
    seg[2:-2, 9:12, 9:12] = 2
    seg[..., 0, seed % shape[-1]] = 1
    return seg


def write_dataset_json(root: Path, **overrides) -> dict:
    d = {
        "channel_names": {"0": "T2", "1": "ADC"},
        "labels": dict(LABELS),
        "numTraining": 3,
        "file_ending": ".nii.gz",
    }
    d.update(overrides)
    d = {k: v for k, v in d.items() if v is not None}
    (root / "dataset.json").write_text(json.dumps(d))
    return d


def make_3d(tmp_path: Path, n_cases: int = 3, channels=("T2", "ADC"), ending=".nii.gz", **json_overrides) -> Path:
    """A clean 3D dataset: cases case_00 .. with one file per channel and a label."""
    root = tmp_path / "Dataset900_Test"
    rng = np.random.default_rng(0)
    for i in range(n_cases):
        case = f"case_{i:02d}"
        for c in range(len(channels)):
            write_sitk(root / "imagesTr" / f"{case}_{c:04d}{ending}", rng.normal(size=SHAPE).astype(np.float32))
        write_sitk(root / "labelsTr" / f"{case}{ending}", label_array(i))
    write_dataset_json(
        root,
        channel_names={str(k): v for k, v in enumerate(channels)},
        numTraining=n_cases,
        file_ending=ending,
        **json_overrides,
    )
    return root


def make_png(tmp_path: Path, n_cases: int = 3, rgb: bool = True) -> Path:
    """A clean 2D natural-image dataset: one RGB (or grey) _0000.png per case."""
    root = tmp_path / "Dataset901_Png"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(n_cases):
        shape = (20, 24, 3) if rgb else (20, 24)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(root / "imagesTr" / f"img{i}_0000.png")
        seg = np.zeros((20, 24), np.uint8)
        seg[3:9, 4:10] = 1
        seg[10:15, 12:12 + i + 2] = 2
        Image.fromarray(seg).save(root / "labelsTr" / f"img{i}.png")
    write_dataset_json(
        root,
        channel_names={"0": "R", "1": "G", "2": "B"} if rgb else {"0": "grey"},
        labels={"background": 0, "a": 1, "b": 2},
        numTraining=n_cases,
        file_ending=".png",
    )
    return root


def only_problem(report, file: str):
    """Assert the report is not OK and some problem names ``file``; return those problems."""
    assert not report.ok
    hits = [p for p in report.problems if p.file == file]
    assert hits, f"no problem names {file}:\n{report.format()}"
    for p in hits:
        assert p.format().startswith(f"{file}: ")
    return hits


# --------------------------------------------------------------------------- clean datasets


def test_clean_3d_dataset_passes(tmp_path):
    root = make_3d(tmp_path)
    (root / "imagesTr" / ".DS_Store").write_bytes(b"\0junk")  # ignored silently
    report = check_dataset_integrity(root)
    assert report.ok, report.format()
    assert report.num_cases == 3
    assert verify_dataset_integrity(root).ok


@pytest.mark.parametrize(
    "ending, reader",
    [(".nii", None), (".mha", None), (".nrrd", None), (".nii.gz", "NibabelIO")],
)
def test_clean_dataset_other_formats_pass(tmp_path, ending, reader):
    root = make_3d(tmp_path, ending=ending, overwrite_image_reader_writer=reader)
    report = check_dataset_integrity(root)
    assert report.ok, report.format()


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"spacing": (0.5, 0.7, 3.0)}, "spacing (0.5, 0.7, 3) differs"),
        ({"origin": (-10.0, 21.0, 5.0)}, "origin"),
        ({"direction": (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)}, "direction"),
    ],
)
def test_nibabel_reader_geometry_mismatch(tmp_path, kwargs, expected):
    root = make_3d(tmp_path, overwrite_image_reader_writer="NibabelIO")
    write_sitk(root / "labelsTr" / "case_00.nii.gz", label_array(0), **kwargs)
    report = check_dataset_integrity(root)
    (p,) = only_problem(report, "labelsTr/case_00.nii.gz")
    assert expected in p.message and "resample the label" in p.message
    assert len(report.problems) == 1, report.format()


def test_clean_rgb_png_dataset_passes(tmp_path):
    report = check_dataset_integrity(make_png(tmp_path))
    assert report.ok, report.format()


def test_single_slice_3d_image_in_3d_dataset_is_fine(tmp_path):
    root = make_3d(tmp_path, channels=("CT",))
    write_sitk(root / "imagesTr" / "case_01_0000.nii.gz", noise((1, 16, 16)))
    write_sitk(root / "labelsTr" / "case_01.nii.gz", label_array(1, (1, 16, 16)))
    report = check_dataset_integrity(root)
    assert report.ok, report.format()


# --------------------------------------------------------------------------- dataset.json


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "not found"),
        ("{not json", "not valid JSON"),
        ({"channel_names": {"0": "T2", "1": "ADC"}, "numTraining": 3, "file_ending": ".nii.gz"}, '"labels" missing'),
        (
            {"channel_names": {"0": "T2", "1": "ADC"}, "labels": LABELS, "numTraining": "3", "file_ending": ".nii.gz"},
            "numTraining",
        ),
        (
            {"channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "a": 1, "b": 3},
             "numTraining": 3, "file_ending": ".nii.gz"},
            "consecutive",
        ),
    ],
    ids=["missing", "not-json", "missing-key", "wrong-type", "labels-not-consecutive"],
)
def test_bad_dataset_json_is_the_only_problem(tmp_path, content, expected):
    root = make_3d(tmp_path)
    if content is None:
        (root / "dataset.json").unlink()
    else:
        (root / "dataset.json").write_text(content if isinstance(content, str) else json.dumps(content))
    report = check_dataset_integrity(root)
    (p,) = only_problem(report, "dataset.json")
    assert len(report.problems) == 1
    assert expected in p.message


def test_unknown_reader_in_dataset_json(tmp_path):
    root = make_3d(tmp_path, overwrite_image_reader_writer="NoSuchIO")
    (p,) = only_problem(check_dataset_integrity(root), "dataset.json")
    assert "NoSuchIO" in p.message


# --------------------------------------------------------------------------- folders and file names


@pytest.mark.parametrize("folder", ["imagesTr", "labelsTr"])
def test_missing_folder(tmp_path, folder):
    root = make_3d(tmp_path)
    shutil.rmtree(root / folder)
    (p,) = only_problem(check_dataset_integrity(root), folder)
    assert "folder missing" in p.message


def test_missing_channel_file(tmp_path):
    root = make_3d(tmp_path)
    (root / "imagesTr" / "case_01_0001.nii.gz").unlink()
    report = check_dataset_integrity(root)
    (p,) = only_problem(report, "imagesTr/case_01_0001.nii.gz")
    assert p.case == "case_01" and "missing" in p.message and "ADC" in p.message
    assert len(report.problems) == 1


def test_missing_first_channel_file_is_a_gap(tmp_path):
    root = make_3d(tmp_path)
    (root / "imagesTr" / "case_02_0000.nii.gz").unlink()
    (p,) = only_problem(check_dataset_integrity(root), "imagesTr/case_02_0000.nii.gz")
    assert "missing channel file" in p.message


def test_grey_png_where_rgb_expected_is_a_missing_channel(tmp_path):
    root = make_png(tmp_path, rgb=True)
    Image.fromarray(noise((20, 24), np.uint8)).save(root / "imagesTr" / "img1_0000.png")
    (p,) = only_problem(check_dataset_integrity(root), "imagesTr/img1_0001.png")
    assert "has 1" in p.message and "lists 3" in p.message


def test_rgb_png_where_grey_expected_has_too_many_channels(tmp_path):
    root = make_png(tmp_path, rgb=False)
    Image.fromarray(noise((20, 24, 3), np.uint8)).save(root / "imagesTr" / "img2_0000.png")
    (p,) = only_problem(check_dataset_integrity(root), "imagesTr/img2_0000.png")
    assert "holds 3" in p.message


def test_extra_channel_file(tmp_path):
    root = make_3d(tmp_path)
    shutil.copy(root / "imagesTr" / "case_00_0000.nii.gz", root / "imagesTr" / "case_00_0002.nii.gz")
    report = check_dataset_integrity(root)
    (p,) = only_problem(report, "imagesTr/case_00_0002.nii.gz")
    assert "extra channel file" in p.message
    assert len(report.problems) == 1


@pytest.mark.parametrize(
    "name, expected",
    [
        ("imagesTr/notes.txt", "unexpected file"),
        ("imagesTr/case_00_0000.nii", "unexpected file"),
        ("imagesTr/case_09.nii.gz", "does not match CASE_XXXX.nii.gz"),
        ("labelsTr/readme.md", "unexpected file"),
        ("labelsTr/subfolder", "unexpected folder"),
    ],
)
def test_unexpected_files(tmp_path, name, expected):
    root = make_3d(tmp_path)
    if name.endswith("subfolder"):
        (root / name).mkdir()
    else:
        (root / name).write_bytes(b"x")
    report = check_dataset_integrity(root)
    (p,) = only_problem(report, name)
    assert expected in p.message
    if name == "imagesTr/case_00_0000.nii":
        # SimpleITK would read the voxels of X.nii when asked for X.nii.gz: the reader refuses
        (q,) = only_problem(report, "imagesTr/case_00_0000.nii.gz")
        assert "case_00_0000.nii lies beside it" in q.message and "Remove or rename" in q.message
        assert len(report.problems) == 2
    else:
        assert len(report.problems) == 1


def test_label_without_images(tmp_path):
    root = make_3d(tmp_path)
    write_sitk(root / "labelsTr" / "case_77.nii.gz", label_array(0))
    (p,) = only_problem(check_dataset_integrity(root), "labelsTr/case_77.nii.gz")
    assert "label without images" in p.message and p.case == "case_77"


def test_label_named_like_an_image_gets_a_hint(tmp_path):
    root = make_3d(tmp_path)
    (root / "labelsTr" / "case_01.nii.gz").rename(root / "labelsTr" / "case_01_0000.nii.gz")
    report = check_dataset_integrity(root)
    (p,) = only_problem(report, "labelsTr/case_01_0000.nii.gz")
    assert "rename it to case_01.nii.gz" in p.message
    only_problem(report, "labelsTr/case_01.nii.gz")


def test_images_without_label(tmp_path):
    root = make_3d(tmp_path)
    (root / "labelsTr" / "case_02.nii.gz").unlink()
    report = check_dataset_integrity(root)
    (p,) = only_problem(report, "labelsTr/case_02.nii.gz")
    assert "no label" in p.message
    assert len(report.problems) == 1


def test_num_training_mismatch(tmp_path):
    root = make_3d(tmp_path)
    write_dataset_json(root, numTraining=5)
    (p,) = only_problem(check_dataset_integrity(root), "dataset.json")
    assert "numTraining is 5" in p.message and "3" in p.message


def test_unsafe_case_id(tmp_path):
    root = make_3d(tmp_path, n_cases=2)
    write_sitk(root / "imagesTr" / "bad case_0000.nii.gz", noise(SHAPE))
    write_sitk(root / "imagesTr" / "bad case_0001.nii.gz", noise(SHAPE))
    write_sitk(root / "labelsTr" / "bad case.nii.gz", label_array(0))
    write_dataset_json(root, numTraining=3)
    report = check_dataset_integrity(root)
    (p,) = only_problem(report, "imagesTr/bad case_0000.nii.gz")
    assert "not a safe file name" in p.message
    assert len(report.problems) == 1


# --------------------------------------------------------------------------- unreadable files


def _zero_bytes(path: Path):
    path.write_bytes(b"")


def _corrupt(path: Path):
    path.write_bytes(gzip.compress(b"this is not a nifti file" * 20))


def _truncate(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [_zero_bytes, _corrupt, _truncate], ids=["zero-bytes", "corrupt", "truncated"])
@pytest.mark.parametrize("file", ["imagesTr/case_01_0001.nii.gz", "labelsTr/case_01.nii.gz"])
def test_unreadable_file(tmp_path, damage, file):
    root = make_3d(tmp_path)
    damage(root / file)
    report = check_dataset_integrity(root)
    (p,) = only_problem(report, file)
    assert p.case == "case_01"
    assert len(report.problems) == 1, report.format()


def test_corrupt_png(tmp_path):
    root = make_png(tmp_path)
    (root / "imagesTr" / "img0_0000.png").write_bytes(b"\x89PNG garbage")
    (p,) = only_problem(check_dataset_integrity(root), "imagesTr/img0_0000.png")
    assert "corrupt" in p.message


@pytest.mark.parametrize(
    "ending, reader",
    [(".nii.gz", None), (".nii", None), (".mha", None), (".nii.gz", "NibabelIO")],
    ids=["sitk-nii.gz", "sitk-nii", "sitk-mha", "nibabel"],
)
@pytest.mark.parametrize("where", ["image", "label"])
def test_nan_intensities(tmp_path, ending, reader, where):
    root = make_3d(tmp_path, ending=ending, overwrite_image_reader_writer=reader)
    arr = noise(SHAPE)
    if where == "label":
        arr = label_array(2).astype(np.float32)
    arr[2, 3, 4] = np.nan
    arr[3, 3, 4] = np.inf
    file = f"imagesTr/case_02_0000{ending}" if where == "image" else f"labelsTr/case_02{ending}"
    write_sitk(root / file, arr)
    report = check_dataset_integrity(root)
    (p,) = only_problem(report, file)
    assert "NaN" in p.message
    if where == "image":
        assert "2 voxels" in p.message
    assert len(report.problems) == 1, report.format()


# --------------------------------------------------------------------------- geometry


def test_label_shape_mismatch(tmp_path):
    root = make_3d(tmp_path)
    write_sitk(root / "labelsTr" / "case_01.nii.gz", label_array(1, (8, 16, 15)))
    (p,) = only_problem(check_dataset_integrity(root), "labelsTr/case_01.nii.gz")
    assert "shape (8, 16, 15)" in p.message and "imagesTr/case_01_0000.nii.gz" in p.message


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"spacing": (0.6, 0.6, 3.0)}, "spacing"),
        ({"origin": (-10.0, 20.0, 8.0)}, "origin"),
        ({"direction": (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)}, "direction"),
    ],
)
@pytest.mark.parametrize("file", ["labelsTr/case_01.nii.gz", "imagesTr/case_01_0001.nii.gz"])
def test_geometry_mismatch(tmp_path, kwargs, key, file):
    root = make_3d(tmp_path)
    arr = label_array(1) if file.startswith("labels") else noise(SHAPE)
    write_sitk(root / file, arr, **kwargs)
    report = check_dataset_integrity(root)
    (p,) = only_problem(report, file)
    assert p.message.startswith(f"{key} (")
    assert "differs from imagesTr/case_01_0000.nii.gz" in p.message
    assert len(report.problems) == 1
    if key == "spacing" and file.startswith("labels"):
        assert p.format() == (
            "labelsTr/case_01.nii.gz: spacing (0.6, 0.6, 3) differs from imagesTr/case_01_0000.nii.gz "
            "(0.5, 0.5, 3); resample the label onto the image grid"
        )


def test_tiny_geometry_differences_are_tolerated(tmp_path):
    root = make_3d(tmp_path)
    write_sitk(root / "labelsTr" / "case_01.nii.gz", label_array(1), spacing=(0.50001, 0.5, 3.0),
               origin=(-10.0005, 20.0, 5.0))
    report = check_dataset_integrity(root)
    assert report.ok, report.format()


def test_png_label_shape_mismatch(tmp_path):
    root = make_png(tmp_path)
    Image.fromarray(np.zeros((20, 23), np.uint8)).save(root / "labelsTr" / "img1.png")
    (p,) = only_problem(check_dataset_integrity(root), "labelsTr/img1.png")
    assert "shape" in p.message


def test_2d_image_in_3d_dataset(tmp_path):
    root = make_3d(tmp_path, channels=("CT",))
    write_sitk(root / "imagesTr" / "case_01_0000.nii.gz", noise((16, 16)))
    write_sitk(root / "labelsTr" / "case_01.nii.gz", label_array(1, (1, 16, 16))[0])
    report = check_dataset_integrity(root)
    (p,) = only_problem(report, "imagesTr/case_01_0000.nii.gz")
    assert "is 2D but 2 of 3 cases are 3D" in p.message
    assert len(report.problems) == 1


def test_2d_label_for_3d_image(tmp_path):
    root = make_3d(tmp_path, channels=("CT",))
    write_sitk(root / "labelsTr" / "case_01.nii.gz", label_array(1, (1, 16, 16))[0])
    (p,) = only_problem(check_dataset_integrity(root), "labelsTr/case_01.nii.gz")
    assert "is 2D" in p.message


# --------------------------------------------------------------------------- labels


def test_undeclared_label_values(tmp_path):
    root = make_3d(tmp_path)
    seg = label_array(2)
    seg[0, 0, 0] = 3
    seg[0, 0, 1] = 7
    write_sitk(root / "labelsTr" / "case_02.nii.gz", seg)
    report = check_dataset_integrity(root)
    (p,) = only_problem(report, "labelsTr/case_02.nii.gz")
    assert "[3, 7]" in p.message and "not declared" in p.message
    assert len(report.problems) == 1


def test_all_labels_empty(tmp_path):
    root = make_3d(tmp_path)
    for i in range(3):
        write_sitk(root / "labelsTr" / f"case_{i:02d}.nii.gz", np.zeros(SHAPE, np.uint8))
    report = check_dataset_integrity(root)
    (p,) = only_problem(report, "labelsTr")
    assert "empty" in p.message
    assert len(report.problems) == 1


def test_one_empty_label_is_fine(tmp_path):
    root = make_3d(tmp_path)
    write_sitk(root / "labelsTr" / "case_00.nii.gz", np.zeros(SHAPE, np.uint8))
    assert check_dataset_integrity(root).ok


def test_non_integer_label(tmp_path):
    root = make_3d(tmp_path)
    write_sitk(root / "labelsTr" / "case_00.nii.gz", label_array(0).astype(np.float32) * 0.5)
    (p,) = only_problem(check_dataset_integrity(root), "labelsTr/case_00.nii.gz")
    assert "non-integer" in p.message


# --------------------------------------------------------------------------- domains


def test_domains_naming_unknown_cases(tmp_path):
    root = make_3d(tmp_path, domains={"case_00": "A", "case_01": "A", "case_02": "B", "ghost": "B"})
    report = check_dataset_integrity(root)
    (p,) = only_problem(report, "dataset.json")
    assert "ghost" in p.message and "not in imagesTr" in p.message


def test_cases_without_domain_are_an_error(tmp_path):
    root = make_3d(tmp_path, domains={"case_00": "A", "case_01": "B"})
    (p,) = only_problem(check_dataset_integrity(root), "dataset.json")
    assert "case_02" in p.message and "no domain" in p.message


def test_complete_domains_pass(tmp_path):
    root = make_3d(tmp_path, domains={"case_00": "A", "case_01": "B", "case_02": "B"})
    assert check_dataset_integrity(root).ok


# --------------------------------------------------------------------------- whole report, parallel, CLI


def _many_problems(tmp_path) -> Path:
    root = make_3d(tmp_path, n_cases=4)
    (root / "imagesTr" / "case_00_0001.nii.gz").unlink()  # missing channel
    (root / "labelsTr" / "case_01.nii.gz").write_bytes(b"")  # zero bytes
    write_sitk(root / "labelsTr" / "case_02.nii.gz", label_array(2), spacing=(0.6, 0.6, 3.0))  # spacing
    seg = label_array(3)
    seg[0, 0, 0] = 5
    write_sitk(root / "labelsTr" / "case_03.nii.gz", seg)  # undeclared value
    (root / "imagesTr" / "notes.txt").write_text("hi")  # unexpected file
    write_dataset_json(root, numTraining=7)  # wrong count
    return root


EXPECTED_FILES = {
    "imagesTr/case_00_0001.nii.gz",
    "labelsTr/case_01.nii.gz",
    "labelsTr/case_02.nii.gz",
    "labelsTr/case_03.nii.gz",
    "imagesTr/notes.txt",
    "dataset.json",
}


def test_several_problems_reported_at_once(tmp_path):
    root = _many_problems(tmp_path)
    report = check_dataset_integrity(root)
    assert {p.file for p in report.problems} == EXPECTED_FILES
    assert len(report.problems) == len(EXPECTED_FILES)
    assert len(report.format().splitlines()) == len(EXPECTED_FILES)
    with pytest.raises(DatasetIntegrityError) as exc:
        verify_dataset_integrity(root)
    msg = str(exc.value)
    assert isinstance(exc.value, ValueError)
    assert "found 6 problems" in msg and "--skip_integrity_check" in msg and "unsafe" in msg
    for f in EXPECTED_FILES:
        assert f"\n{f}: " in msg
    assert exc.value.report.problems == report.problems


def test_parallel_matches_sequential(tmp_path):
    root = _many_problems(tmp_path)
    sequential = check_dataset_integrity(root, num_processes=1)
    parallel = check_dataset_integrity(root, num_processes=2)
    assert parallel.problems == sequential.problems
    assert parallel.format() == sequential.format()


def test_cli(tmp_path, monkeypatch, capsys):
    raw = tmp_path / "raw"
    make_3d(raw)
    monkeypatch.setenv("SAMUNET_raw", str(raw))
    monkeypatch.setenv("SAMUNET_preprocessed", str(tmp_path / "pre"))
    assert main(["-d", "900"]) == 0
    assert capsys.readouterr().out.strip() == "dataset OK: 3 cases"
    (raw / "Dataset900_Test" / "labelsTr" / "case_00.nii.gz").unlink()
    assert main(["-d", "Dataset900_Test"]) == 1
    out = capsys.readouterr().out
    assert "found 1 problem:" in out and "labelsTr/case_00.nii.gz: " in out
    assert main(["-d", "999"]) == 2


# --------------------------------------------------------------------------- dataset.json property test

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 5), st.floats(allow_nan=True), st.text(max_size=5)
)
_json_values = st.recursive(
    _json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=4), children, max_size=3)),
    max_leaves=8,
)
_keys = st.sampled_from(
    ["channel_names", "labels", "numTraining", "file_ending", "domains", "modality", "overwrite_image_reader_writer"]
)
_channel_names = st.dictionaries(st.sampled_from(["0", "1", "2", "x"]), st.one_of(st.text(max_size=3), st.integers()))
_labels = st.dictionaries(st.text(max_size=3), st.one_of(st.integers(-1, 4), st.booleans(), st.lists(st.integers(0, 3))))
_dataset_dicts = st.fixed_dictionaries(
    {},
    optional={
        "channel_names": st.one_of(_channel_names, _json_values),
        "labels": st.one_of(_labels, _json_values),
        "numTraining": st.one_of(st.integers(-2, 10), _json_values),
        "file_ending": st.one_of(st.sampled_from([".nii.gz", ".png", "nii", ""]), _json_values),
        "domains": st.one_of(st.dictionaries(st.text(max_size=3), st.text(max_size=3)), _json_values),
    },
).flatmap(lambda d: st.dictionaries(_keys, _json_values, max_size=2).map(lambda extra: {**extra, **d}))


@settings(max_examples=300, deadline=None)
@given(st.one_of(_dataset_dicts, _json_values))
def test_validate_dataset_json_only_raises_dataset_json_error(d):
    try:
        validate_dataset_json(d)
    except DatasetJsonError:
        pass


# --------------------------------------------------------------------------- real data


@pytest.fixture
def prostate_raw(tmp_path) -> Path:
    if not (PROSTATE / "images").is_dir():
        pytest.skip(f"{PROSTATE} not available")
    root = tmp_path / "Dataset902_Prostate"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case in ("Case00", "Case01"):
        shutil.copy(PROSTATE / "images" / f"{case}.nii.gz", root / "imagesTr" / f"{case}_0000.nii.gz")
        shutil.copy(PROSTATE / "masks" / f"{case}_Segmentation.nii.gz", root / "labelsTr" / f"{case}.nii.gz")
    write_dataset_json(root, channel_names={"0": "T2"}, numTraining=2)
    return root


def test_prostate_subset_passes(prostate_raw):
    report = check_dataset_integrity(prostate_raw)
    assert report.ok, report.format()
    assert report.num_cases == 2


# --------------------------------------------------------------------------- groups (patients, sequences)

def make_named_png(tmp_path: Path, cases: list[str], **json_overrides) -> Path:
    """A clean grey 2D dataset with the given case names."""
    root = tmp_path / "Dataset902_Slices"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir(parents=True)
    rng = np.random.default_rng(2)
    for case in cases:
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(root / "imagesTr" / f"{case}_0000.png")
        seg = np.zeros((16, 16), np.uint8)
        seg[4:10, 4:10] = 1
        Image.fromarray(seg).save(root / "labelsTr" / f"{case}.png")
    write_dataset_json(root, channel_names={"0": "grey"}, labels={"background": 0, "prostate": 1},
                       numTraining=len(cases), file_ending=".png", **json_overrides)
    return root


SLICE_CASES = [f"BIDMC_train_{p:02d}_{s:02d}" for p in range(3) for s in range(4)]


def test_slices_of_few_patients_without_groups_warn(tmp_path, monkeypatch, capsys):
    root = make_named_png(tmp_path, SLICE_CASES)
    report = check_dataset_integrity(root)
    assert report.ok, report.format()  # a warning, not a problem
    (w,) = report.warnings
    assert w.file == "dataset.json"
    assert "12 of 12 case names look like slices or frames of 3 patients" in w.message
    assert "--group_pattern" in w.message and '"groups"' in w.message and "--new_splits" in w.message
    monkeypatch.setenv("SAMUNET_raw", str(root.parent))
    assert main(["-d", "902"]) == 0
    out = capsys.readouterr().out
    assert "warning: dataset.json: 12 of 12 case names" in out and out.strip().endswith("dataset OK: 12 cases")


@pytest.mark.parametrize("cases", [
    [f"{site}_train_00_00" for site in ("A", "B", "C", "D")],  # one slice per patient: nothing to leak
    [f"case_{i:02d}" for i in range(6)],  # plain case numbers
])
def test_no_slice_warning_when_names_do_not_share_a_patient(tmp_path, cases):
    report = check_dataset_integrity(make_named_png(tmp_path, cases))
    assert report.ok and not report.warnings, report.format_warnings()


def test_groups_silence_the_warning_and_unknown_group_cases_are_problems(tmp_path):
    groups = {c: c.rsplit("_", 1)[0] for c in SLICE_CASES}
    report = check_dataset_integrity(make_named_png(tmp_path / "a", SLICE_CASES, groups=groups))
    assert report.ok and not report.warnings, report.format_warnings()
    report = check_dataset_integrity(make_named_png(tmp_path / "b", SLICE_CASES, groups={**groups, "BIDMC_x": "p"}))
    (p,) = only_problem(report, "dataset.json")
    assert "groups names 1 case(s) not in imagesTr: BIDMC_x" in p.message


def test_group_across_domains_warns(tmp_path):
    cases = SLICE_CASES[:4]
    domains = {c: ("A" if i < 2 else "B") for i, c in enumerate(cases)}
    report = check_dataset_integrity(make_named_png(tmp_path, cases, domains=domains, groups={c: "p" for c in cases}))
    assert report.ok
    assert any("group 'p' has cases in domains ['A', 'B']" in w.message for w in report.warnings)
