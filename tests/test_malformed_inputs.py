"""Malformed inputs, one parametrised case each, run through the command-line entry points.

Every case in :data:`REFUSALS` builds a small broken dataset (or converter input) in
``tmp_path`` and runs the CLI's ``main(argv)``. It must exit with one error that names the
offending file (or dataset.json and its key) and says how to fix it; nothing may be
written to the preprocessed/results roots (nor stray files to the raw root) and no input
file may change. :data:`ACCEPTED` lists unusual inputs that are valid and must go through.
Property-based tests at the end feed arbitrary dataset.json text and arbitrary or truncated
bytes to the parser and the readers.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from samunet.dataset_conversion.convert_nifti_pairs import main as convert_nifti_pairs_main
from samunet.experiment_planning.plan_and_preprocess import main as plan_main

SHAPE = (4, 12, 12)  # (z, y, x)
SPACING = (0.8, 0.8, 3.0)  # SimpleITK order (x, y, z)
ORIGIN = (1.0, -2.0, 3.0)
NAME = "Dataset900_Bad"


# --------------------------------------------------------------------------- builders


def noise(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).normal(100, 20, shape).astype(dtype)


def label(shape=SHAPE, value=1):
    seg = np.zeros(shape, np.uint8)
    seg[..., 3:8, 4:9] = value
    return seg


def write_sitk(path: Path, arr, spacing=SPACING, origin=ORIGIN, direction=None, vector=False):
    img = sitk.GetImageFromArray(arr, isVector=vector)
    dim = img.GetDimension()
    img.SetSpacing(tuple(spacing)[:dim])
    img.SetOrigin(tuple(origin)[:dim])
    if direction is not None:
        img.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def dataset_json(root: Path, **changes) -> dict:
    d = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "organ": 1}, "numTraining": 3,
         "file_ending": ".nii.gz"}
    d.update(changes)
    (root / "dataset.json").write_text(json.dumps({k: v for k, v in d.items() if v is not None}))
    return d


def make_3d(raw: Path, channels=1, domains=None, **json_changes) -> Path:
    """A clean dataset: cases c00, c01, c02, shape SHAPE, ``channels`` files each."""
    root = raw / NAME
    for i in range(3):
        for c in range(channels):
            write_sitk(root / "imagesTr" / f"c{i:02d}_{c:04d}.nii.gz", noise(SHAPE, seed=10 * i + c))
        write_sitk(root / "labelsTr" / f"c{i:02d}.nii.gz", label())
    dataset_json(root, channel_names={str(c): f"MR{c}" for c in range(channels)}, domains=domains, **json_changes)
    return root


def make_png(raw: Path, rgb=False) -> Path:
    root = raw / NAME
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(3):
        img = noise((20, 24, 3) if rgb else (20, 24), seed=i).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "imagesTr" / f"p{i}_0000.png")
        Image.fromarray(label((20, 24))).save(root / "labelsTr" / f"p{i}.png")
    dataset_json(root, channel_names={"0": "R", "1": "G", "2": "B"} if rgb else {"0": "grey"}, file_ending=".png")
    return root


def png16(path: Path, arr: np.ndarray, colour_type: int) -> None:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour)."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


# --------------------------------------------------------------------------- the refusals


@dataclass
class Env:
    raw: Path  # SAMUNET_raw
    tmp: Path  # for converter inputs
    monkeypatch: pytest.MonkeyPatch


@dataclass
class Refusal:
    """Build the bad input in ``env``; return what the error must say."""
    build: Callable[[Env], None]
    file: str  # the offending file as the message names it
    fix: str  # a phrase of the fix
    run: str = "plan"  # plan | convert | train
    problems: int | None = 1  # integrity problems expected in the report (None: not an integrity error)


def _plan(env):
    plan_main(["-d", "900", "-np", "1"])


def _convert(env):
    convert_nifti_pairs_main(["-i", str(env.tmp / "images"), "-m", str(env.tmp / "masks"), "-d", "900", "-n", "New"])


def _train(env):
    from samunet.run.train import main as train_main

    train_main(["900", "domain_C", "-tr", "ResNetTrainer", "-device", "cpu"])


RUNNERS = {"plan": _plan, "convert": _convert, "train": _train}


def _edit_label(name, arr, **kw):
    return lambda env: (make_3d(env.raw), write_sitk(env.raw / NAME / "labelsTr" / name, arr, **kw))


def _edit_image(name, arr, channels=1, **kw):
    return lambda env: (make_3d(env.raw, channels), write_sitk(env.raw / NAME / "imagesTr" / name, arr, **kw))


def _with_json(**changes):
    return lambda env: (make_3d(env.raw), dataset_json(env.raw / NAME, **changes))


def _json_text(text: str | bytes):
    def build(env):
        root = make_3d(env.raw)
        p = root / "dataset.json"
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return build


def _damage(name, how):
    def build(env):
        root = make_3d(env.raw)
        p = root / name
        data = p.read_bytes()
        p.write_bytes({"zero": b"", "truncate": data[: len(data) * 2 // 3],
                       "corrupt": gzip.compress(b"not an image at all " * 30)}[how])
    return build


def _rename_case(new):
    def build(env):
        root = make_3d(env.raw)
        (root / "imagesTr" / "c02_0000.nii.gz").rename(root / "imagesTr" / f"{new}_0000.nii.gz")
        (root / "labelsTr" / "c02.nii.gz").rename(root / "labelsTr" / f"{new}.nii.gz")
    return build


def _all_labels_empty(env):
    root = make_3d(env.raw)
    for i in range(3):
        write_sitk(root / "labelsTr" / f"c{i:02d}.nii.gz", np.zeros(SHAPE, np.uint8))


def _two_d_in_three_d(env):
    root = make_3d(env.raw)
    write_sitk(root / "imagesTr" / "c01_0000.nii.gz", noise(SHAPE[1:]))
    write_sitk(root / "labelsTr" / "c01.nii.gz", label(SHAPE[1:]))


def _three_d_in_two_d(env):
    root = make_3d(env.raw)
    for i in (0, 2):
        write_sitk(root / "imagesTr" / f"c{i:02d}_0000.nii.gz", noise(SHAPE[1:], seed=i))
        write_sitk(root / "labelsTr" / f"c{i:02d}.nii.gz", label(SHAPE[1:]))


def _four_d(env):
    root = make_3d(env.raw)
    write_sitk(root / "imagesTr" / "c01_0000.nii.gz", noise((2,) + SHAPE), spacing=SPACING + (1.0,),
               origin=ORIGIN + (0.0,))


def _extra_file(env):
    root = make_3d(env.raw)
    (root / "imagesTr" / "notes.txt").write_text("scanner settings")


def _nii_sibling(env):
    root = make_3d(env.raw)
    write_sitk(root / "imagesTr" / "c01_0000.nii", noise(SHAPE, seed=99))


def _png_rgb_mask(env):
    root = make_png(env.raw)
    mask = np.zeros((20, 24, 3), np.uint8)
    mask[3:9, 4:10] = (255, 0, 0)
    Image.fromarray(mask).save(root / "labelsTr" / "p1.png")


def _png16_colour(env):
    root = make_png(env.raw, rgb=True)
    img = np.random.default_rng(0).integers(0, 65535, (20, 24, 3)).astype(np.uint16)
    png16(root / "imagesTr" / "p2_0000.png", img, colour_type=2)


def _huge_image(env):
    root = make_3d(env.raw)
    write_sitk(root / "imagesTr" / "c01_0000.nii.gz", noise((40, 96, 96)))
    write_sitk(root / "labelsTr" / "c01.nii.gz", label((40, 96, 96)))
    env.monkeypatch.setenv("SAMUNET_MEMORY_BUDGET_GB", str(2 / 1024))  # 2 MiB: the 40x96x96 case needs 8.4 MiB


def _label_without_image(env):
    root = make_3d(env.raw)
    write_sitk(root / "labelsTr" / "c07.nii.gz", label())


def _missing_label(env):
    root = make_3d(env.raw)
    (root / "labelsTr" / "c01.nii.gz").unlink()


def _missing_channel(env):
    root = make_3d(env.raw, channels=2)
    (root / "imagesTr" / "c01_0001.nii.gz").unlink()


def _extra_channel(env):
    root = make_3d(env.raw)
    write_sitk(root / "imagesTr" / "c00_0001.nii.gz", noise(SHAPE, seed=5))


def _converter_inputs(env, names=("a", "b", "c")):
    for n in names:
        write_sitk(env.tmp / "images" / f"{n}.nii.gz", noise(SHAPE))
        write_sitk(env.tmp / "masks" / f"{n}.nii.gz", label())


def _id_collision(env):
    make_3d(env.raw)  # Dataset900_Bad exists; converting to Dataset900_New must refuse
    _converter_inputs(env)


def _duplicate_case_ids(env):
    _converter_inputs(env, names=("case 1", "case_1", "case2"))


def _ambiguous_id(env):
    make_3d(env.raw)
    (env.raw / "Dataset900_Other").mkdir()


def _single_case_domain(env):
    make_3d(env.raw, domains={"c00": "A", "c01": "A", "c02": "C"})
    plan_main(["-d", "900", "-np", "1"])  # planning works and notes that domain C gets no fold


def _constant(env):
    make_3d(env.raw)
    write_sitk(env.raw / NAME / "imagesTr" / "c01_0000.nii.gz", np.full(SHAPE, 7.0, np.float32))


def _nan(value):
    def build(env):
        arr = noise(SHAPE)
        arr[1, 2, 3] = value
        make_3d(env.raw)
        write_sitk(env.raw / NAME / "imagesTr" / "c01_0000.nii.gz", arr)
    return build


ROT = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
IMG1, LAB1 = "imagesTr/c01_0000.nii.gz", "labelsTr/c01.nii.gz"

REFUSALS = {
    # geometry
    "shape_mismatch": Refusal(_edit_label("c01.nii.gz", label((4, 12, 11))), LAB1, "resample the label onto the image grid"),
    "spacing_mismatch": Refusal(_edit_label("c01.nii.gz", label(), spacing=(0.9, 0.8, 3.0)), LAB1, "resample the label"),
    "origin_mismatch": Refusal(_edit_label("c01.nii.gz", label(), origin=(1.0, -2.0, 9.0)), LAB1, "resample the label"),
    "direction_mismatch": Refusal(_edit_label("c01.nii.gz", label(), direction=ROT), LAB1, "resample the label"),
    "channel_spacing_mismatch": Refusal(_edit_image("c01_0001.nii.gz", noise(SHAPE), channels=2, spacing=(1, 1, 3)),
                                        "imagesTr/c01_0001.nii.gz", "resample the channel onto the grid"),
    "2d_image_in_3d_dataset": Refusal(_two_d_in_three_d, IMG1, "convert it or move it to a separate dataset"),
    "3d_image_in_2d_dataset": Refusal(_three_d_in_two_d, IMG1, "convert it or move it to a separate dataset"),
    "4d_image": Refusal(_four_d, IMG1, "split it"),
    # files
    "missing_channel_file": Refusal(_missing_channel, "imagesTr/c01_0001.nii.gz", "add c01_0001.nii.gz"),
    "extra_channel_file": Refusal(_extra_channel, "imagesTr/c00_0001.nii.gz", "add the channel to channel_names"),
    "extra_unexpected_file": Refusal(_extra_file, "imagesTr/notes.txt", "remove the file"),
    "nii_beside_nii_gz": Refusal(_nii_sibling, IMG1, "Remove or rename c01_0000.nii", problems=2),
    "label_without_images": Refusal(_label_without_image, "labelsTr/c07.nii.gz", "add the images or remove the label"),
    "images_without_label": Refusal(_missing_label, LAB1, "add the label"),
    "zero_byte_file": Refusal(_damage(IMG1, "zero"), IMG1, "re-copy it"),
    "truncated_nii_gz": Refusal(_damage(IMG1, "truncate"), IMG1, "re-copy it"),
    "corrupt_nii_gz": Refusal(_damage(LAB1, "corrupt"), LAB1, "re-copy it"),
    "wrong_file_ending": Refusal(_with_json(file_ending=".nii"), "dataset.json", "set file_ending to '.nii.gz'"),
    # voxel values
    "nan_voxels": Refusal(_nan(np.nan), IMG1, "Replace them"),
    "inf_voxels": Refusal(_nan(np.inf), IMG1, "Replace them"),
    "constant_image": Refusal(_constant, IMG1, "remove the case"),
    "huge_image": Refusal(_huge_image, IMG1, "Crop or downsample the image", problems=2),  # image and label
    "rgb_png_mask": Refusal(_png_rgb_mask, "labelsTr/p1.png", "samunet_convert_2d_folder --label_map"),
    "png_16bit_colour": Refusal(_png16_colour, "imagesTr/p2_0000.png", "Save it as 8-bit RGB"),
    # labels
    "labels_absent_from_dataset_json": Refusal(_edit_label("c01.nii.gz", label(value=2)), LAB1, "add them to labels"),
    "non_consecutive_labels": Refusal(_with_json(labels={"background": 0, "a": 1, "b": 3}), "dataset.json", "renumber",
                                      problems=None),
    "non_integer_label": Refusal(_edit_label("c01.nii.gz", label().astype(np.float32) * 0.5), LAB1,
                                 "Labels must be integers"),
    "negative_label": Refusal(_edit_label("c01.nii.gz", label().astype(np.int16) - 1), LAB1, "Renumber the label map"),
    "empty_label_in_every_case": Refusal(_all_labels_empty, "labelsTr", "check that the right masks were copied"),
    # dataset.json
    "dataset_json_missing": Refusal(lambda env: (make_3d(env.raw), (env.raw / NAME / "dataset.json").unlink()),
                                    "dataset.json", "needs a dataset.json", problems=None),
    "dataset_json_not_json": Refusal(_json_text('{"labels": {"background": 0,}'), "dataset.json", "Fix the syntax",
                                     problems=None),
    "dataset_json_not_utf8": Refusal(_json_text('{"channel_names": {"0": "T2"}}'.encode("utf-16")), "dataset.json",
                                     "Save it as UTF-8", problems=None),
    "dataset_json_missing_key": Refusal(_with_json(labels=None), "dataset.json", '"labels": {"background": 0',
                                        problems=None),
    "dataset_json_wrong_type": Refusal(_with_json(numTraining="3"), "dataset.json", 'write it as "numTraining": 20',
                                       problems=None),
    "dataset_json_duplicate_key": Refusal(_json_text(
        '{"channel_names": {"0": "MRI"}, "labels": {"background": 0, "organ": 1, "organ": 2}, "numTraining": 3, '
        '"file_ending": ".nii.gz"}'), "dataset.json", "Remove or merge the duplicate", problems=None),
    "dataset_json_nnunet_v1_modality": Refusal(_with_json(channel_names=None, modality={"0": "MRI"}), "dataset.json",
                                               'rename it to "channel_names"', problems=None),
    "file_ending_without_dot": Refusal(_with_json(file_ending="nii.gz"), "dataset.json", 'e.g. ".nii.gz"',
                                       problems=None),
    "unknown_reader": Refusal(_with_json(overwrite_image_reader_writer="DicomIO"), "dataset.json",
                              "fix file_ending / overwrite_image_reader_writer"),
    "num_training_wrong": Refusal(_with_json(numTraining=5), "dataset.json", "set numTraining to 3"),
    # case ids
    "case_id_with_dotdot": Refusal(_rename_case("c..02"), "imagesTr/c..02_0000.nii.gz", "rename the case"),
    "case_id_with_backslash": Refusal(_rename_case("sub\\c02"), "imagesTr/sub\\c02_0000.nii.gz", "rename the case"),
    "case_id_non_ascii": Refusal(_rename_case("cäse02"), "imagesTr/cäse02_0000.nii.gz", "rename the case"),
    # domains
    "domains_name_unknown_case": Refusal(
        lambda env: make_3d(env.raw, domains={"c00": "A", "c01": "A", "c02": "B", "c09": "B"}),
        "dataset.json", "remove them from domains"),
    "domains_miss_a_case": Refusal(lambda env: make_3d(env.raw, domains={"c00": "A", "c01": "B"}),
                                   "dataset.json", "add them to domains"),
    "domain_with_single_case": Refusal(_single_case_domain, "domain_C", "add cases of that domain", run="train",
                                       problems=None),
    # dataset names and converter inputs
    "dataset_id_collision": Refusal(_id_collision, "Dataset900_Bad", "Choose another ID", run="convert", problems=None),
    "ambiguous_dataset_id": Refusal(_ambiguous_id, "Dataset900_Other", "Pass the full name", problems=None),
    "duplicate_case_ids": Refusal(_duplicate_case_ids, "case_1.nii.gz", "Rename the files", run="convert",
                                  problems=None),
}


def _snapshot(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file below ``folder`` (folders as ``"dir"``)."""
    out = {}
    if folder.exists():
        for p in sorted(folder.rglob("*")):
            out[p.relative_to(folder).as_posix()] = (
                "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            )
    return out


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_malformed_input_is_refused_cleanly(name, samunet_roots, tmp_path, monkeypatch):
    case = REFUSALS[name]
    env = Env(samunet_roots["raw"], tmp_path / "inputs", monkeypatch)
    case.build(env)
    watched = {k: samunet_roots[k] for k in ("raw", "preprocessed", "results")} | {"inputs": env.tmp}
    before = {k: _snapshot(v) for k, v in watched.items()}

    with pytest.raises(SystemExit) as exc:
        RUNNERS[case.run](env)
    message = str(exc.value.code)
    assert message.startswith("error: "), message
    assert case.fix in message, f"no fix hint {case.fix!r} in:\n{message}"
    if case.problems is None:
        assert case.file in message, f"{case.file} not named in:\n{message}"
    else:  # an integrity report: one line per problem, each starting with its file
        assert f"found {case.problems} problem{'s' if case.problems != 1 else ''}:" in message, message
        line = next((ln for ln in message.splitlines() if ln.startswith(f"{case.file}: ")), None)
        assert line is not None, f"no problem line for {case.file} in:\n{message}"
        assert case.fix in line or case.fix in message

    after = {k: _snapshot(v) for k, v in watched.items()}
    assert after == before, "the failed run changed its inputs or left output behind"


def test_suite_covers_at_least_25_cases():
    assert len(REFUSALS) >= 25


def test_domain_fold_refusal_explains_the_count(samunet_roots, tmp_path, monkeypatch):
    env = Env(samunet_roots["raw"], tmp_path, monkeypatch)
    _single_case_domain(env)
    with pytest.raises(SystemExit) as exc:
        _train(env)
    assert "domain 'C' has 1 case: a domain fold needs at least 2" in str(exc.value.code)
    assert "domain_A" in str(exc.value.code)  # the folds that do exist


# --------------------------------------------------------------------------- unusual but valid


def _one_slice_volume(raw):
    root = make_3d(raw)
    write_sitk(root / "imagesTr" / "c01_0000.nii.gz", noise((1,) + SHAPE[1:]))
    write_sitk(root / "labelsTr" / "c01.nii.gz", label((1,) + SHAPE[1:]))
    return {"c01": 1}


def _png_16bit_grey(raw):
    root = make_png(raw)
    img = (np.arange(20 * 24).reshape(20, 24) * 130).astype(np.uint16)  # up to 62270: needs 16 bits
    Image.fromarray(img).save(root / "imagesTr" / "p1_0000.png")
    return {}


ACCEPTED = {"one_slice_volume": _one_slice_volume, "png_16bit_grey": _png_16bit_grey}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_unusual_but_valid_input_is_preprocessed(name, samunet_roots):
    slices = ACCEPTED[name](samunet_roots["raw"])
    plan_main(["-d", "900", "-np", "1"])
    data_folder = samunet_roots["preprocessed"] / NAME / "samunetPlans_2d"
    for case, n in slices.items():
        assert np.load(data_folder / f"{case}.npz")["data"].shape[1] == n
    if name == "png_16bit_grey":
        from samunet.imageio.natural_image_io import read_natural_image

        arr = read_natural_image(samunet_roots["raw"] / NAME / "imagesTr" / "p1_0000.png")
        assert arr.dtype == np.uint16 and arr.max() == 62270  # not cut to 8 bits


def test_non_ascii_paths_work(tmp_path, monkeypatch):
    base = tmp_path / "données ü 画像"
    roots = {}
    for var, sub in (("SAMUNET_raw", "raw"), ("SAMUNET_preprocessed", "pré"), ("SAMUNET_results", "résultats")):
        roots[sub] = base / sub
        roots[sub].mkdir(parents=True)
        monkeypatch.setenv(var, str(roots[sub]))
    make_3d(roots["raw"])
    plan_main(["-d", "900", "-np", "1"])
    assert sorted(p.name for p in (roots["pré"] / NAME / "samunetPlans_2d").glob("*.npz")) == [
        "c00.npz", "c01.npz", "c02.npz"]


# --------------------------------------------------------------------------- property-based

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from samunet.dataset_conversion.dataset_json import DatasetJsonError, load_dataset_json  # noqa: E402
from samunet.imageio import ImageReadError, reader_writer_for  # noqa: E402

_PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_PROPS
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                 st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=4)),
                              lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=4), c,
                                                                                           max_size=3)),
                              max_leaves=10).map(lambda v: json.dumps(v).encode())))
