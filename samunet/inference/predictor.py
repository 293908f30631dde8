"""``samunet_predict``: raw images in, label maps in the input's exact geometry out.

Reads ``CASE_XXXX<file_ending>`` files from the input folder, preprocesses each case
with the dataset's plans, runs the trained model of every requested fold, averages the
probabilities, undoes cropping/resampling/transposition and writes ``CASE<file_ending>``.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import logging
import multiprocessing as mp
import sys
from pathlib import Path

import numpy as np
import torch

from samunet.dataset_conversion.dataset_json import channel_files, list_cases
from samunet.utilities.sharding import shard
from samunet.experiment_planning.planner import DEFAULT_PLANS_NAME
from samunet.imageio import ImageReadError, reader_writer_for
from samunet.inference.export import export_prediction, prediction_is_complete
from samunet.inference.prompt_record import PromptsJson, records_prompts
from samunet.preprocessing.preprocessor import preprocess_arrays
from samunet.sam.encoder_backends import EncoderBackendError, inference_threads
from samunet.utilities.progress import progress
from samunet.utilities.resources import cap_workers_by_memory

logger = logging.getLogger(__name__)


class PredictionError(ValueError):
    pass


def model_folder(dataset: str | int, trainer_name: str, plans_name: str = DEFAULT_PLANS_NAME) -> Path:
    from samunet.paths import results_root
    from samunet.utilities.dataset_name import resolve_dataset

    return results_root() / resolve_dataset(dataset) / f"{trainer_name}__{plans_name}"


def _fold_sort_key(fold: str):
    return (0, int(fold), "") if fold.isdigit() else (1, 0, fold)


def folds_with_checkpoint(folder: str | Path, checkpoint_name: str = "checkpoint_final.pth") -> list[str]:
    """The folds of a trainer folder (``fold_<name>/``) that hold ``checkpoint_name``: numbered
    folds in numeric order, then the named ones (``all``, ``domain_<name>``) alphabetically."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    folds = [p.name[len("fold_"):] for p in folder.iterdir()
             if p.is_dir() and p.name.startswith("fold_") and len(p.name) > 5 and (p / checkpoint_name).is_file()]
    return sorted(folds, key=_fold_sort_key)


def resolve_folds(folder: str | Path, trainer_name: str, folds=None,
                  checkpoint_name: str = "checkpoint_final.pth") -> list[str]:
    """``folds`` as strings, or (``None``/empty: ``samunet_predict`` without ``-f``) every
    cross-validation fold of ``folder`` with ``checkpoint_name`` (when there is none: every named
    fold with it, ``all`` / ``domain_*``); logs the folds used. Raises :class:`PredictionError` naming
    the folder searched and the ``samunet_train`` command when no fold has the checkpoint."""
    folder = Path(folder)
    if folds:
        return [str(f) for f in folds]
    found = folds_with_checkpoint(folder, checkpoint_name)
    numbered = [f for f in found if f.isdigit()]
    if numbered and len(numbered) < len(found):
        # nnU-Net's default is the cross-validation folds; a domain-hold-out or "all" model is
        # another experiment, not a sixth ensemble member: ask for it with -f
        logger.info("-f not given: also trained, not used (ask with -f): %s",
                    " ".join(f for f in found if not f.isdigit()))
        found = numbered
    if not found:
        where = f"{folder} (no such folder)" if not folder.is_dir() else str(folder)
        raise PredictionError(
            f"no fold of {trainer_name} has {checkpoint_name}: searched {where}/fold_*/{checkpoint_name}. Train "
            f"one first, e.g. samunet_train {folder.parent.name} 0 -tr {trainer_name} (folds 0 1 2 3 4 for a "
            "five-model ensemble), or pick the checkpoint with -chk.")
    logger.info("-f not given: using every fold of %s with %s: %s", trainer_name, checkpoint_name, " ".join(found))
    return found


def load_fold_models(folder: Path, trainer_name: str, folds, checkpoint_name: str, device):
    from samunet.training.registry import find_trainer

    cls = find_trainer(trainer_name)
    models = []
    for f in folds:
        ckpt = folder / f"fold_{f}" / checkpoint_name
        if not ckpt.is_file():
            trained = sorted(p.parent.name for p in folder.glob(f"fold_*/{checkpoint_name}"))
            raise PredictionError(
                f"{ckpt} not found. Folds with {checkpoint_name}: {trained or 'none'}; "
                f"train with samunet_train {folder.parent.name} {f} -tr {trainer_name}."
            )
        models.append(cls.from_checkpoint(ckpt, device))
    return models


