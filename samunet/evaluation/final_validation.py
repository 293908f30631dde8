"""After training: predict the fold's validation cases (and, for a domain fold, its
test cases from the other domains) in their original geometry and evaluate them.

Writes ``fold_x/validation/`` (and ``fold_x/test/``), each with one label file per case
and ``summary.json`` (Dice and NSD per case, class and domain). With ``save_probabilities``
(``samunet_train --npz``) also ``CASE.npz``, the class probabilities in the same format as
``samunet_predict --save_probabilities`` (for ``samunet_ensemble`` and
``samunet_find_best_configuration``).

:func:`train_fold` is the whole of ``samunet_train`` as a library call: fit the fold
(:func:`samunet.training.fold_training.fit_fold`), then this validation. It lives here, above
training and inference, because it uses both.
"""

from __future__ import annotations

import logging
from pathlib import Path


from samunet.inference.export import export_prediction
from samunet.inference.prompt_record import PromptsJson, records_prompts
from samunet.evaluation.evaluate import evaluate_folder
from samunet.paths import raw_root
from samunet.preprocessing.preprocessor import load_preprocessed_case
from samunet.training.fold_training import DEFAULT_TRAINER, fit_fold
from samunet.utilities.progress import progress

logger = logging.getLogger(__name__)


def predict_and_evaluate(trainer, cases: list[str], output_folder: Path, desc: str, save_probabilities: bool = False,
                         **context) -> dict | None:

    output_folder = Path(output_folder)
    output_folder.mkdir(parents=True, exist_ok=True)
    fe = trainer.plans["file_ending"]
    prompts_json = PromptsJson(output_folder) if records_prompts(trainer) else None
    for case in progress(cases, desc=desc, unit="case"):
        data, seg, props = load_preprocessed_case(trainer.data_folder, case)
        extra = {} if prompts_json is None else {"prompts_out": []}
        probs = trainer.predict_preprocessed(data, case=case, reference_seg=seg, **context, **extra)
        export_prediction(probs, props, trainer.plans, output_folder / f"{case}{fe}", save_probabilities)
        stale = output_folder / f"{case}.npz"
        if not save_probabilities and stale.is_file():
            # probabilities of an earlier --npz run no longer match the label map just written:
            # ensembling them (samunet_ensemble, samunet_find_best_configuration) would mix two models
            logger.info("removing %s: written by an earlier validation (rerun with --npz to keep them)", stale)
            stale.unlink()
        if prompts_json is not None:
            prompts_json.add(case, extra["prompts_out"], props)
            prompts_json.save()
    ref = raw_root() / trainer.dataset_name / "labelsTr"
    if not ref.is_dir():
        logger.warning("no reference labels at %s: predictions written, not evaluated", ref)
        return None
    return evaluate_folder(ref, output_folder, trainer.dataset_json, output_file=output_folder / "summary.json",
                           cases=cases)


def run_final_validation(trainer, save_probabilities: bool = False) -> dict:
    """Validation (and test) predictions; trainers with prompt modes (``validation_prompt_modes``)
    are also evaluated with each oracle/ablation prompt, into ``validation_<mode>/``.
    ``save_probabilities``: also write ``CASE.npz`` in ``validation/`` and ``test/`` (not in the
    oracle/ablation folders)."""
    results = {}
    modes = getattr(trainer, "validation_prompt_modes", [None])
    for mode in modes:
        suffix = "" if mode in (None, "auto") else f"_{mode}"
        ctx = {} if mode is None else {"prompt": mode}
        npz = save_probabilities and not suffix
        if trainer.split["val"]:
            results[f"validation{suffix}"] = predict_and_evaluate(
                trainer, trainer.split["val"], trainer.output_folder / f"validation{suffix}", f"validation{suffix}", npz,
                **ctx)
        if trainer.split.get("test"):
            results[f"test{suffix}"] = predict_and_evaluate(
                trainer, trainer.split["test"], trainer.output_folder / f"test{suffix}", f"test{suffix} (other domains)",
                npz, **ctx)
    return results


def train_fold(dataset, fold, trainer_name: str = DEFAULT_TRAINER, plans_name: str | None = None,
               device: str | None = None, num_epochs: int | None = None, num_iterations: int | None = None,
               resume: bool = False, val_only: bool = False, use_best: bool = False, seed: int = 12345,
               skip_validation: bool = False, save_probabilities: bool = False, **options):
    """Train (or only validate) one fold; returns the trainer. ``save_probabilities``
    (``samunet_train --npz``): the final validation also writes each case's class probabilities
    (``CASE.npz``, the ``samunet_predict --save_probabilities`` format)."""
    from samunet.training import distributed as dist_utils

    trainer = fit_fold(dataset, fold, trainer_name, plans_name, device, num_epochs, num_iterations, resume,
                       val_only, use_best, seed, **options)
    if trainer.rank == 0 and not skip_validation:
        results = run_final_validation(trainer, save_probabilities)
        for split, summary in results.items():
            if summary:
                logger.info("%s: mean foreground Dice %.4f", split, summary["foreground_mean"]["Dice"])
    dist_utils.barrier()
    return trainer
