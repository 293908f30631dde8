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
        save_npz(probabilities_file, probabilities=full.astype(np.float16))
    rw.write_seg(seg, output_file, props)
    return seg
