"""Reader/writer geometry round trips (NIfTI through SimpleITK and nibabel, PNG) and 2D image reading
(TIFF through tifffile, the rest through Pillow)."""

import struct

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from samunet.imageio import ImageReadError, reader_writer_for
from samunet.imageio.natural_image_io import read_natural_image
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


# --------------------------------------------------------------------------- TIFF (tifffile) and image errors

CLINICDB_TIFF = ("104", "105", "106")


def _clinicdb_like_tiff(path, arr: np.ndarray) -> None:
    """An uncompressed 8-bit 3-sample TIFF tagged greyscale (BlackIsZero), pixel data first and the image
    directory last: the layout of the official CVC-ClinicDB frames, which Pillow refuses."""
    h, w, s = arr.shape
    data = np.ascontiguousarray(arr, np.uint8).tobytes()
    bits_at = 8 + len(data) + len(data) % 2  # TIFF offsets are word-aligned
    ifd_at = bits_at + 2 * s
    tags = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, s, bits_at), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 4, 1, 8), (277, 3, 1, s), (278, 3, 1, h), (279, 4, 1, len(data)), (284, 3, 1, 1)]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHII", t, typ, n, v) if typ == 4 or n > 1 else struct.pack("<HHIHH", t, typ, n, v, 0)
        for t, typ, n, v in tags
    ) + struct.pack("<I", 0)
    bits = struct.pack(f"<{s}H", *([8] * s))
    path.write_bytes(b"II*\x00" + struct.pack("<I", ifd_at) + data.ljust(bits_at - 8, b"\0") + bits + ifd)


def _rgb(shape=(7, 9, 3), seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_clinicdb_tiff_frames_read_as_rgb(shared_data):
    src = shared_data / "clinicdb_tiff3"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    for stem in CLINICDB_TIFF:
        img = read_natural_image(src / "images" / f"{stem}.tif")
        assert img.shape == (288, 384, 3) and img.dtype == np.uint8
        np.testing.assert_array_equal(img, tifffile.imread(src / "images" / f"{stem}.tif"))
        assert not np.all(img == img[..., :1]), "colour frames came out grey"
        data, props = reader_writer_for(".tif").read_images([src / "images" / f"{stem}.tif"])
        assert data.shape == (3, 1, 288, 384) and props["natural_dtype"] == "uint8"
        msk = read_natural_image(src / "masks" / f"{stem}.tif")
        assert msk.shape == (288, 384) and 0 < (msk > 127).mean() < 0.5


def test_clinicdb_layout_tiff_without_shared_data(tmp_path):
    rgb = _rgb()
    _clinicdb_like_tiff(tmp_path / "frame.tif", rgb)
    np.testing.assert_array_equal(read_natural_image(tmp_path / "frame.tif"), rgb)


@pytest.mark.parametrize("planar", [True, False], ids=["planar-SYX", "contig-YXS"])
def test_tiff_three_greyscale_samples_are_rgb(tmp_path, planar):
    rgb = _rgb()
    stored = np.moveaxis(rgb, -1, 0) if planar else rgb
    tifffile.imwrite(tmp_path / "x.tif", stored, photometric="minisblack",
                     planarconfig="separate" if planar else "contig")
    out = read_natural_image(tmp_path / "x.tif")
    assert out.shape == (7, 9, 3)
    np.testing.assert_array_equal(out, rgb)


def test_16bit_tiff_keeps_values(tmp_path):
    grey = (np.arange(63, dtype=np.uint16).reshape(7, 9) * 1000)
    tifffile.imwrite(tmp_path / "g.tif", grey)
    out = read_natural_image(tmp_path / "g.tif")
    assert out.dtype == np.uint16 and out.max() == 62000
    np.testing.assert_array_equal(out, grey)
    rgb = _rgb().astype(np.uint16) * 257
    tifffile.imwrite(tmp_path / "c.tif", rgb, photometric="rgb")
    data, _ = reader_writer_for(".tif").read_images([tmp_path / "c.tif"])
    np.testing.assert_array_equal(data[:, 0].transpose(1, 2, 0), rgb.astype(np.float32))  # no 8-bit loss


def test_float_tiff(tmp_path):
    a = np.random.default_rng(2).normal(size=(6, 8)).astype(np.float64)
    tifffile.imwrite(tmp_path / "f.tif", a)
    out = read_natural_image(tmp_path / "f.tif")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, a, rtol=1e-6)
    a[2, 3] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", a)
    with pytest.raises(ImageReadError, match="nan.tif.*NaN"):
        read_natural_image(tmp_path / "nan.tif")


def test_tiff_alpha(tmp_path):
    rgba = np.dstack([_rgb(), np.full((7, 9), 255, np.uint8)])
    tifffile.imwrite(tmp_path / "a.tif", rgba, photometric="rgb")
    np.testing.assert_array_equal(read_natural_image(tmp_path / "a.tif"), rgba[..., :3])
    rgba[0, 0, 3] = 0
    tifffile.imwrite(tmp_path / "b.tif", rgba, photometric="rgb")
    with pytest.raises(ImageReadError, match="b.tif.*non-constant alpha"):
        read_natural_image(tmp_path / "b.tif")