def test_load_dataset_json_only_raises_dataset_json_error(tmp_path, content):
    (tmp_path / "dataset.json").write_bytes(content)
    try:
        d = load_dataset_json(tmp_path)
    except DatasetJsonError as e:
        assert str(e).startswith(f"{tmp_path / 'dataset.json'}: ")
    else:
        assert isinstance(d, dict) and {"channel_names", "labels", "numTraining", "file_ending"} <= set(d)


_READERS = [(".nii.gz", None), (".nii", None), (".mha", None), (".nii.gz", "NibabelIO"), (".png", None)]


def _valid_file(folder: Path, ending: str, arr: np.ndarray) -> Path:
    path = folder / f"x_0000{ending}"
    if ending == ".png":
        Image.fromarray(arr[0].astype(np.uint8)).save(path)
    else:
        write_sitk(path, arr)
    return path


_arrays = st.tuples(st.integers(1, 4), st.integers(2, 9), st.integers(2, 9), st.integers(0, 2**31)).map(
    lambda t: np.random.default_rng(t[3]).integers(0, 250, t[:3]).astype(np.float32))


@pytest.mark.parametrize("ending, reader", _READERS, ids=[f"{e}-{r or 'default'}" for e, r in _READERS])
@_PROPS
@given(arr=_arrays)
def test_readers_round_trip(tmp_path, ending, reader, arr):
    if ending == ".png":
        arr = arr[:1]
    path = _valid_file(tmp_path, ending, arr)
    data, props = reader_writer_for(ending, reader).read_images([path])
    assert data.shape == (1,) + arr.shape
    assert np.array_equal(data[0], arr)


@pytest.mark.parametrize("ending, reader", _READERS, ids=[f"{e}-{r or 'default'}" for e, r in _READERS])
@_PROPS
@given(arr=_arrays, cut=st.floats(0.0, 0.999), junk=st.binary(max_size=300), mode=st.sampled_from(["cut", "junk"]))
def test_readers_refuse_truncated_or_arbitrary_bytes(tmp_path, ending, reader, arr, cut, junk, mode):
    """A file cut short anywhere is refused, never read as valid; arbitrary bytes only ever
    give ImageReadError (no crash, no other exception)."""
    if ending == ".png":
        arr = arr[:1]
    path = _valid_file(tmp_path, ending, arr)
    io = reader_writer_for(ending, reader)
    if mode == "cut":
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * cut)])
        with pytest.raises(ImageReadError, match=re.escape(str(path))):
            io.read_images([path])
    else:
        path.write_bytes(junk)
        try:
            io.read_images([path])
        except ImageReadError as e:
            assert str(e).startswith(f"{path}: ")
