"""The chain's stage 1: which trainer, training it when the fold has none, and the out-of-fold
models whose boxes the decoder learns from. Mixed into ``SAMBoxTrainer``, which supplies
``stage1_name``, ``chain_setting``, ``sam`` and ``cache``."""

from __future__ import annotations

import logging

from samunet.training.trainer_base import trainer_output_folder
from samunet.training.trainers.sam_common import SAMTrainerMixin

logger = logging.getLogger(__name__)

DEFAULT_STAGE1_TRAINER = "EmbeddingHeadTrainer"
PAPER_STAGE1_TRAINER = "ResNetTrainer"  # SAMMed's setting (DeepLabV3/ResNet from scratch)


class ChainStage1Mixin:
    """Stage-1 management for a chain trainer."""

    def _stage1_class(self):
        from samunet.training.registry import find_trainer

        cls = find_trainer(self.stage1_name)
        if issubclass(cls, ChainStage1Mixin) or getattr(cls, "plans_section", None) == "sam":
            raise ValueError(f"--stage1 {self.stage1_name}: a stage-1 trainer must be a segmenter that needs no "
                             "prompt (ResNetTrainer, ResNetTrainer_DeepLabV3, EmbeddingHeadTrainer, ...)")
        return cls

    # the chain's options that are its stage 1's (appearance views), passed on when stage 1 takes them
    STAGE1_PASSED_OPTIONS = ("num_views", "view_ops")

    def _stage1_options(self, cls) -> dict:
        """Options passed on to a stage-1 trainer that runs on the same SAM backbone."""
        if not issubclass(cls, SAMTrainerMixin):
            return {}
        names = ("sam", "sam_checkpoint", "encoder_backend", "encoder_precision") + \
            tuple(k for k in self.STAGE1_PASSED_OPTIONS if k in cls.known_options())
        return {k: self.options[k] for k in names if self.options.get(k) is not None}

    def ensure_stage1(self, time_budget: float | None = None):
        """Load the fold's stage-1 model, training it first when it is missing (sized to
        ``time_budget`` seconds when given, else to ``--stage1_epochs/--stage1_iters`` or the plan)."""
        from samunet.training.fold_training import fit_fold

        cls = self._stage1_class()
        folder = trainer_output_folder(self.dataset_name, self.stage1_name, self.plans_name, self.fold)
        ckpt = folder / "checkpoint_final.pth"
        # a stage 1 on the same SAM embedding uses the chain's SAM (one in memory, not two or three)
        shared_sam = getattr(self, "sam", None) if issubclass(cls, SAMTrainerMixin) else None
        shared = {"sam": shared_sam} if shared_sam is not None else {}
        cache = getattr(self, "cache", None)
        training_shared = {**shared, "shared_cache": cache} if shared and cache is not None else shared
        if not ckpt.is_file():
            logger.info("stage 1 (%s) for fold %s is missing: training it first", self.stage1_name, self.fold)
            fit_fold(self.dataset_name, self.fold, self.stage1_name, self.plans_name, str(self.device),
                     self.options.get("stage1_epochs"), self.options.get("stage1_iters"), seed=self.seed,
                     shared=training_shared,
                     **self._stage1_options(cls),
                     **({"time_budget": time_budget} if time_budget is not None else {"time_budget": "none"}
                        if self.time_budget_s() is None and self.options.get("stage1_epochs") is None else {}))
        self.stage1 = cls.from_checkpoint(ckpt, self.device, shared=shared)
        self.stage1_checkpoint = ckpt
        if isinstance(self.stage1, SAMTrainerMixin) and \
                (self.stage1.sam_name, self.stage1.sam_checkpoint) != (self.sam_name, self.sam_checkpoint):
            raise ValueError(f"{ckpt} was trained on the {self.stage1.sam_name} embedding, this chain uses "
                             f"{self.sam_name}: train the chain with the same --sam/--sam_checkpoint, or move "
                             f"{folder} away so that stage 1 is trained again on this backbone")
        return self.stage1

    def out_of_fold_stage1(self) -> dict[str, dict]:
        """``{train case: {"network", "trained_on"}}`` from stage-1 models that did not see the case
        (``oof_folds`` parts; empty when 0 or when the stage-1 trainer cannot train parts)."""
        k = self._oof_folds()
        cls = self._stage1_class()
        if k < 2 or not hasattr(cls, "train_out_of_fold") or len(self.split["train"]) < 2:
            return {}
        # the parts train exactly as long as the fold's stage-1 model did
        from samunet.utilities.file_io import load_json

        sized = self.stage1_checkpoint.parent / "schedule.json"
        epochs, iters = self.options.get("stage1_epochs"), self.options.get("stage1_iters")
        if sized.is_file() and epochs is None and iters is None:
            s = load_json(sized)
            epochs, iters = s["num_epochs"], s["num_iterations_per_epoch"]
        part_trainer = self._stage1_instance(cls, epochs, iters)
        if epochs is None and iters is None:
            part_trainer.options["time_budget"] = "none"
        part_trainer.output_folder = self.stage1_checkpoint.parent
        return part_trainer.train_out_of_fold(k)

    def stage1_view_caches(self) -> list:
        """The appearance views of the training slices the fold's stage 1 trained on (its
        ``appearance_views.json``), for the decoder's training samples too (``sam.decoder_views``;
        plans without the key: none). No extra encoding: views stage 1 did not encode are not used."""
        from samunet.training.view_budget import used_view_tags

        if not self.chain_setting("decoder_views", False) or getattr(self, "stage1_checkpoint", None) is None:
            return []
        caches = [self.make_cache(tag) for tag in used_view_tags(self.stage1_checkpoint.parent)]
        caches = [c for c in caches if all(c.is_valid(case) for case in self.split["train"])]
        if caches:
            logger.info("decoder training samples: the plain embedding or one of stage 1's %d appearance view(s), "
                        "drawn alike", len(caches))
        return caches

    def _stage1_ready(self) -> bool:
        folder = trainer_output_folder(self.dataset_name, self.stage1_name, self.plans_name, self.fold)
        return (folder / "checkpoint_final.pth").is_file()

    def _oof_folds(self) -> int:
        return int(self.chain_setting("oof_folds", 0) or 0)

    def _stage1_instance(self, cls, num_epochs=None, num_iterations=None):
        """A stage-1 trainer on this fold that shares this trainer's SAM and embedding cache."""
        t = cls(self.dataset_name, self.fold, self.plans_name, device=self.device, num_epochs=num_epochs,
                num_iterations_per_epoch=num_iterations, seed=self.seed, **self._stage1_options(cls))
        t.sam, t.shared_cache = self.sam, self.cache
        return t