@pytest.mark.parametrize("compression", [None, "tiff_lzw", "packbits", "tiff_adobe_deflate"])
@pytest.mark.parametrize("mode", ["L", "RGB", "P", "1", "I;16"])
def test_tiff_reads_as_pillow_does(tmp_path, mode, compression):
    """TIFFs Pillow reads without losing bits come out the same (LZW goes through Pillow: no imagecodecs)."""
    rgb = _rgb((12, 10, 3))
    im = {"L": lambda: Image.fromarray(rgb[..., 0]), "RGB": lambda: Image.fromarray(rgb),
          "P": lambda: Image.fromarray(rgb).quantize(8), "1": lambda: Image.fromarray(rgb[..., 0] > 127),
          "I;16": lambda: Image.fromarray(rgb[..., 0].astype(np.uint16) * 250)}[mode]()
    if mode == "I;16" and compression in ("tiff_lzw", "tiff_adobe_deflate"):
        compression = None  # Pillow cannot write compressed 16-bit TIFFs
    im.save(tmp_path / "p.tif", compression=compression)
    with Image.open(tmp_path / "p.tif") as ref:
        want = np.array(ref.convert("RGB") if ref.mode == "P" else ref)
    out = read_natural_image(tmp_path / "p.tif")
    np.testing.assert_array_equal(out, want.astype(np.uint8) if want.dtype == bool else want)


def test_multipage_tiff_refused(tmp_path):
    with tifffile.TiffWriter(tmp_path / "stack.tif") as tw:
        for i in range(3):
            tw.write(np.full((5, 6), i, np.uint8))
    with pytest.raises(ImageReadError, match=r"stack\.tif.*3 pages.*one 2D image per file") as e:
        read_natural_image(tmp_path / "stack.tif")
    assert "NIfTI" in str(e.value)


def test_3d_tiff_refused(tmp_path):
    tifffile.imwrite(tmp_path / "vol.tif", np.zeros((5, 16, 16), np.uint8), volumetric=True, tile=(16, 16))
    with pytest.raises(ImageReadError, match=r"vol\.tif.*5 slices.*one 2D image per file"):
        read_natural_image(tmp_path / "vol.tif")


@pytest.mark.parametrize("layout", ["directory-first", "directory-last"])
def test_truncated_tiff_refused_anywhere(tmp_path, layout):
    """Cut after any byte, a TIFF is refused as truncated, never read (tifffile would fill the rest)."""
    full = tmp_path / "full.tif"
    if layout == "directory-first":
        tifffile.imwrite(full, _rgb((4, 5, 3)), description="x" * 40)
    else:
        _clinicdb_like_tiff(full, _rgb((4, 5, 3)))
    blob = full.read_bytes()
    read_natural_image(full)
    cut = tmp_path / "cut.tif"
    for n in range(1, len(blob)):
        cut.write_bytes(blob[:n])
        with pytest.raises(ImageReadError, match=r"cut\.tif: the TIFF file is truncated"):
            read_natural_image(cut)


def test_png_named_tif_is_read_by_content(tmp_path):
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "x.png")
    (tmp_path / "x.tif").write_bytes((tmp_path / "x.png").read_bytes())
    np.testing.assert_array_equal(read_natural_image(tmp_path / "x.tif"), rgb)


def test_not_an_image_says_so(tmp_path):
    (tmp_path / "notes.png").write_text("patient 12, left lung\n")
    with pytest.raises(ImageReadError, match=r"notes\.png: is not in a recognised image format.*text"):
        read_natural_image(tmp_path / "notes.png")
    (tmp_path / "notes.tif").write_text("patient 12, left lung\n")
    with pytest.raises(ImageReadError, match=r"notes\.tif: is not a TIFF file"):
        read_natural_image(tmp_path / "notes.tif")


def test_pillow_errors_tell_truncated_from_corrupt(tmp_path):
    rgb = _rgb((40, 50, 3))
    Image.fromarray(rgb).save(tmp_path / "x.jpg")
    blob = (tmp_path / "x.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.jpg: the JPEG file is truncated"):
        read_natural_image(tmp_path / "cut.jpg")
    Image.fromarray(rgb).save(tmp_path / "x.png")
    png = bytearray((tmp_path / "x.png").read_bytes())
    i = png.find(b"IDAT") + 20
    png[i:i + 40] = bytes(b ^ 0x55 for b in png[i:i + 40])  # damaged inside, still ends with IEND
    (tmp_path / "bad.png").write_bytes(bytes(png))
    with pytest.raises(ImageReadError, match=r"bad\.png: the PNG file is corrupt") as e:
        read_natural_image(tmp_path / "bad.png")
    assert "truncated" not in str(e.value)
    (tmp_path / "head.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ImageReadError, match=r"head\.png: starts like a PNG file but its header is corrupt"):
        read_natural_image(tmp_path / "head.png")
