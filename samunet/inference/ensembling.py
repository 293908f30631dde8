"""``samunet_ensemble -i FOLDER1 FOLDER2 ... -o OUT``: average saved class probabilities, write label maps.

The inputs are folders of probabilities ``CASE.npz`` as ``samunet_predict --save_probabilities``
and ``samunet_train --npz`` (``fold_x/validation/``) write them (format:
:data:`samunet.inference.export.PROBABILITY_KEYS`). Every folder must hold the same cases and
the same labels; otherwise nothing is written. Each case's mean probabilities are turned into
a label map in the input's geometry (``OUT/CASE<file_ending>``); ``--save_probabilities`` also
writes the mean as ``OUT/CASE.npz`` (same format, so ensembles can be ensembled or
post-processed again). Every file is written under a temporary name and renamed, so an
interrupted run leaves no half-written file; ``ensemble.json`` records the inputs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from samunet.imageio import ImageReadError, reader_writer_for
from samunet.inference.export import (
    probabilities_npz_header,
    read_probabilities_npz,
    save_probabilities_npz,
)
from samunet.utilities.file_io import CorruptFileError, remove_stale_temp_files, save_json

logger = logging.getLogger(__name__)

NO_PROBABILITIES_HINT = ("run samunet_predict with --save_probabilities (or, for cross-validation folders, "
                         "samunet_train DATASET FOLD -tr TRAINER --val --npz)")


class EnsembleError(ValueError):
    pass


def probability_files(folder: str | Path) -> dict[str, Path]:
    """``{case: CASE.npz}`` of a folder (hidden and temporary files ignored)."""
    folder = Path(folder)
    return {p.name[:-4]: p for p in sorted(folder.glob("*.npz"))
            if p.is_file() and not p.name.startswith(".") and len(p.name) > 4}


def _label_file_beside(npz: Path) -> tuple[Path | None, str | None]:
    """The label map written with a probabilities file (``CASE<ending>`` beside ``CASE.npz``)."""
    case = npz.name[:-4]
    for p in sorted(npz.parent.glob(f"{case}.*")):
        ending = p.name[len(case):]
        if p.is_file() and ending not in (".npz", ".json", ".csv") and not ending.startswith(".npz"):
            return p, ending
    return None, None


def _effective_labels(header: dict, path: Path) -> list[int]:
    if header["label_values"] is not None:
        return header["label_values"]
    logger.warning("%s: written by an older samunet without label values; assuming labels 0..%d", path,
                   header["shape"][0] - 1)
    return list(range(header["shape"][0]))


def check_ensemble_inputs(folders) -> dict:
    """Check the folders can be ensembled, reading only the ``.npz`` headers. Returns
    ``{"cases": [...], "files": {case: [npz per folder]}, "label_values": [...], "file_ending": str}``;
    raises :class:`EnsembleError` naming what differs."""
    folders = [Path(f) for f in folders]
    if len(folders) < 2:
        raise EnsembleError(f"give at least two folders to ensemble (-i FOLDER1 FOLDER2 ...), got {len(folders)}")
    if len({f.resolve() for f in folders}) != len(folders):
        raise EnsembleError(f"a folder is given twice: {[str(f) for f in folders]}")
    per_folder = []
    for f in folders:
        if not f.is_dir():
            raise EnsembleError(f"{f}: no such folder")
        files = probability_files(f)
        if not files:
            raise EnsembleError(f"{f}: no probability files (CASE.npz): {NO_PROBABILITIES_HINT}")
        per_folder.append(files)
    cases = sorted(per_folder[0])
    for f, files in zip(folders[1:], per_folder[1:]):
        if set(files) != set(cases):
            only_first = sorted(set(cases) - set(files))
            only_here = sorted(set(files) - set(cases))
            raise EnsembleError(
                f"the folders hold different cases: {folders[0]} has {len(cases)}, {f} has {len(files)}"
                + (f"; missing from {f}: {only_first[:10]}" if only_first else "")
                + (f"; only in {f}: {only_here[:10]}" if only_here else "")
                + ". Predict the same cases into every folder (with --save_probabilities).")
    labels, ending = None, None
    for case in cases:
        shape = None
        for f, files in zip(folders, per_folder):
            try:
                h = probabilities_npz_header(files[case])
            except CorruptFileError as e:
                raise EnsembleError(str(e)) from None
            lv = _effective_labels(h, files[case])
            if labels is None:
                labels, first = lv, files[case]
            elif lv != labels:
                raise EnsembleError(f"the folders hold different labels: {first} has {labels}, {files[case]} has {lv}; "
                                    "only predictions of models trained on the same labels can be ensembled")
            if shape is None:
                shape, shape_file = h["shape"], files[case]
            elif h["shape"] != shape:
                raise EnsembleError(f"case {case}: probabilities of shape {h['shape']} in {files[case]} but {shape} in "
                                    f"{shape_file}: were these predicted from the same images?")
            fe = h["file_ending"] or _label_file_beside(files[case])[1]
            if fe is not None:
                if ending is None:
                    ending = fe
                elif fe != ending:
                    raise EnsembleError(f"{files[case]}: file ending {fe} differs from {ending} of the other files")
    if ending is None:
        raise EnsembleError("cannot tell the label map file ending: the .npz files do not store it and no label map "
                            f"lies beside them; predict again with a current samunet ({NO_PROBABILITIES_HINT})")
    return {"cases": cases, "files": {c: [files[c] for files in per_folder] for c in cases}, "label_values": labels,
            "file_ending": ending}


def _ensemble_case(task) -> str:
    case, npz_files, out_file, label_values, file_ending, save_probabilities = task
    total, props = None, None
    for f in npz_files:
        d = read_probabilities_npz(f)
        p = d["probabilities"]
        total = p if total is None else total + p
        if props is None and d["properties"] is not None:
            props = d["properties"]
    if props is None:  # older files: the geometry of the label map written beside them
        label_file, ending = _label_file_beside(Path(npz_files[0]))
        if label_file is None:
            raise EnsembleError(f"{npz_files[0]}: stores no geometry and no label map lies beside it; "
                                f"{NO_PROBABILITIES_HINT}")
        props = reader_writer_for(ending).read_seg(label_file)[1]
    mean = total / len(npz_files)
    seg = np.asarray(label_values, dtype=np.int16)[np.argmax(mean, 0)]
    out_file = Path(out_file)
    npz_out = out_file.with_name(f"{case}.npz")
    for f in (out_file, npz_out):
        remove_stale_temp_files(f)
    if save_probabilities:  # probabilities first, as export_prediction does
        save_probabilities_npz(npz_out, mean, label_values, file_ending, props)
    reader_writer_for(file_ending, props.get("io")).write_seg(seg, out_file, props)
    return str(out_file)


def ensemble_folders(input_folders, output_folder, save_probabilities: bool = False,
                     num_processes: int = 1) -> list[Path]:
    """Average the probabilities of ``input_folders`` case by case; write ``output_folder/CASE<ending>``
    (and ``CASE.npz`` with ``save_probabilities``). Returns the label files written."""
    from samunet.utilities.resources import map_with_progress

    output_folder = Path(output_folder)
    if any(output_folder.resolve() == Path(f).resolve() for f in input_folders):
        raise EnsembleError(f"the output folder {output_folder} must differ from the input folders")
    info = check_ensemble_inputs(input_folders)
    fe = info["file_ending"]
    output_folder.mkdir(parents=True, exist_ok=True)
    tasks = [(c, [str(f) for f in info["files"][c]], str(output_folder / f"{c}{fe}"), info["label_values"], fe,
              save_probabilities) for c in info["cases"]]
    written = [Path(p) for p in map_with_progress(_ensemble_case, tasks, num_processes, "ensembling")]
    save_json({"input_folders": [str(Path(f).resolve()) for f in input_folders], "cases": info["cases"],
               "label_values": info["label_values"], "file_ending": fe,
               "probabilities_saved": bool(save_probabilities)}, output_folder / "ensemble.json")
    logger.info("ensembled %d cases of %d folders into %s", len(written), len(input_folders), output_folder)
    return written


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="samunet_ensemble", description=__doc__.splitlines()[0])
    p.add_argument("-i", nargs="+", required=True, metavar="FOLDER",
                   help="folders of CASE.npz probabilities (samunet_predict --save_probabilities, samunet_train --npz)")
    p.add_argument("-o", required=True, help="output folder for the label maps")
    p.add_argument("--save_probabilities", "--save_npz", dest="save_probabilities", action="store_true",
                   help="also write the mean probabilities as CASE.npz")
    p.add_argument("-np", type=int, default=1, help="processes (default %(default)s)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        ensemble_folders(args.i, args.o, args.save_probabilities, args.np)
    except (EnsembleError, CorruptFileError, ImageReadError, FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
