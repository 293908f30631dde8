"""Write predictions in the input's exact geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from samunet.imageio import reader_writer_for
from samunet.preprocessing.preprocessor import revert_probabilities
from samunet.utilities.file_io import save_npz


def export_prediction(probs: np.ndarray, props: dict, plans: dict, output_file: str | Path,
                      save_probabilities: bool = False) -> np.ndarray:
    """``probs`` ``(K, Z, Y, X)`` in the preprocessed frame -> label map file (and ``.npz``
    of probabilities in the original frame). Returns the label map in input array order."""
    full = revert_probabilities(probs, props)
    seg = np.argmax(full, 0).astype(np.int16)
    labels = np.asarray(plans["label_values"], dtype=np.int16)
    seg = labels[seg]
    rw = reader_writer_for(plans["file_ending"], props.get("io"))  # the reader that read the input writes it back
    rw.write_seg(seg, output_file, props)
    if save_probabilities:
        out = Path(output_file)
        stem = out.name[: -len(plans["file_ending"])] if out.name.endswith(plans["file_ending"]) else out.stem
        save_npz(out.with_name(stem + ".npz"), probabilities=full.astype(np.float16))
    return seg
