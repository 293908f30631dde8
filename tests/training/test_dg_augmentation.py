"""Domain-generalisation batch augmentation for the stage-1 ResNet (samunet.training.augmentation)."""

import numpy as np

from samunet.training.augmentation import DGAppearanceTransform, augment, training_transforms


def _batch(b=8, c=1, patch=(64, 64), seed=0) -> dict:
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(*[np.linspace(0, 1, n) for n in patch], indexing="ij")
    data = np.stack([[xx * (0.5 + 0.5 * i) + 0.1 * rng.random(patch) for i in range(c)] for _ in range(b)])
    seg = (np.hypot(yy - 0.5, xx - 0.5) < 0.25)[None, None].repeat(b, 0).astype(np.int16)
    return {"data": data.astype(np.float32), "seg": seg, "keys": [f"k{i}" for i in range(b)]}


def _dg(transforms):
    return [t for t in transforms.transforms if isinstance(t, DGAppearanceTransform)]


def test_dg_transform_changes_intensities_not_seg():
    batch = _batch(c=3)
    np.random.seed(0)
    out = DGAppearanceTransform(p_per_sample=1.0)(data=batch["data"].copy(), seg=batch["seg"].copy())
    assert out["data"].shape == batch["data"].shape and out["data"].dtype == np.float32
    diffs = np.abs(out["data"] - batch["data"]).mean(axis=(1, 2, 3))
    assert (diffs > 1e-3).all()
    np.testing.assert_array_equal(out["seg"], batch["seg"])
    # per-sample range preserved
    assert (out["data"].min(axis=(1, 2, 3)) >= batch["data"].min(axis=(1, 2, 3))).all()
    assert (out["data"].max(axis=(1, 2, 3)) <= batch["data"].max(axis=(1, 2, 3))).all()


def test_dg_probability_leaves_some_samples_plain():
    batch = _batch(b=64)
    np.random.seed(1)
    out = DGAppearanceTransform()(data=batch["data"].copy(), seg=batch["seg"])
    changed = np.abs(out["data"] - batch["data"]).max(axis=(1, 2, 3)) > 0
    assert 0.25 < changed.mean() < 0.75


def test_dg_draws_from_the_global_rng():
    batch = _batch()
    outs = []
    for _ in range(2):
        np.random.seed(3)
        outs.append(DGAppearanceTransform()(data=batch["data"].copy())["data"])
    np.testing.assert_array_equal(*outs)


def test_training_transforms_switch():
    patch = (64, 64)
    assert len(_dg(training_transforms(patch))) == 1  # default on
    assert len(_dg(training_transforms(patch, dg_augmentation=True))) == 1
    off = training_transforms(patch, dg_augmentation=False)
    assert not _dg(off)
    assert len(off.transforms) == len(training_transforms(patch).transforms) - 1
    assert not _dg(training_transforms(patch, True, False, False))  # positional form still works


def test_augment_with_dg_preserves_shapes_and_changes_intensities():
    batch = _batch(b=6, c=3)
    for dg in (True, False):
        np.random.seed(0)
        out = augment(batch, training_transforms((64, 64), dg_augmentation=dg))
        assert out["data"].shape == batch["data"].shape and out["seg"].shape == batch["seg"].shape
        assert out["keys"] == batch["keys"]
        assert np.isfinite(out["data"]).all()
    # with only the DG transform in play, seg is untouched and data changes
    t = training_transforms((64, 64))
    t.transforms = _dg(t)
    t.transforms[0].p_per_sample = 1.0
    np.random.seed(0)
    out = augment(batch, t)
    np.testing.assert_array_equal(out["seg"], batch["seg"])
    assert np.abs(out["data"] - batch["data"]).mean() > 1e-3


def test_resnet_trainer_passes_plan_switch(monkeypatch):
    from samunet.training.trainer_base import BaseTrainer
    from samunet.training.trainers.resnet_trainer import ResNetTrainer

    # stand-in for the datasets the base class builds: only the transforms matter here
    monkeypatch.setattr(BaseTrainer, "make_datasets", lambda self: setattr(self, "transforms", None))
    for plan_value, expected in ((None, 1), (True, 1), (False, 0)):
        trainer = ResNetTrainer.__new__(ResNetTrainer)
        trainer.plans = {"stage1": {"patch_size": [32, 32]}}
        if plan_value is not None:
            trainer.plans["stage1"]["dg_augmentation"] = plan_value
        trainer.make_datasets()
        assert len(_dg(trainer.transforms)) == expected
