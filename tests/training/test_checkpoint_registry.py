import pickle
import random

import numpy as np
import pytest
import torch

from samunet.training.checkpoint import CheckpointError, load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from samunet.training.registry import find_trainer


def test_rng_state_roundtrip_through_weights_only_checkpoint(tmp_path):
    g = np.random.default_rng(5)
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    save_checkpoint(tmp_path / "c.pth", {"rng": rng_state(g)})
    expected = (g.random(), torch.rand(1).item(), np.random.rand(), random.random())
    g2 = np.random.default_rng(99)
    restore_rng_state(load_checkpoint(tmp_path / "c.pth")["rng"], g2)
    assert (g2.random(), torch.rand(1).item(), np.random.rand(), random.random()) == expected


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_malicious_pickle_refused(tmp_path):
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_checkpoint(tmp_path / "evil.pth")
    (tmp_path / "trunc.pth").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(CheckpointError, match="trunc.pth"):
        load_checkpoint(tmp_path / "trunc.pth")


def test_find_trainer_builtin_and_user_folder(tmp_path, monkeypatch):
    assert find_trainer("ResNetTrainer").__name__ == "ResNetTrainer"
    with pytest.raises(KeyError, match="ResNetTrainer"):
        find_trainer("NoSuchTrainer")
    (tmp_path / "my_trainers.py").write_text(
        "from samunet.training.trainers.resnet_trainer import ResNetTrainer\n"
        "class MyTinyTrainer(ResNetTrainer):\n    pass\n"
    )
    monkeypatch.setenv("SAMUNET_TRAINER_PATHS", str(tmp_path))
    assert find_trainer("MyTinyTrainer").__name__ == "MyTinyTrainer"
