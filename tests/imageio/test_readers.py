"""Reader/writer geometry round trips (NIfTI through SimpleITK and nibabel, PNG)."""

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from samunet.imageio import ImageReadError, reader_writer_for
from samunet.imageio.nibabel_io import NibabelIO
from samunet.imageio.sitk_io import SimpleITKIO


def _oblique_image(path, shape=(5, 12, 10), spacing=(0.7, 0.8, 3.3), dtype=np.int16, values=None):
    arr = values if values is not None else np.random.default_rng(0).integers(0, 3, shape).astype(dtype)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin((-12.5, 30.25, 7.0))
    c, s = np.cos(0.3), np.sin(0.3)
    img.SetDirection((1, 0, 0, 0, c, -s, 0, s, c))
    sitk.WriteImage(img, str(path))
    return arr, img


def test_sitk_seg_roundtrip_keeps_geometry(tmp_path):
    arr, img = _oblique_image(tmp_path / "lab.nii.gz")
    rw = SimpleITKIO()
    seg, props = rw.read_seg(tmp_path / "lab.nii.gz")
    assert seg.shape == (1,) + arr.shape
    assert props["spacing"] == pytest.approx([3.3, 0.8, 0.7])  # array order (z, y, x)
    rw.write_seg(seg[0], tmp_path / "out.nii.gz", props)
    back = sitk.ReadImage(str(tmp_path / "out.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr)
    assert back.GetSpacing() == pytest.approx(img.GetSpacing())
    assert back.GetOrigin() == pytest.approx(img.GetOrigin())
    assert back.GetDirection() == pytest.approx(img.GetDirection())
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


def test_real_prostate_roundtrip(shared_data, tmp_path):
    f = shared_data / "prostate_runmc6" / "masks" / "Case00_Segmentation.nii.gz"
    rw = SimpleITKIO()
    seg, props = rw.read_seg(f)
    rw.write_seg(seg[0], tmp_path / "x.nii.gz", props)
    a, b = sitk.ReadImage(str(f)), sitk.ReadImage(str(tmp_path / "x.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(a, getter)() == pytest.approx(getattr(b, getter)(), abs=1e-6)


def test_nibabel_reader_matches_sitk(tmp_path):
    arr, _ = _oblique_image(tmp_path / "img.nii.gz", dtype=np.int16)
    d1, p1 = SimpleITKIO().read_images([tmp_path / "img.nii.gz"])
    d2, p2 = NibabelIO().read_images([tmp_path / "img.nii.gz"])
    np.testing.assert_array_equal(d1, d2)
    assert p1["spacing"] == pytest.approx(p2["spacing"])
    seg, props = NibabelIO().read_seg(tmp_path / "img.nii.gz")
    NibabelIO().write_seg(seg[0], tmp_path / "o.nii.gz", props)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "o.nii.gz"))), arr)


def test_png_rgb_and_grey(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a_0000.png")
    rw = reader_writer_for(".png")
    data, props = rw.read_images([tmp_path / "a_0000.png"])
    assert data.shape == (3, 1, 7, 9)
    np.testing.assert_array_equal(data[:, 0].transpose(1, 2, 0), rgb)
    lab = np.zeros((7, 9), np.uint8)
    lab[2:5, 3:6] = 2
    rw.write_seg(lab[None], tmp_path / "lab.png", props)
    seg, _ = rw.read_seg(tmp_path / "lab.png")
    np.testing.assert_array_equal(seg[0, 0], lab)


def test_rgb_mask_with_colours_is_refused(tmp_path):
    m = np.zeros((4, 4, 3), np.uint8)
    m[0, 0] = (255, 0, 0)
    Image.fromarray(m).save(tmp_path / "m.png")
    with pytest.raises(ImageReadError, match="m.png"):
        reader_writer_for(".png").read_seg(tmp_path / "m.png")


def test_16bit_png(tmp_path):
    a = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000)
    Image.fromarray(a).save(tmp_path / "x_0000.png")
    data, _ = reader_writer_for(".png").read_images([tmp_path / "x_0000.png"])
    np.testing.assert_array_equal(data[0, 0], a)


@pytest.mark.parametrize("content", [b"", b"not an image at all"])
def test_corrupt_files_named(tmp_path, content):
    for name in ("bad.nii.gz", "bad.png"):
        (tmp_path / name).write_bytes(content)
        rw = reader_writer_for(".nii.gz" if name.endswith("gz") else ".png")
        with pytest.raises(ImageReadError, match="bad"):
            rw.read_images([tmp_path / name])


def test_nan_image_refused(tmp_path):
    a = np.ones((3, 4, 4), np.float32)
    a[1, 2, 2] = np.nan
    # SimpleITK's NIfTI reader turns NaN into 0, so the check is exercised through .mha
    sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp_path / "n.mha"))
    with pytest.raises(ImageReadError, match="NaN"):
        SimpleITKIO().read_images([tmp_path / "n.mha"])


def test_4d_image_refused_with_fix(tmp_path):
    vols = [sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32)) for _ in range(2)]
    sitk.WriteImage(sitk.JoinSeries(vols), str(tmp_path / "four.nii.gz"))
    with pytest.raises(ImageReadError, match="4D"):
        SimpleITKIO().read_images([tmp_path / "four.nii.gz"])


def test_unknown_ending():
    with pytest.raises(ValueError, match="supported"):
        reader_writer_for(".xyz")


def test_truncated_nifti_gz_refused(tmp_path):
    arr = np.random.default_rng(0).normal(size=(20, 40, 40)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "full.nii.gz"))
    blob = (tmp_path / "full.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(blob[: len(blob) * 2 // 3])
    SimpleITKIO().read_images([tmp_path / "full.nii.gz"])
    with pytest.raises(ImageReadError, match="truncated"):
        SimpleITKIO().read_images([tmp_path / "cut.nii.gz"])
