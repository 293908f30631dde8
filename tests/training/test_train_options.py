"""``samunet_train --opt KEY=VALUE`` parsing and the trainers' option checks."""

import pytest

from samunet.run.train import main, parse_options
from samunet.training.trainers.class_prompt_trainer import ClassPromptTrainer
from samunet.training.trainers.promise_trainer import ProMISeTrainer
from samunet.training.trainers.resnet_trainer import ResNetTrainer
from samunet.training.trainers.sam_box_trainer import SAMBoxTrainer


def test_parse_options_json_and_text():
    assert parse_options(["a=true", "b=0.5", "c=[1, 2]", "d=text", "e=\"quoted\"", "f="]) == {
        "a": True, "b": 0.5, "c": [1, 2], "d": "text", "e": "quoted", "f": ""}


@pytest.mark.parametrize("bad", ["novalue", "=3"])
def test_parse_options_refuses_malformed(bad):
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_options([bad])


def test_known_options_follow_the_class_hierarchy():
    assert {"batch_size", "sam", "legacy_double_sigmoid", "points"} <= ProMISeTrainer.known_options()
    assert {"eval_noise", "steps", "sam"} <= ClassPromptTrainer.known_options()
    assert {"stage1_epochs", "train_box_source", "sam"} <= SAMBoxTrainer.known_options()
    assert "sam" not in ResNetTrainer.known_options()


def test_unknown_option_is_refused_with_the_accepted_list():
    ResNetTrainer.check_options({"batch_size": 2, "points": None})  # None means "not given"
    with pytest.raises(ValueError, match="no option 'legacy_double_sigmoid'.*accepts: batch_size"):
        ResNetTrainer.check_options({"legacy_double_sigmoid": True})


def test_cli_reports_unknown_option(synthetic_planned, capsys):
    with pytest.raises(SystemExit) as e:
        main(["650", "0", "-tr", "ResNetTrainer", "--opt", "no_such_option=1"])
    assert "no option 'no_such_option'" in str(e.value.code)