def input_case_bytes(files) -> int:
    """float32 bytes of a case's images, from the file headers (NIfTI) or 8x the file sizes."""
    total = 0
    for f in files:
        f = str(f)
        try:
            if f.endswith((".nii", ".nii.gz")):
                import nibabel

                total += int(np.prod(nibabel.load(f).shape)) * 4
                continue
        except Exception:  # unreadable header: the reader reports it with the file name later
            pass
        total += 8 * Path(f).stat().st_size if Path(f).is_file() else 0
    return total


def _single_threaded_worker() -> None:
    torch.set_num_threads(1)


def bounded_imap(pool, fn, jobs, ahead: int):
    """``pool.imap(fn, jobs)`` in order, but with at most ``ahead`` results waiting: Pool.imap
    runs ahead without limit, so fast workers would pile preprocessed cases up in memory
    while the models are busy."""
    pending = collections.deque()
    jobs = iter(jobs)
    for job in itertools.islice(jobs, max(1, ahead)):
        pending.append(pool.apply_async(fn, (job,)))
    while pending:
        result = pending.popleft().get()
        for job in itertools.islice(jobs, 1):
            pending.append(pool.apply_async(fn, (job,)))
        yield result


def find_input_cases(input_folder: Path, file_ending: str, num_channels: int,
                     natural_endings: tuple[str, ...] = ()) -> dict[str, list[Path]]:
    """``{case: channel files}`` of an input folder: ``CASE_XXXX<file_ending>`` files, as in
    imagesTr. ``natural_endings`` (a 2D natural-image dataset): also images with any of these
    endings (``.tif`` frames for a ``.png`` dataset, ...), a file named ``CASE_XXXX.<ext>`` as
    channel XXXX of CASE, any other file as one case of its own (one file holds all of an RGB
    image's channels); the reader goes by the file's content, not its name."""
    if not input_folder.is_dir():
        raise PredictionError(f"input folder {input_folder} does not exist")
    found = list_cases(input_folder, file_ending)
    if natural_endings:
        found = _natural_image_cases(input_folder, found, natural_endings)
    cases = {c: channel_files(ch) for c, ch in found.items()}
    if not cases:
        also = f" (or any {'/'.join(natural_endings)} image)" if natural_endings else ""
        raise PredictionError(
            f"no input images in {input_folder}: expected files named CASE_0000{file_ending}{also} "
            f"(one per channel, as in imagesTr)."
        )
    return cases


def _natural_image_cases(folder: Path, found: dict, endings: tuple[str, ...]) -> dict[str, dict[int, Path]]:
    """``found`` plus every other image file with one of ``endings`` (see :func:`find_input_cases`);
    two files that would be the same case and channel are an error naming both."""
    import re

    pattern = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
    out = {c: dict(ch) for c, ch in found.items()}
    taken = {p for ch in found.values() for p in ch.values()}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p in taken or p.suffix.lower() not in endings:
            continue
        m = pattern.match(p.stem)
        case, channel = (m.group("case"), int(m.group("channel"))) if m else (p.stem, 0)
        other = out.get(case, {}).get(channel)
        if other is not None:
            raise PredictionError(f"{other} and {p} in {folder} are both case {case!r} (channel {channel}): "
                                  f"keep one of them or rename the other")
        out.setdefault(case, {})[channel] = p
    return out


def _preprocess_for_prediction(args):
    case, files, plans, dataset_json, label_file = args
    rw = reader_writer_for(dataset_json["file_ending"], dataset_json.get("overwrite_image_reader_writer"))
    data, props = rw.read_images(files)
    seg = None
    if label_file is not None:
        if not Path(label_file).is_file():
            raise PredictionError(f"--prompt gt_box: no reference label {label_file} for case {case}")
        seg, _ = rw.read_seg(label_file)
        if seg.shape[1:] != data.shape[1:]:
            raise PredictionError(f"{label_file}: shape {seg.shape[1:]} differs from the image's {data.shape[1:]}")
    if data.shape[0] != plans["num_channels"]:
        raise PredictionError(
            f"case {case}: {data.shape[0]} channels read from {[str(f) for f in files]} but the model expects "
            f"{plans['num_channels']} ({dataset_json['channel_names']})."
        )
    data, seg, props = preprocess_arrays(data, seg, props, plans)
    return case, data, seg, props


