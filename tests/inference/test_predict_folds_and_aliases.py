"""nnU-Net habits: samunet_predict without -f uses every fold with a checkpoint; nnU-Net's flag names
(-part_id/-num_parts, --val/--val_best) parse like samunet's; samunet_train --npz reaches the final validation."""

from __future__ import annotations

import logging

import pytest

from samunet.inference.predictor import (
    PredictionError,
    build_parser,
    folds_with_checkpoint,
    predict_folder,
    resolve_folds,
)


def fake_model(tmp_path, folds_with_final=(), folds_with_best=(), empty=()):
    model = tmp_path / "Dataset777_Fake" / "FakeTrainer__samunetPlans"
    for f in folds_with_final:
        (model / f"fold_{f}").mkdir(parents=True, exist_ok=True)
        (model / f"fold_{f}" / "checkpoint_final.pth").write_bytes(b"x")
    for f in folds_with_best:
        (model / f"fold_{f}").mkdir(parents=True, exist_ok=True)
        (model / f"fold_{f}" / "checkpoint_best.pth").write_bytes(b"x")
    for f in empty:
        (model / f"fold_{f}").mkdir(parents=True, exist_ok=True)
    model.mkdir(parents=True, exist_ok=True)
    (model / "fold_3.txt").write_text("not a fold folder")
    return model


def test_default_folds_are_exactly_those_with_the_checkpoint(tmp_path, caplog):
    model = fake_model(tmp_path, folds_with_final=("2", "0", "10", "domain_A"), folds_with_best=("1", "all"),
                       empty=("4",))
    assert folds_with_checkpoint(model) == ["0", "2", "10", "domain_A"]
    assert folds_with_checkpoint(model, "checkpoint_best.pth") == ["1", "all"]
    with caplog.at_level(logging.INFO, logger="samunet.inference.predictor"):
        # cross-validation folds first, as nnU-Net: a domain-hold-out model is not a CV ensemble member
        assert resolve_folds(model, "FakeTrainer") == ["0", "2", "10"]
    assert "0 2 10" in caplog.text and "not used (ask with -f): domain_A" in caplog.text  # it says which
    only_named = fake_model(tmp_path / "b", folds_with_final=("domain_B", "all"))
    assert resolve_folds(only_named, "FakeTrainer") == ["all", "domain_B"]  # no CV fold: the named ones
    assert resolve_folds(model, "FakeTrainer", [3, "domain_B"]) == ["3", "domain_B"]  # -f given: as given


def test_no_fold_with_a_checkpoint_names_the_folder_and_the_command(tmp_path):
    model = fake_model(tmp_path, folds_with_best=("0",), empty=("1",))
    with pytest.raises(PredictionError) as e:
        resolve_folds(model, "FakeTrainer")
    msg = str(e.value)
    assert str(model) in msg and "checkpoint_final.pth" in msg
    assert "samunet_train Dataset777_Fake 0 -tr FakeTrainer" in msg
    with pytest.raises(PredictionError, match="no such folder"):
        resolve_folds(tmp_path / "nowhere" / "T__samunetPlans", "T")


def test_predict_folder_without_folds_fails_clearly(samunet_roots, tmp_path):
    (samunet_roots["results"] / "Dataset777_Fake").mkdir()
    with pytest.raises(PredictionError, match=r"no fold of FakeTrainer has checkpoint_final.pth.*samunet_train"):
        predict_folder(tmp_path, tmp_path / "out", 777, "FakeTrainer")


def test_predict_parser_defaults_and_part_aliases():
    p = build_parser()
    base = ["-i", "in", "-o", "out", "-d", "501"]
    assert p.parse_args(base).f is None
    ours = p.parse_args(base + ["--part", "1", "--num_parts", "3"])
    nnunet = p.parse_args(base + ["-part_id", "1", "-num_parts", "3"])
    assert vars(ours) == vars(nnunet) and (nnunet.part, nnunet.num_parts) == (1, 3)
    assert p.parse_args(base + ["-p", "otherPlans"]).p == "otherPlans"  # -p still the plans name


def test_train_aliases_parse_to_the_same_namespace():
    from samunet.run.train import build_parser as train_parser

    p = train_parser()
    ours = p.parse_args(["501", "0", "--val_only", "--use_best", "--npz"])
    nnunet = p.parse_args(["501", "0", "--val", "--val_best", "--npz"])
    assert vars(ours) == vars(nnunet)
    assert ours.val_only and ours.use_best and ours.npz
    assert not p.parse_args(["501", "0"]).npz


