"""Write predictions in the input's exact geometry."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from samunet.imageio import ImageReadError, reader_writer_for
from samunet.preprocessing.preprocessor import revert_probabilities
from samunet.utilities.file_io import npz_is_complete, remove_stale_temp_files, save_npz

logger = logging.getLogger(__name__)


def _probabilities_file(output_file: Path, file_ending: str) -> Path:
    stem = output_file.name[: -len(file_ending)] if output_file.name.endswith(file_ending) else output_file.stem
    return output_file.with_name(stem + ".npz")


probabilities_file = _probabilities_file

# Keys of a probabilities ``CASE.npz`` (``samunet_predict --save_probabilities``, ``samunet_train --npz``,
# ``samunet_ensemble --save_probabilities``): ``probabilities`` float16 ``(K, Z, Y, X)`` in the input's
# array order, channel k the probability of label ``label_values[k]`` (background first, summing to 1
# per voxel for every trainer; SAM trainers: samunet.training.class_probabilities); ``file_ending`` and
# ``properties`` (JSON text:
# the reader's geometry, what the writer needs to write the label map back) let a later step
# (ensembling, post-processing) write label maps without the input images.
PROBABILITY_KEYS = ("probabilities", "label_values", "file_ending", "properties")


def save_probabilities_npz(path: str | Path, probabilities: np.ndarray, label_values, file_ending: str,
                           properties: dict) -> None:
    """Write a probabilities ``.npz`` (atomic; every key is a plain array, loadable without pickle)."""
    import json

    from samunet.utilities.file_io import _json_default

    save_npz(path, probabilities=np.asarray(probabilities).astype(np.float16, copy=False),
             label_values=np.asarray(label_values, dtype=np.int16), file_ending=np.array(file_ending),
             properties=np.array(json.dumps(properties, default=_json_default)))


def probabilities_npz_header(path: str | Path) -> dict:
    """What a probabilities ``.npz`` holds, without decompressing the probabilities: ``shape``,
    ``label_values`` and ``file_ending`` (``None`` in files written before these were stored).
    Raises :class:`~samunet.utilities.file_io.CorruptFileError` for a damaged file."""
    import zipfile

    from samunet.utilities.file_io import CorruptFileError

    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if "probabilities.npy" not in names:
                raise CorruptFileError(f"{path}: holds no 'probabilities' array; it is not a samunet probabilities "
                                       "file (samunet_predict --save_probabilities writes them)")
            with z.open("probabilities.npy") as f:
                version = np.lib.format.read_magic(f)
                reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape = tuple(reader(f)[0])
            out = {"shape": shape, "label_values": None, "file_ending": None}
            for key in ("label_values", "file_ending"):
                if f"{key}.npy" in names:
                    with z.open(f"{key}.npy") as f:
                        a = np.lib.format.read_array(f, allow_pickle=False)
                    out[key] = [int(v) for v in a] if key == "label_values" else str(a)
            return out
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CorruptFileError(f"{path}: is truncated or corrupt ({type(e).__name__}: {e}); write it again "
                               "(samunet_predict --save_probabilities)") from None


def read_probabilities_npz(path: str | Path) -> dict:
    """A probabilities ``.npz`` as ``{"probabilities": float32 (K, Z, Y, X), "label_values": list | None,
    "file_ending": str | None, "properties": dict | None}`` (``None``: not stored, older files)."""
    import json

    from samunet.utilities.file_io import load_npz

    d = load_npz(path)
    props = d.get("properties")
    return {"probabilities": d["probabilities"].astype(np.float32),
            "label_values": None if "label_values" not in d else [int(v) for v in d["label_values"]],
            "file_ending": None if "file_ending" not in d else str(d["file_ending"]),
            "properties": None if props is None else json.loads(str(props))}


def prediction_is_complete(output_file: str | Path, file_ending: str, save_probabilities: bool = False) -> bool:
    """Whether ``--continue_prediction`` may skip this case: the label map exists and reads back
    completely (a damaged or cut-short file is predicted again), and so do its probabilities
    when they are asked for."""
    out = Path(output_file)
    if not out.is_file():
        return False
    try:
        reader_writer_for(file_ending).read_seg(out)
    except ImageReadError as e:
        logger.warning("predicting again: %s", e)
        return False
    if save_probabilities and not npz_is_complete(_probabilities_file(out, file_ending), ("probabilities",)):
        logger.warning("predicting %s again: its probabilities .npz is missing or incomplete", out.name)
        return False
    return True


def argmax_in_input_frame(probs: np.ndarray, props: dict) -> np.ndarray:
    """``np.argmax(revert_probabilities(probs, props), 0)`` one class at a time: memory for three
    single-class volumes in the input frame instead of K (what bounds export of many-class CT)."""
    best = revert_probabilities(probs[:1], props)[0]
    index = np.zeros(best.shape, dtype=np.int16)
    for k in range(1, probs.shape[0]):
        # outside the crop box every reverted channel is 1.0 like the background: ties keep 0,
        # as np.argmax keeps the first maximum
        pk = revert_probabilities(probs[k:k + 1], props)[0]
        index[pk > best] = k
        np.maximum(best, pk, out=best)
    return index


def export_prediction(probs: np.ndarray, props: dict, plans: dict, output_file: str | Path,
                      save_probabilities: bool = False) -> np.ndarray:
    """``probs`` ``(K, Z, Y, X)`` in the preprocessed frame -> label map file (and ``.npz``
    of probabilities in the original frame). Returns the label map in input array order."""
    if save_probabilities:
        full = revert_probabilities(probs, props)
        seg = np.argmax(full, 0).astype(np.int16)
    else:
        seg = argmax_in_input_frame(probs, props)
    labels = np.asarray(plans["label_values"], dtype=np.int16)
    seg = labels[seg]
    rw = reader_writer_for(plans["file_ending"], props.get("io"))  # the reader that read the input writes it back
    probabilities_file = _probabilities_file(Path(output_file), plans["file_ending"])
    for f in (output_file, probabilities_file):  # left by a killed run; each case has one writer
        remove_stale_temp_files(f)
    if save_probabilities:
        # probabilities first: --continue_prediction takes an existing label map as a finished case
        save_probabilities_npz(probabilities_file, full, plans["label_values"], plans["file_ending"], props)
    rw.write_seg(seg, output_file, props)
    return seg