def _load_user_boxes(path) -> dict:
    """``{case: {slice: {label: [x0, y0, x1, y1]}}}`` from a JSON file, checked."""
    import json

    try:
        boxes = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise PredictionError(f"--boxes {path}: cannot be read as JSON ({e})") from None
    ok = isinstance(boxes, dict) and all(
        isinstance(per_slice, dict) and all(
            isinstance(per_label, dict) and all(isinstance(b, list) and len(b) == 4 for b in per_label.values())
            for per_label in per_slice.values())
        for per_slice in boxes.values())
    if not ok:
        raise PredictionError(
            f"--boxes {path}: expected {{\"CASE\": {{\"slice\": {{\"label\": [x0, y0, x1, y1]}}}}}}, "
            "e.g. {\"case_01\": {\"12\": {\"1\": [40, 52, 88, 97]}}}")
    return boxes


def predict_folder(input_folder, output_folder, dataset, trainer_name: str, folds=None, plans_name=DEFAULT_PLANS_NAME,
                   checkpoint_name: str = "checkpoint_final.pth", save_probabilities: bool = False,
                   num_processes: int = 1, device=None, continue_prediction: bool = False, prompt: str | None = None,
                   labels_folder=None, classes: list[str] | None = None, boxes_file=None,
                   encoder_backend: str | None = None, encoder_precision: str | None = None, part: int = 0,
                   num_parts: int = 1) -> list[Path]:
    """Predict every case of ``input_folder`` with the models of ``folds`` (default ``None``: every
    fold of the trainer that has ``checkpoint_name``). ``prompt`` (SAM trainers): ``auto``, ``gt_box``
    (needs ``labels_folder`` with ``CASE<ending>`` references), ``full_box`` or ``unfiltered_box``.

    ``encoder_backend``/``encoder_precision`` override what the models were trained with (SAM
    trainers). ``part``/``num_parts``: this process predicts only the cases ``i`` (in sorted
    order) with ``i % num_parts == part``, so that several processes or nodes share a folder;
    each case is its own output file, so the parts need no merging."""
    shard([], part, num_parts)  # a bad --part fails before the models are loaded
    input_folder, output_folder = Path(input_folder), Path(output_folder)
    folder = model_folder(dataset, trainer_name, plans_name)
    folds = resolve_folds(folder, trainer_name, folds, checkpoint_name)
    models = load_fold_models(folder, trainer_name, folds, checkpoint_name, device)
    for m in models:
        if getattr(m, "sam", None) is not None and (encoder_backend or encoder_precision):
            backend, precision = m.encoder_settings
            m.sam.configure_encoder(encoder_backend or backend, encoder_precision or precision)
    plans, dataset_json = models[0].plans, models[0].dataset_json
    fe = dataset_json["file_ending"]
    rw = reader_writer_for(fe, dataset_json.get("overwrite_image_reader_writer"))
    natural = tuple(rw.supported_file_endings) if getattr(rw, "accepts_any_natural_image", False) else ()
    cases = find_input_cases(input_folder, fe, plans["num_channels"], natural)
    if input_folder.resolve() == output_folder.resolve():
        raise PredictionError("the output folder must differ from the input folder")
    output_folder.mkdir(parents=True, exist_ok=True)
    todo = [c for c in shard(cases, part, num_parts)
            if not (continue_prediction and prediction_is_complete(output_folder / f"{c}{fe}", fe, save_probabilities))]
    if prompt == "gt_box" and labels_folder is None:
        raise PredictionError("--prompt gt_box needs reference labels: add --labels DIR")
    context = {} if prompt is None else {"prompt": prompt}
    if classes:
        context["classes"] = list(classes)
    user_boxes = _load_user_boxes(boxes_file) if boxes_file else {}
    lab = (lambda c: Path(labels_folder) / f"{c}{fe}") if prompt == "gt_box" else (lambda c: None)
    jobs = [(c, cases[c], plans, dataset_json, lab(c)) for c in todo]
    written = []
    # parts sharing an output folder each keep their own file (prompts.partI.json): no write races
    prompts_name = "prompts.json" if num_parts == 1 else f"prompts.part{part}.json"
    prompts_json = PromptsJson(output_folder, prompts_name) if any(records_prompts(m) for m in models) else None
    num_processes = cap_workers_by_memory(num_processes, max((input_case_bytes(j[1]) for j in jobs), default=0) * 12,
                                          "preprocessing workers")
    pool = None
    if num_processes > 1 and len(jobs) > 1:
        # workers read and resample while this process runs the models: split the cores between them
        torch.set_num_threads(inference_threads(1 + num_processes))
        pool = mp.get_context("fork").Pool(num_processes, initializer=_single_threaded_worker)
    try:
        it = bounded_imap(pool, _preprocess_for_prediction, jobs, ahead=num_processes) if pool \
            else map(_preprocess_for_prediction, jobs)
        for case, data, seg, props in progress(it, total=len(jobs), desc="predicting", unit="case"):
            probs = None
            used_prompts: list = []
            for fold, m in zip(folds, models):
                extra = {}
                if prompts_json is not None and records_prompts(m):
                    extra["prompts_out"] = fold_prompts = []
                if case in user_boxes:
                    from samunet.sam.box_prompting import user_boxes_to_preprocessed

                    extra["user_boxes"] = user_boxes_to_preprocessed(user_boxes[case], props)
                p = m.predict_preprocessed(data, reference_seg=seg, **context, **extra)
                probs = p if probs is None else probs + p
                if "prompts_out" in extra:
                    used_prompts += [{**e, "fold": str(fold)} if len(models) > 1 else e for e in fold_prompts]
            probs /= len(models)
            out = output_folder / f"{case}{fe}"
            export_prediction(probs, props, plans, out, save_probabilities)
            written.append(out)
            if prompts_json is not None:
                prompts_json.add(case, used_prompts, props)
                prompts_json.save()
    finally:
        if pool:
            pool.terminate()
    logger.info("wrote %d predictions to %s", len(written), output_folder)
    return written