def test_npz_reaches_the_final_validation(monkeypatch):
    """samunet_train --npz -> train_fold(save_probabilities=True) -> run_final_validation ->
    probabilities saved for validation/ and test/, not for the oracle prompt folders."""
    from pathlib import Path

    import samunet.evaluation.final_validation as fv
    import samunet.training.registry as registry
    from samunet.run import train as run_train

    calls = []

    def fake_predict_and_evaluate(trainer, cases, output_folder, desc, save_probabilities=False, **context):
        calls.append((Path(output_folder).name, save_probabilities))
        return None

    class FakeTrainer:
        validation_prompt_modes = ["auto", "gt_box"]
        rank = 0

        def __init__(self, dataset, fold, plans, **kw):
            self.output_folder = Path("/nonexistent/fold_0")
            self.split = {"val": ["a"], "test": ["b"]}

        def initialize(self):
            pass

        def load(self, path, weights_only_network=False):
            assert path.name == "checkpoint_best.pth"

    monkeypatch.setattr(fv, "predict_and_evaluate", fake_predict_and_evaluate)
    monkeypatch.setattr(registry, "find_trainer", lambda name: FakeTrainer)
    run_train.main(["501", "0", "-tr", "FakeTrainer", "--val", "--val_best", "--npz", "-device", "cpu"])
    assert calls == [("validation", True), ("test", True), ("validation_gt_box", False), ("test_gt_box", False)]
    calls.clear()
    run_train.main(["501", "0", "-tr", "FakeTrainer", "--val", "--val_best", "-device", "cpu"])
    assert all(not npz for _, npz in calls)


def test_new_modules_respect_the_import_direction():
    """ensembling / post-processing sit in inference (no evaluation, training or CLI imports);
    best_configuration in evaluation (no samunet.run)."""
    import subprocess
    import sys

    code = ("import sys, samunet.inference.ensembling, samunet.inference.postprocessing; "
            "bad = sorted(m for m in sys.modules if m.startswith(('samunet.run', 'samunet.evaluation', "
            "'samunet.training'))); assert not bad, bad; "
            "import samunet.evaluation.best_configuration; "
            "bad = sorted(m for m in sys.modules if m.startswith('samunet.run')); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_validation_without_npz_removes_stale_probabilities(samunet_roots, tmp_path, monkeypatch):
    """A validation rerun without --npz must not leave the previous model's CASE.npz beside new label maps."""
    import samunet.evaluation.final_validation as fv

    written = []
    monkeypatch.setattr(fv, "load_preprocessed_case", lambda folder, case: (None, None, {}))
    monkeypatch.setattr(fv, "export_prediction", lambda probs, props, plans, out, npz=False: written.append((out, npz)))

    class T:
        plans = {"file_ending": ".nii.gz"}
        data_folder = tmp_path
        dataset_name = "Dataset777_Fake"

        def predict_preprocessed(self, data, **kw):
            return None

    val = tmp_path / "validation"
    val.mkdir()
    (val / "a.npz").write_bytes(b"old")
    assert fv.predict_and_evaluate(T(), ["a"], val, "validation", save_probabilities=True) is None
    assert (val / "a.npz").exists() and written[-1][1] is True
    fv.predict_and_evaluate(T(), ["a"], val, "validation")
    assert not (val / "a.npz").exists() and written[-1][1] is False


def test_disable_tta_turns_off_stage1_flipping_alone_and_in_a_chain():
    from samunet.inference.predictor import build_parser, disable_test_time_flip
    from samunet.training.trainers.embedding_head_trainer import EmbeddingHeadTrainer

    def head(flip):
        h = EmbeddingHeadTrainer.__new__(EmbeddingHeadTrainer)
        h.plans, h.options = {"embedding_head": {"test_time_flip": flip}}, {}
        return h

    alone, inner = head(True), head(True)
    chain = type("Chain", (), {})()
    chain.stage1, chain.options = inner, {}
    assert alone.test_time_flip and inner.test_time_flip
    disable_test_time_flip([alone, chain])
    assert not alone.test_time_flip and not inner.test_time_flip
    assert chain.options == {}  # a model without flipping is left alone
    assert build_parser().parse_args(["-i", "a", "-o", "b", "-d", "1", "--disable_tta"]).disable_tta
