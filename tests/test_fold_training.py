"""``samunet.training.fold_training`` is library code: it must not pull in the ``samunet.run`` CLI layer."""

import subprocess
import sys


def test_fold_training_does_not_import_run():
    code = ("import samunet.training.fold_training, sys; "
            "bad = sorted(m for m in sys.modules if m.split('.')[:2] in (['samunet', 'run'], ['samunet', 'inference'], "
            "['samunet', 'evaluation'])); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_run_train_reexports_fold_training():
    from samunet.run import train as run_train
    from samunet.evaluation import final_validation
    from samunet.training import fold_training
    from samunet.sam import cli_arguments as sam_cli
    from samunet.utilities import cli_arguments

    assert run_train.train is final_validation.train_fold  # fit_fold + the final validation
    assert run_train.DEFAULT_TRAINER == fold_training.DEFAULT_TRAINER == "SAMBoxTrainer"
    assert run_train.parse_options is cli_arguments.parse_options
    assert run_train.add_encoder_arguments is sam_cli.add_encoder_arguments


def test_plan_and_preprocess_reexports_plans_io():
    from samunet.experiment_planning import plan_and_preprocess, plans_io

    assert plan_and_preprocess.data_identifier is plans_io.data_identifier
    assert plan_and_preprocess.plans_file_name is plans_io.plans_file_name