def build_parser() -> argparse.ArgumentParser:
    """The ``samunet_predict`` argument parser (tests parse with it without predicting)."""
    from samunet.sam.cli_arguments import add_encoder_arguments

    p = argparse.ArgumentParser(prog="samunet_predict", description=__doc__.splitlines()[0])
    p.add_argument("-i", required=True, help="input folder with CASE_0000<ending> files")
    p.add_argument("-o", required=True, help="output folder")
    p.add_argument("-d", required=True, help="dataset ID or name the model was trained on")
    p.add_argument("-tr", default="SAMBoxTrainer", help="trainer name (default %(default)s)")
    p.add_argument("-f", nargs="+", default=None,
                   help="folds to ensemble, e.g. 0 1 2 3 4 or domain_RUNMC (default: every numbered fold of the trainer "
                        "with the -chk checkpoint, else every named one; the log says which)")
    p.add_argument("-p", default=DEFAULT_PLANS_NAME, help="plans name")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file name (default %(default)s)")
    p.add_argument("--save_probabilities", action="store_true", help="also write CASE.npz with class probabilities")
    p.add_argument("-npp", type=int, default=1, help="processes reading/preprocessing inputs (default %(default)s)")
    p.add_argument("-device", default=None, choices=["cpu", "cuda"])
    from samunet.sam.box_prompting import PROMPT_MODES

    p.add_argument("--prompt", default=None, choices=list(PROMPT_MODES),
                   help="SAM trainers: where box prompts come from (default auto: stage-1 masks)")
    p.add_argument("--labels", default=None, help="reference label folder for --prompt gt_box")
    p.add_argument("--boxes", default=None,
                   help="SAMBoxTrainer: your own boxes, JSON {case: {slice: {label: [x0, y0, x1, y1]}}}; a case "
                        "listed there is prompted with exactly these boxes, other cases automatically")
    p.add_argument("--classes", nargs="+", default=None,
                   help="ClassPromptTrainer: label names from dataset.json to segment, or 'all' (default all)")
    p.add_argument("--continue_prediction", action="store_true", help="skip cases whose output already exists")
    add_encoder_arguments(p)
    p.add_argument("--part", "-part_id", dest="part", type=int, default=0,
                   help="this process's share of the cases: part i of --num_parts n (-part_id: nnU-Net's name)")
    p.add_argument("--num_parts", "-num_parts", dest="num_parts", type=int, default=1,
                   help="split the cases over n processes or nodes (case i, sorted, goes to part i %% n)")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from samunet.training.checkpoint import CheckpointError

    try:
        predict_folder(args.i, args.o, args.d, args.tr, args.f, args.p, args.chk, args.save_probabilities,
                       args.npp, args.device, args.continue_prediction, args.prompt, args.labels, args.classes,
                       args.boxes, args.encoder_backend, args.encoder_precision, args.part, args.num_parts)
    except (PredictionError, ImageReadError, CheckpointError, FileNotFoundError, KeyError, ValueError,
            EncoderBackendError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        sys.exit(f"error: {msg}")


if __name__ == "__main__":
    main()
