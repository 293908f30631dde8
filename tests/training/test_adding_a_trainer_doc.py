"""The worked example of documentation/adding_a_trainer.md runs as written.

The trainer code is taken from the page's python block (so page and test cannot drift),
written into a folder listed in ``SAMUNET_TRAINER_PATHS``, trained through the
``samunet_train`` entry point for 1 epoch x 2 iterations, and used by ``samunet_predict``.
The preset trainers of documentation/reproducing_papers.md are checked the same way (built, not trained).
"""

import json
import re
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from samunet.training.checkpoint import load_checkpoint

DOCS = Path(__file__).resolve().parents[2] / "documentation"
DOC = DOCS / "adding_a_trainer.md"
TRAINER = "ResNetTrainer_Tversky"
MODULE_STEM = "resnet_tversky"


def doc_python_block(doc=DOC) -> str:
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 1, f"{doc.name} should hold exactly one python block, found {len(blocks)}"
    return blocks[0]


def test_doc_example_trains_predicts_and_takes_its_options(synthetic_planned, samunet_roots, tmp_path, monkeypatch):
    from samunet.inference.predictor import predict_folder
    from samunet.run.train import main as train_main

    code = doc_python_block()
    assert f"class {TRAINER}(" in code and f"my_trainers/{MODULE_STEM}.py" in DOC.read_text(encoding="utf-8")
    folder = tmp_path / "my_trainers"
    folder.mkdir()
    (folder / f"{MODULE_STEM}.py").write_text(code, encoding="utf-8")
    monkeypatch.setenv("SAMUNET_TRAINER_PATHS", str(folder))
    monkeypatch.delitem(sys.modules, f"samunet_user_trainers.{MODULE_STEM}", raising=False)

    train_main(["650", "0", "-tr", TRAINER, "--epochs", "1", "--iters", "2", "-device", "cpu",
                "--opt", "tversky_beta=0.8", "--opt", "batch_size=2", "--opt", "num_val_iterations=1"])

    fold = samunet_roots["results"] / "Dataset650_Synthetic" / f"{TRAINER}__samunetPlans" / "fold_0"
    ckpt = load_checkpoint(fold / "checkpoint_final.pth")
    assert ckpt["trainer_name"] == TRAINER
    assert json.loads(ckpt["options"])["tversky_beta"] == 0.8
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert summary["n_cases"] >= 1 and not summary["missing_predictions"]

    # the documented loss really is the one trained: the user module's class, with the --opt value
    from samunet.training.registry import find_trainer

    cls = find_trainer(TRAINER)
    t = cls(650, 0, device="cpu", tversky_beta=0.8)
    loss = t.build_loss()
    assert type(loss).__name__ == "TverskyCELoss" and (loss.alpha, loss.beta) == (0.3, 0.8)
    logits = torch.zeros(2, 1, 8, 8)
    target = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    target[:, :, 2:6, 2:6] = 1
    assert float(loss(logits, target)) > float(loss(20 * (2 * target.float() - 1), target))

    # predict one raw case with the trained fold
    raw = samunet_roots["raw"] / "Dataset650_Synthetic" / "imagesTr"
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "s00_0000.nii.gz").write_bytes((raw / "s00_0000.nii.gz").read_bytes())
    written = predict_folder(inp, tmp_path / "out", 650, TRAINER, folds=["0"], device="cpu")
    assert [p.name for p in written] == ["s00.nii.gz"]
    pred = sitk.ReadImage(str(written[0]))
    ref = sitk.ReadImage(str(inp / "s00_0000.nii.gz"))
    assert pred.GetSize() == ref.GetSize() and np.allclose(pred.GetSpacing(), ref.GetSpacing())
    # the written map is the fold's own argmax on the preprocessed case (the synthetic volumes are
    # neither cropped nor resampled, so the grids coincide voxel for voxel)
    from samunet.preprocessing.preprocessor import load_preprocessed_case

    trained = cls.from_checkpoint(fold / "checkpoint_final.pth", "cpu")
    data, _, _ = load_preprocessed_case(t.data_folder, "s00")
    expected = np.asarray(trained.label_values)[trained.predict_preprocessed(data).argmax(0)]
    assert expected.shape == sitk.GetArrayFromImage(pred).shape
    assert (sitk.GetArrayFromImage(pred) == expected).mean() > 0.999

    # reproducing_papers.md: its preset trainers are found and fill in their settings,
    # while an explicit --opt still wins
    (folder / "paper_settings.py").write_text(doc_python_block(DOCS / "reproducing_papers.md"), encoding="utf-8")
    monkeypatch.delitem(sys.modules, "samunet_user_trainers.paper_settings", raising=False)
    p3 = find_trainer("ProMISeTrainer_3P")(650, 0, device="cpu")
    assert p3.setting("points") == 3 and p3.output_folder.parent.name == "ProMISeTrainer_3P__samunetPlans"
    assert find_trainer("ProMISeTrainer_3P")(650, 0, device="cpu", points=16).setting("points") == 16
    assert find_trainer("ProMISeTrainer_5P")(650, 0, device="cpu").setting("points") == 5
    ref = find_trainer("ProMISeTrainer_Reference")(650, 0, device="cpu")
    assert (ref.setting("apm_depth"), ref.setting("legacy_double_sigmoid"), ref.setting("fg_slice_fraction")) == (34, True, 0.0)
    cref = find_trainer("ClassPromptTrainer_Reference")(650, 0, device="cpu")
    assert (cref.setting("final_relu"), cref.setting("eval_noise"), cref.setting("noise_sampling")) == (True, "sampled", "loop")
