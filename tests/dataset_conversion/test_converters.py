"""Dataset converters: real sample data (../shared/data) and small synthetic inputs."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from samunet.dataset_conversion.common import ConversionError, assign_case_ids, sanitise_case_id
from samunet.dataset_conversion.convert_2d_folder import convert_2d_folder
from samunet.dataset_conversion.convert_2d_folder import main as main_2d
from samunet.dataset_conversion.convert_msd import convert_msd
from samunet.dataset_conversion.convert_nifti_pairs import convert_nifti_pairs
from samunet.dataset_conversion.convert_nifti_pairs import main as main_nifti
from samunet.dataset_conversion.dataset_json import is_safe_case_id, load_dataset_json, training_cases
from samunet.imageio import reader_writer_for


def _assert_integrity(folder: Path) -> None:
    """Cross-check with the dataset integrity checker when it is available."""
    try:
        from samunet.experiment_planning.integrity import check_dataset_integrity
    except ImportError:  # pragma: no cover
        return
    report = check_dataset_integrity(folder)
    assert report.ok, report.format()


def _no_leftovers(raw: Path) -> list[str]:
    return sorted(p.name for p in raw.iterdir()) if raw.exists() else []


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


# --------------------------------------------------------------------------- NIfTI pairs

def test_nifti_pairs_prostate(shared_data, samunet_roots):
    src = shared_data / "prostate_runmc6"
    out = convert_nifti_pairs(src / "images", src / "masks", 501, "Prostate")
    assert out == samunet_roots["raw"] / "Dataset501_Prostate"
    d = load_dataset_json(out)
    assert d["labels"] == {"background": 0, "label_1": 1, "label_2": 2}
    assert d["channel_names"] == {"0": "MRI"}
    assert d["numTraining"] == 6 and d["file_ending"] == ".nii.gz"
    assert "domains" not in d
    cases = training_cases(out, d)
    assert sorted(cases) == [f"Case{i:02d}" for i in range(6)]
    for case, files in cases.items():
        assert [p.name for p in files["images"]] == [f"{case}_0000.nii.gz"]
        src_img = sitk.ReadImage(str(src / "images" / f"{case}.nii.gz"))
        src_seg = sitk.ReadImage(str(src / "masks" / f"{case}_Segmentation.nii.gz"))
        img = sitk.ReadImage(str(files["images"][0]))
        seg = sitk.ReadImage(str(files["label"]))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(src_img))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(seg), sitk.GetArrayFromImage(src_seg))
        assert img.GetSpacing() == src_img.GetSpacing()
        assert img.GetOrigin() == src_img.GetOrigin()
        assert img.GetDirection() == src_img.GetDirection()
        # the label carries the image's geometry (exactly, up to NIfTI header rounding)
        np.testing.assert_allclose(seg.GetSpacing(), src_img.GetSpacing(), rtol=0, atol=1e-9)
        np.testing.assert_allclose(seg.GetOrigin(), src_img.GetOrigin(), rtol=0, atol=1e-9)
        np.testing.assert_allclose(seg.GetDirection(), src_img.GetDirection(), rtol=0, atol=1e-9)
    _assert_integrity(out)
    # nothing but the dataset in the raw root (no temporary folders left)
    assert _no_leftovers(samunet_roots["raw"]) == ["Dataset501_Prostate"]


def test_nifti_pairs_domains_csv(shared_data, samunet_roots, tmp_path):
    src = shared_data / "prostate_runmc6"
    csv = tmp_path / "sites.csv"
    csv.write_text("case,domain\n" + "".join(f"Case{i:02d},{'A' if i < 3 else 'B'}\n" for i in range(6)))
    out = convert_nifti_pairs(src / "images", src / "masks", 501, "Prostate", mask_suffix="_Segmentation",
                              domains_csv=csv, modality="T2")
    d = load_dataset_json(out)
    assert d["channel_names"] == {"0": "T2"}
    assert d["domains"] == {f"Case{i:02d}": ("A" if i < 3 else "B") for i in range(6)}


def test_nifti_pairs_domains_csv_errors(shared_data, samunet_roots, tmp_path):
    src = shared_data / "prostate_runmc6"
    csv = tmp_path / "sites.csv"
    csv.write_text("".join(f"Case{i:02d},A\n" for i in range(6)) + "Case99,B\n")  # no header
    with pytest.raises(ConversionError, match="Case99"):
        convert_nifti_pairs(src / "images", src / "masks", 501, "Prostate", domains_csv=csv)
    csv.write_text("case,domain\nCase00,A\nCase01,A\n")
    with pytest.raises(ConversionError, match=r"no domain: Case02, Case03, Case04, Case05"):
        convert_nifti_pairs(src / "images", src / "masks", 501, "Prostate", domains_csv=csv)
    assert _no_leftovers(samunet_roots["raw"]) == []


def test_nifti_pairs_missing_mask_and_extra_mask(shared_data, samunet_roots, tmp_path):
    src = shared_data / "prostate_runmc6"
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for case in ("Case00", "Case01", "Case02"):
        shutil.copy(src / "images" / f"{case}.nii.gz", tmp_path / "images")
    for case in ("Case00", "Case02"):
        shutil.copy(src / "masks" / f"{case}_Segmentation.nii.gz", tmp_path / "masks")
    shutil.copy(src / "masks" / "Case03_Segmentation.nii.gz", tmp_path / "masks")
    with pytest.raises(ConversionError) as e:
        convert_nifti_pairs(tmp_path / "images", tmp_path / "masks", 501, "Prostate")
    assert "Case01.nii.gz" in str(e.value) and "Case03_Segmentation.nii.gz" in str(e.value)
    assert _no_leftovers(samunet_roots["raw"]) == []
    # the CLI turns it into a clean exit message
    with pytest.raises(SystemExit, match="^error: .*Case01"):
        main_nifti(["-i", str(tmp_path / "images"), "-m", str(tmp_path / "masks"), "-d", "501", "-n", "Prostate"])


def _synthetic_volume(path: Path, arr: np.ndarray, spacing=(0.7, 0.7, 3.0), origin=(-10.0, 5.0, 2.0)) -> None:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def test_nifti_pairs_synthetic_formats_geometry_and_labels(samunet_roots, tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 1000, (4, 8, 9)).astype(np.int16)
    seg = np.zeros((4, 8, 9), np.uint8)
    seg[1:3, 2:5, 2:6] = 1
    # .nrrd image, .mha mask with float noise in the header, unsafe case name, no suffix
    _synthetic_volume(tmp_path / "im" / "pat 1.nrrd", img)
    _synthetic_volume(tmp_path / "mk" / "pat 1.mha", seg, spacing=(0.7 + 1e-7, 0.7, 3.0), origin=(-10.0 + 1e-6, 5.0, 2.0))
    out = convert_nifti_pairs(tmp_path / "im", tmp_path / "mk", 7, "Syn", modality="CT")
    d = load_dataset_json(out)
    assert d["labels"] == {"background": 0, "label_1": 1} and d["channel_names"] == {"0": "CT"}
    o_img = sitk.ReadImage(str(out / "imagesTr" / "pat_1_0000.nii.gz"))
    o_seg = sitk.ReadImage(str(out / "labelsTr" / "pat_1.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(o_img), img)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(o_seg), seg)
    np.testing.assert_allclose(o_img.GetSpacing(), (0.7, 0.7, 3.0), rtol=1e-6)
    assert o_seg.GetOrigin() == o_img.GetOrigin() and o_seg.GetSpacing() == o_img.GetSpacing()
    np.testing.assert_allclose(o_img.GetDirection(), (0, 1, 0, 1, 0, 0, 0, 0, 1))
    _assert_integrity(out)

    # a large geometry mismatch names both files
    _synthetic_volume(tmp_path / "mk" / "pat 1.mha", seg, origin=(0.0, 5.0, 2.0))
    with pytest.raises(ConversionError, match=r"pat 1\.mha.*pat 1\.nrrd.*origin"):
        convert_nifti_pairs(tmp_path / "im", tmp_path / "mk", 8, "Syn")
    # non-consecutive labels
    seg2 = seg * 3
    _synthetic_volume(tmp_path / "mk" / "pat 1.mha", seg2)
    with pytest.raises(ConversionError, match=r"\[0, 3\].*consecutive"):
        convert_nifti_pairs(tmp_path / "im", tmp_path / "mk", 8, "Syn")
    assert _no_leftovers(samunet_roots["raw"]) == ["Dataset007_Syn"]


# --------------------------------------------------------------------------- 2D folders

def test_2d_prostate_slices_inverted(shared_data, samunet_roots, caplog):
    src = shared_data / "multisite_slices" / "ProstateSlice"
    with caplog.at_level(logging.WARNING):
        out = convert_2d_folder(src, 502, "ProstateSites", invert_masks=True)
    assert not [r for r in caplog.records if "invert" in r.getMessage()]
    assert any("pairing them by folder" in r.getMessage() for r in caplog.records)
    d = load_dataset_json(out)
    assert d["channel_names"] == {"0": "grey"}
    assert d["labels"] == {"background": 0, "foreground": 1}
    assert d["numTraining"] == 12 and d["file_ending"] == ".png"
    sites = ["BIDMC", "BMC", "HK", "I2CVB", "RUNMC", "UCL"]
    assert sorted(set(d["domains"].values())) == sites
    for s in sites:
        assert sorted(c for c, dom in d["domains"].items() if dom == s) == [f"{s}_test_00_00", f"{s}_train_00_0{1 if s == 'I2CVB' else 0}"]
    cases = training_cases(out, d)
    assert sorted(cases) == sorted(d["domains"])
    assert "I2CVB_train_00_01" in cases
    fg_total = 0
    for case, files in cases.items():
        site, split, *_ = case.split("_")
        src_dir = src / site / split
        src_img = next((src_dir / "image").iterdir())
        src_msk = next((src_dir / "mask").iterdir())
        seg = np.array(Image.open(files["label"]))
        assert seg.dtype == np.uint8
        np.testing.assert_array_equal(seg, (np.array(Image.open(src_msk)) == 0).astype(np.uint8))
        np.testing.assert_array_equal(np.array(Image.open(files["images"][0])), np.array(Image.open(src_img)))
        fg_total += seg.mean()
    assert 0 < fg_total / len(cases) < 0.5
    io = reader_writer_for(".png")
    data, _ = io.read_images(cases["BIDMC_train_00_00"]["images"])
    assert data.shape == (1, 1, 384, 384)
    _assert_integrity(out)


def test_2d_prostate_slices_warns_without_invert(shared_data, samunet_roots, caplog):
    src = shared_data / "multisite_slices" / "ProstateSlice"
    with caplog.at_level(logging.WARNING):
        out = convert_2d_folder(src, 502, "ProstateSites")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "--invert_masks" in r.getMessage()]
    assert len(warnings) == 1
    seg = np.array(Image.open(out / "labelsTr" / "BIDMC_train_00_00.png"))
    assert seg.mean() > 0.5  # converted as asked, but the user was told


def test_2d_fundus_label_map(shared_data, samunet_roots):
    src = shared_data / "multisite_slices" / "Fundus"
    out = convert_2d_folder(src, 503, "Fundus", label_map="255:0,128:1,0:2", label_names="disc,cup")
    d = load_dataset_json(out)
    assert d["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert d["labels"] == {"background": 0, "disc": 1, "cup": 2}
    assert sorted(set(d["domains"].values())) == ["Domain1", "Domain2", "Domain3", "Domain4"]
    assert d["numTraining"] == 8
    assert "Domain1_train_ROIs_gdrishtiGS_002" in d["domains"]
    present = set()
    for case, files in training_cases(out, d).items():
        assert len(files["images"]) == 1
        img = np.array(Image.open(files["images"][0]))
        assert img.shape == (800, 800, 3)
        seg = np.array(Image.open(files["label"]))
        present |= set(np.unique(seg).tolist())
    assert present == {0, 1, 2}
    src_msk = np.array(Image.open(src / "Domain1/train/ROIs/mask/gdrishtiGS_002.png"))[..., 0]
    seg = np.array(Image.open(out / "labelsTr" / "Domain1_train_ROIs_gdrishtiGS_002.png"))
    np.testing.assert_array_equal(seg, np.select([src_msk == 255, src_msk == 128, src_msk == 0], [0, 1, 2], 99))
    data, _ = reader_writer_for(".png").read_images([out / "imagesTr" / "Domain1_train_ROIs_gdrishtiGS_002_0000.png"])
    assert data.shape == (3, 1, 800, 800)
    _assert_integrity(out)


def test_2d_kvasir_jpeg(shared_data, samunet_roots):
    src = shared_data / "kvasir_seg5"
    out = convert_2d_folder(src, 504, "Kvasir")
    d = load_dataset_json(out)
    assert d["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert set(d["domains"].values()) == {"kvasir_seg5"} and d["numTraining"] == 5
    for jpg in sorted((src / "images").glob("*.jpg")):
        case = f"kvasir_seg5_{jpg.stem}"
        assert d["domains"][case] == "kvasir_seg5"
        png = out / "imagesTr" / f"{case}_0000.png"
        with Image.open(png) as im:
            assert im.format == "PNG"
            np.testing.assert_array_equal(np.array(im), np.array(Image.open(jpg)))
        seg = np.array(Image.open(out / "labelsTr" / f"{case}.png"))
        src_msk = np.array(Image.open(src / "masks" / jpg.name))[..., 0]
        np.testing.assert_array_equal(seg, (src_msk > 127).astype(np.uint8))
        assert 0.05 < seg.mean() < 0.4
    _assert_integrity(out)


def test_2d_clinicdb_tiff(shared_data, samunet_roots):
    """CVC-ClinicDB frames: uncompressed 3-sample TIFFs tagged greyscale, which Pillow refuses; TIFF masks."""
    src = shared_data / "clinicdb_tiff3"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    out = convert_2d_folder(src, 506, "ClinicDB")
    d = load_dataset_json(out)
    assert d["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert d["numTraining"] == 3 and set(d["domains"].values()) == {"clinicdb_tiff3"}
    for stem in ("104", "105", "106"):
        case = f"clinicdb_tiff3_{stem}"
        with Image.open(out / "imagesTr" / f"{case}_0000.png") as im:
            assert im.mode == "RGB" and im.size == (384, 288)
            np.testing.assert_array_equal(np.array(im), tifffile.imread(src / "images" / f"{stem}.tif"))
        seg = np.array(Image.open(out / "labelsTr" / f"{case}.png"))
        np.testing.assert_array_equal(seg, (tifffile.imread(src / "masks" / f"{stem}.tif") > 127).astype(np.uint8))
        assert 0.01 < seg.mean() < 0.5
    _assert_integrity(out)


def test_2d_cxr_suffix_pairing(shared_data, samunet_roots):
    out = convert_2d_folder(shared_data / "cxr_lung4", 505, "CXR")
    d = load_dataset_json(out)
    assert d["channel_names"] == {"0": "grey"}
    assert sorted(d["domains"]) == [f"cxr_lung4_{i}" for i in range(1, 5)]
    for i in range(1, 5):
        seg = np.array(Image.open(out / "labelsTr" / f"cxr_lung4_{i}.png"))
        src_msk = np.array(Image.open(shared_data / "cxr_lung4" / "masks" / f"{i}-mask.png"))
        np.testing.assert_array_equal(seg, (src_msk == 255).astype(np.uint8))
    _assert_integrity(out)


def test_refuse_existing_and_overwrite(shared_data, samunet_roots):
    raw = samunet_roots["raw"]
    out = convert_2d_folder(shared_data / "cxr_lung4", 505, "CXR")
    (out / "marker.txt").write_text("old")
    with pytest.raises(ConversionError, match="already exists.*--overwrite"):
        convert_2d_folder(shared_data / "cxr_lung4", 505, "CXR")
    with pytest.raises(ConversionError, match=r"ID 505 is already used by .*Dataset505_CXR"):
        convert_2d_folder(shared_data / "cxr_lung4", 505, "Other")
    with pytest.raises(SystemExit, match="^error: .*already exists"):
        main_2d(["-i", str(shared_data / "cxr_lung4"), "-d", "505", "-n", "CXR"])
    assert (out / "marker.txt").exists()
    assert main_2d(["-i", str(shared_data / "cxr_lung4"), "-d", "505", "-n", "CXR", "--overwrite"]) is None
    assert not (out / "marker.txt").exists()
    # with --overwrite a different name for a used ID is allowed; the other folder is left alone
    other = convert_2d_folder(shared_data / "cxr_lung4", 505, "Other", overwrite=True)
    assert other.is_dir() and out.is_dir()
    shutil.rmtree(other)
    assert load_dataset_json(out)["numTraining"] == 4
    assert _no_leftovers(raw) == ["Dataset505_CXR"]


def test_2d_failed_conversion_leaves_nothing(samunet_roots, tmp_path):
    raw = samunet_roots["raw"]
    src = tmp_path / "site"
    _png(src / "images" / "a.png", np.zeros((10, 10), np.uint8))
    _png(src / "masks" / "a.png", np.full((10, 10), 255, np.uint8))
    _png(src / "images" / "b.png", np.zeros((10, 10), np.uint8))
    _png(src / "masks" / "b.png", np.zeros((12, 10), np.uint8))  # wrong size, converted after "a"
    with pytest.raises(ConversionError, match=r"masks/b\.png.*10x12.*images/b\.png.*10x10"):
        convert_2d_folder(src, 510, "Broken")
    assert _no_leftovers(raw) == []
    # an existing dataset survives a failed overwrite
    _png(src / "masks" / "b.png", np.zeros((10, 10), np.uint8))
    convert_2d_folder(src, 510, "Broken")
    _png(src / "masks" / "b.png", np.zeros((12, 10), np.uint8))
    with pytest.raises(ConversionError):
        convert_2d_folder(src, 510, "Broken", overwrite=True)
    assert _no_leftovers(raw) == ["Dataset510_Broken"]
    assert load_dataset_json(raw / "Dataset510_Broken")["numTraining"] == 2


def test_2d_input_errors(samunet_roots, tmp_path):
    # unpaired files are all listed
    src = tmp_path / "s1"
    _png(src / "image" / "a.png", np.zeros((4, 4), np.uint8))
    _png(src / "image" / "b.png", np.zeros((4, 4), np.uint8))
    _png(src / "mask" / "a_mask.png", np.zeros((4, 4), np.uint8))
    _png(src / "mask" / "c.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ConversionError, match=r"(?s)image/b\.png.*mask/c\.png"):
        convert_2d_folder(src, 511, "X")
    # colour mask with differing channels
    src = tmp_path / "s2"
    _png(src / "image" / "a.png", np.zeros((4, 4), np.uint8))
    m = np.zeros((4, 4, 3), np.uint8)
    m[0, 0] = (255, 0, 0)
    _png(src / "mask" / "a.png", m)
    with pytest.raises(ConversionError, match=r"a\.png: colour mask"):
        convert_2d_folder(src, 511, "X")
    # grey and RGB images mixed
    src = tmp_path / "s3"
    _png(src / "image" / "a.png", np.zeros((4, 4), np.uint8))
    _png(src / "image" / "b.png", np.zeros((4, 4, 3), np.uint8))
    _png(src / "mask" / "a.png", np.zeros((4, 4), np.uint8))
    _png(src / "mask" / "b.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ConversionError, match="must all be grey or all RGB"):
        convert_2d_folder(src, 511, "X")
    # label map: values within 32 grey levels snap to the nearest listed value, others fail
    src = tmp_path / "s4"
    _png(src / "image" / "a.png", np.zeros((2, 3), np.uint8))
    _png(src / "mask" / "a.png", np.array([[255, 250, 128], [140, 0, 20]], np.uint8))
    out = convert_2d_folder(src, 511, "X", label_map="255:0,128:1,0:2")
    np.testing.assert_array_equal(np.array(Image.open(out / "labelsTr" / "s4_a.png")), [[0, 0, 1], [1, 2, 2]])
    assert load_dataset_json(out)["labels"] == {"background": 0, "label_1": 1, "label_2": 2}
    _png(src / "mask" / "a.png", np.array([[255, 60, 128], [128, 0, 0]], np.uint8))
    with pytest.raises(ConversionError, match=r"a\.png: mask values \[60\]"):
        convert_2d_folder(src, 512, "X", label_map="255:0,128:1,0:2")
    with pytest.raises(ConversionError, match="label_map"):
        convert_2d_folder(src, 512, "X", label_map="255:0,128:3")
    with pytest.raises(ConversionError, match="label_names"):
        convert_2d_folder(src, 512, "X", label_map="255:0,128:1,0:2", label_names="disc")


def test_case_id_sanitising(samunet_roots, tmp_path):
    assert sanitise_case_id("pat 1 (left)") == "pat_1__left_"
    assert sanitise_case_id("..x/../y") == "x___y"
    assert is_safe_case_id(sanitise_case_id("_ä.b"))
    with pytest.raises(ConversionError, match="same case id"):
        assign_case_ids(["a b", "a_b"])
    src = tmp_path / "site"
    for stem in ("a b", "a_b"):
        _png(src / "images" / f"{stem}.png", np.zeros((4, 4), np.uint8))
        _png(src / "masks" / f"{stem}.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ConversionError, match=r"a b\.png.*a_b\.png"):
        convert_2d_folder(src, 513, "X")


# --------------------------------------------------------------------------- MSD

def _msd_task(root: Path) -> Path:
    task = root / "Task05_Prostate"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (task / sub).mkdir(parents=True)
    rng = np.random.default_rng(1)
    spacing, origin = (0.6, 0.6, 3.6), (-90.0, -80.0, 10.0)
    arrays = {}
    for case, folder in (("prostate_00", "imagesTr"), ("prostate_01", "imagesTr"), ("prostate_03", "imagesTs")):
        chans = [rng.integers(0, 500, (5, 6, 7)).astype(np.float32) for _ in range(2)]
        vols = []
        for c in chans:
            v = sitk.GetImageFromArray(c)
            v.SetSpacing(spacing)
            v.SetOrigin(origin)
            vols.append(v)
        img4 = sitk.JoinSeries(vols)
        assert img4.GetDimension() == 4 and sitk.GetArrayFromImage(img4).shape == (2, 5, 6, 7)
        sitk.WriteImage(img4, str(task / folder / f"{case}.nii.gz"))
        arrays[case] = chans
        if folder == "imagesTr":
            seg = np.zeros((5, 6, 7), np.uint8)
            seg[1:4, 2:4, 2:5] = 1
            seg[2, 3, 3] = 2
            s = sitk.GetImageFromArray(seg)
            s.SetSpacing(spacing)
            s.SetOrigin(origin)
            sitk.WriteImage(s, str(task / "labelsTr" / f"{case}.nii.gz"))
    (task / "imagesTr" / "._prostate_00.nii.gz").write_bytes(b"macOS junk")
    (task / "dataset.json").write_text(json.dumps({
        "name": "PROSTATE", "description": "Prostate transitional zone and peripheral zone segmentation",
        "reference": "Radboud University", "licence": "CC-BY-SA 4.0", "tensorImageSize": "4D",
        "modality": {"0": "T2", "1": "ADC"},
        "labels": {"0": "background", "1": "PZ", "2": "TZ"},
        "numTraining": 2, "numTest": 1,
        "training": [{"image": f"./imagesTr/prostate_0{i}.nii.gz", "label": f"./labelsTr/prostate_0{i}.nii.gz"} for i in (0, 1)],
        "test": ["./imagesTs/prostate_03.nii.gz"],
    }))
    return task, arrays


def test_msd_4d_split(samunet_roots, tmp_path):
    task, arrays = _msd_task(tmp_path)
    out = convert_msd(task)
    assert out.name == "Dataset005_Prostate"
    d = load_dataset_json(out)
    assert d["channel_names"] == {"0": "T2", "1": "ADC"}
    assert d["labels"] == {"background": 0, "PZ": 1, "TZ": 2}
    assert d["numTraining"] == 2 and d["file_ending"] == ".nii.gz"
    assert d["licence"] == "CC-BY-SA 4.0"
    cases = training_cases(out, d)
    assert sorted(cases) == ["prostate_00", "prostate_01"]
    for case, files in cases.items():
        assert [p.name for p in files["images"]] == [f"{case}_0000.nii.gz", f"{case}_0001.nii.gz"]
        for c, f in enumerate(files["images"]):
            im = sitk.ReadImage(str(f))
            assert im.GetDimension() == 3
            np.testing.assert_array_equal(sitk.GetArrayFromImage(im), arrays[case][c])
            np.testing.assert_allclose(im.GetSpacing(), (0.6, 0.6, 3.6), rtol=1e-6)
            np.testing.assert_allclose(im.GetOrigin(), (-90.0, -80.0, 10.0), rtol=1e-6)
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(files["label"])))
        assert set(np.unique(seg).tolist()) == {0, 1, 2}
    ts = sorted(p.name for p in (out / "imagesTs").iterdir())
    assert ts == ["prostate_03_0000.nii.gz", "prostate_03_0001.nii.gz"]
    _assert_integrity(out)

    out2 = convert_msd(task, dataset_id=505)
    assert out2.name == "Dataset505_Prostate"
    with pytest.raises(ConversionError, match="already exists"):
        convert_msd(task)


def test_msd_channel_count_mismatch(samunet_roots, tmp_path):
    task, _ = _msd_task(tmp_path)
    dj = json.loads((task / "dataset.json").read_text())
    dj["modality"] = {"0": "T2"}
    (task / "dataset.json").write_text(json.dumps(dj))
    with pytest.raises(ConversionError, match=r"prostate_00\.nii\.gz: holds 2 channels"):
        convert_msd(task)
    assert _no_leftovers(samunet_roots["raw"]) == []
