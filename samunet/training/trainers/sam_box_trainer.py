"""SAMMed stage 2: box prompts from a stage-1 segmenter, SAM with an adapted mask decoder.

The chain: stage-1 probabilities -> θ1 threshold -> one box per sizeable connected component
of each label (``prompting.boxes_per_label``; SAMMed's rule, the largest component only, for
plans without it) -> frozen prompt encoder -> mask decoder on the cached image embedding ->
sigmoid, boxes of a label merged by max -> θ2 (class probabilities:
:mod:`samunet.training.class_probabilities`). Only the mask decoder is trained; image and
prompt encoders are frozen, and image embeddings come from the embedding cache, so an epoch
costs decoder work only.

Stage 1 is any registered stage-1 trainer: ``--stage1 TRAINER`` or the plan's
``sam.stage1_trainer`` (default ``EmbeddingHeadTrainer``, a head on the same cached embedding;
``ResNetTrainer`` is SAMMed's paper setting). If the fold's stage-1 model is missing it is
trained first, so ``samunet_train DATASET FOLD`` runs the whole chain.

Adapting the decoder without forgetting what SAM knew (plan ``sam`` section):

- the boxes it learns from come from stage-1 models that did not see the case
  (``oof_folds`` heads inside the training cases), so they are as good or bad as test boxes;
- ``gt_box_fraction`` of the prompts are jittered reference boxes (what a user draws);
- ``l2sp_weight``: an L2 pull towards the pretrained decoder weights;
- ``decoder_interpolation``: after training, the decoder's weights are moved that fraction of the
  way from the pretrained ones to the trained ones (WiSE-FT);
- ``validation_choice``: on the fold's (source) validation cases the adapted decoder is kept
  only where it beats the original one with automatic boxes, and each label's final mask is
  SAM's or stage 1's, whichever validates better; the choice is stored in the checkpoint.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import torch

from samunet.sam.box_prompting import (PROMPT_MODES, candidate_box_sets, case_box_sets, component_target,
                                       labels_in_every_case, mask_to_low_res, multi_box_settings,
                                       pick_by_predicted_iou, scaled_boxes, slice_box_sets, slice_boxes)
from samunet.training import distributed as dist_utils
from samunet.training.trainer_base import BaseTrainer
from samunet.training.losses import DiceBCEWithLogits, confusion_counts, mark_ignored  # noqa: F401  (DiceBCEWithLogits: importable from here, as before)
from samunet.training.trainers.chain_stage1 import (DEFAULT_STAGE1_TRAINER, PAPER_STAGE1_TRAINER,  # noqa: F401
                                                    ChainStage1Mixin)
from samunet.training.trainers.sam_common import SAMTrainerMixin
from samunet.training.trainers.validation_choice import ValidationChoiceMixin
from samunet.preprocessing.preprocessor import load_preprocessed_case
from samunet.utilities.progress import progress

logger = logging.getLogger(__name__)

class SAMBoxTrainer(ChainStage1Mixin, ValidationChoiceMixin, SAMTrainerMixin, BaseTrainer):
    """SAMMed (Wang et al.): stage-1 boxes -> SAM with an adapted mask decoder."""

    OPTIONS = frozenset({"stage1", "stage1_epochs", "stage1_iters", "train_box_source", "oof_folds",
                         "gt_box_fraction", "l2sp_weight", "validation_choice", "stage1_ensemble",
                         "stage1_time_share", "micro_batch_size", "decoder_interpolation",
                         "validation_views", "decoder_views", *ChainStage1Mixin.STAGE1_PASSED_OPTIONS})

    plans_section = "sam"
    box_prompted = True  # nested labels: the deepest wins where SAM's masks overlap (label_depths)
    wrap_in_ddp = False  # the decoder is used piecewise; gradients are averaged in train_step
    validation_prompt_modes = ["auto", "gt_box", "full_box"]

    # ---- configuration ------------------------------------------------------------

    @property
    def prompting(self) -> dict:
        prompting = self.plans["prompting"]
        if prompting.get("mosaic"):
            raise ValueError(
                "plans.json prompting.mosaic is true, but mosaic (2x2 slice) training is not implemented in "
                "samunet yet; set it to false (the SAMMed mosaic and legacy_box_offset helpers exist in "
                "samunet.sam.prompts for experiments)")
        return prompting

    def chain_setting(self, key: str, default):
        """Trainer option (``--opt``), else the plan's ``sam`` section, else ``default``."""
        if self.options.get(key) is not None:
            return self.options[key]
        value = self.plans["sam"].get(key)
        return default if value is None else value

    @property
    def stage1_name(self) -> str:
        return str(self.chain_setting("stage1", None) or self.plans["sam"].get("stage1_trainer") or DEFAULT_STAGE1_TRAINER)

    def network_config(self) -> dict:
        return {"sam": self.sam_name, "sam_checkpoint": self.sam_checkpoint}

    def build_network(self) -> torch.nn.Module:
        if getattr(self, "sam", None) is None:
            self.sam = self.make_sam()  # image encoder on --encoder_backend/--encoder_precision
        if isinstance(getattr(self, "stage1", None), SAMTrainerMixin):
            self.stage1.sam = self.sam  # one SAM for both stages
        return self.sam.mask_decoder  # the only trained part

    def build_loss(self):
        return DiceBCEWithLogits()

    def configure_optimizers(self):
        cfg = self.plans["sam"]
        # the pretrained decoder, for the L2-SP pull and the original-vs-adapted choice
        self.pretrained_decoder = {k: v.detach().clone() for k, v in self.sam.mask_decoder.state_dict().items()}
        opt = torch.optim.Adam(self.sam.trainable_decoder_parameters(), lr=cfg["initial_lr"],
                               weight_decay=cfg.get("weight_decay", 0.0))
        return opt, None  # constant learning rate, as in SAMMed

    def extra_checkpoint_state(self) -> dict:
        return {
            "stage1_weights": self.stage1.network.state_dict(),
            "stage1_ensemble_weights": [n.state_dict() for n in getattr(self.stage1, "ensemble_members", [])],
            "stage1_config": json.dumps(self.stage1.network_config()),
            "stage1_trainer": type(self.stage1).__name__,
            "stage1_options": json.dumps(getattr(self.stage1, "options", {}) or {}),
            "final_choice": json.dumps(getattr(self, "final_choice", None)),
            "always_present_labels": json.dumps(sorted(getattr(self, "always_present", ()))),
            **self.label_depths_state(),
            # the adapted decoder when the validation choice kept the original one (else: the network)
            **({"adapted_decoder": self.adapted_decoder} if getattr(self, "adapted_decoder", None) else {}),
        }

    def restore_inference_state(self, checkpoint: dict) -> None:
        from samunet.training.registry import find_trainer

        name = checkpoint.get("stage1_trainer", PAPER_STAGE1_TRAINER)
        stage1 = find_trainer(name).for_inference(self.plans, self.dataset_json, checkpoint["stage1_weights"],
                                                  json.loads(checkpoint.get("stage1_options", "{}")), checkpoint,
                                                  device=self.device, fold=getattr(self, "fold", None), seed=self.seed)
        self.stage1 = stage1
        self.restore_run_choices(checkpoint)  # its extra heads, the validation choice, the label rules
        self.cache = None

    # ---- cache and prompts --------------------------------------------------------
    def stage1_fg_probs(self, data: np.ndarray, case: str | None = None, network=None) -> np.ndarray:
        """``(K_fg, Z, Y, X)`` stage-1 probability of each foreground label (``network``: an
        out-of-fold stage-1 network instead of the fold's)."""
        context = {"case": case}
        if network is not None:
            context["network"] = network
        return self.stage1.predict_preprocessed(data, **context)[1:]

    def always_present_labels(self) -> frozenset:
        """Labels in every training case, image or volume (plan ``prompting.presence_prior``): a
        case where stage 1 finds one on no slice still gets boxes around its most probable region."""
        if not self.prompting.get("presence_prior"):
            return frozenset()
        present = labels_in_every_case((np.asarray(self._seg(c))[0] for c in self.split["train"]),
                                       self.foreground_labels)
        if present:
            logger.info("labels in every training case: %s (a case where stage 1 finds one on no slice gets boxes "
                        "around its most probable region)", sorted(present))
        return present

    def _auto_boxes(self, probs_z: np.ndarray, rng=None) -> dict[int, np.ndarray]:
        return slice_box_sets("auto", probs_z, None, self.foreground_labels, self.prompting, rng)

    def collect_prompts(self, cases: list[str], source: str, oof: dict | None = None) -> list[tuple]:
        """``(case, z, label, box)`` training prompts, per plan/option ``train_box_source``:

        - ``stage1`` (default): stage-1 boxes, including false positives (their target is
          empty, which teaches the decoder to reject bad boxes); where stage 1 misses an
          object the reference box is used instead, so a weak stage 1 still leaves data;
        - ``stage1_only``: stage-1 boxes only (SAMMed's reference code);
        - ``gt``: reference boxes only.

        ``oof`` (:meth:`out_of_fold_stage1`): a case listed there gets its boxes from the
        stage-1 network that did not see it.
        """
        if source not in ("stage1", "stage1_only", "gt"):
            raise ValueError(f"train_box_source must be stage1, stage1_only or gt, got {source!r}")
        prompts = []
        for case in progress(cases, desc=f"{source} boxes", unit="case", leave=False):
            data, seg, _ = load_preprocessed_case(self.data_folder, case)
            probs = None
            if source != "gt":
                net = (oof or {}).get(case, {}).get("network")
                if net is None and getattr(self.stage1, "test_time_flip", False):
                    # in-sample boxes as out-of-fold ones are made: one head, no mirrored slices (which
                    # would cost an encoder pass per training slice; demo: 59 s of a 7-min budget)
                    net = self.stage1.network
                probs = self.stage1_fg_probs(data, case, net)
            for z in range(data.shape[1]):
                found: dict[int, np.ndarray] = {}
                if source != "gt":
                    found = self._auto_boxes(probs[:, z])
                if source != "stage1_only":
                    gt = slice_boxes("gt_box", None, seg[0, z], self.foreground_labels, self.prompting)
                    found = {**{l: b[None] for l, b in gt.items()}, **found}
                prompts += [(case, z, label, box) for label, boxes in found.items() for box in boxes]
        return prompts

    def reference_prompts(self, cases: list[str]) -> list[tuple]:
        """``(case, z, label, box)``: the reference box of every label on every slice."""
        out = []
        for case in cases:
            seg = np.asarray(self._seg(case))[0]
            for z in range(seg.shape[0]):
                for label, box in slice_boxes("gt_box", None, seg[z], self.foreground_labels, self.prompting).items():
                    out.append((case, z, label, box))
        return out

    validation_reserve_fraction = 0.15  # three prompt modes on validation and test cases
    STAGE1_SHARE = 0.5  # plans without sam.stage1_time_share

    def stage1_budget(self, budget: float, heads: int) -> float:
        """Seconds for each of stage 1's ``heads`` models: ``sam.stage1_time_share`` of what the
        budget has left after encoding (since ``budget_start``) and the validation reserve; the
        decoder gets the rest. Nothing left (encoding took the budget): each stage trains its minimum."""
        spent = time.perf_counter() - self.budget_start
        left = budget * (1 - self.validation_reserve_fraction) - spent
        share = float(self.chain_setting("stage1_time_share", self.STAGE1_SHARE))
        if not 0.0 < share < 1.0:
            raise ValueError(f"plans.json sam.stage1_time_share must be between 0 and 1 (exclusive), got {share}: it "
                             "is the share of the time budget left after encoding that stage 1 gets, the decoder the rest")
        head_budget = max(max(left, 0.0) * share / heads, 1.0)
        logger.info("time budget %.0f s: %.0f s left after encoding; stage 1 gets %.0f s per model (%d model%s), the "
                    "decoder the rest", budget, left, head_budget, heads, "s" if heads > 1 else "")
        if left < 0.5 * budget * (1 - self.validation_reserve_fraction):
            logger.warning("encoding took %.0f s of the %.0f s time budget, so both stages train short schedules; a "
                           "larger --time_budget trains longer (the embeddings are cached now: runs on this dataset "
                           "spend no more time encoding them)", spent, budget)
        return head_budget

    def run_training(self, resume: bool = False) -> None:
        budget = self.time_budget_s()
        if getattr(self, "stage1", None) is None and not self._stage1_ready():
            # encode first (the chain's fixed cost), then give stage 1 its share of what is left
            self.sam = getattr(self, "sam", None) or self.make_sam()
            self.cache = self.make_cache()
            self.cache.build(self.split["train"] + self.split["val"] + self.split.get("test", []), self.sam,
                             part=self.rank, num_parts=self.world_size)
            head_budget = None
            if budget is not None:
                cls = self._stage1_class()
                if hasattr(cls, "build_caches"):  # e.g. appearance views: encoded before the clock is split
                    pre = self._stage1_instance(cls)
                    pre.options["time_budget"] = budget  # the chain's: appearance views may take a share of it
                    pre.build_caches()
                heads = 1 + (self._oof_folds() if hasattr(cls, "train_out_of_fold") else 0)
                head_budget = self.stage1_budget(budget, heads)
            self.ensure_stage1(head_budget)
        else:
            self.ensure_stage1()  # before seeding, so the RNG streams do not depend on whether stage 1 ran here
        super().run_training(resume)  # checkpoint_latest keeps the decoder as trained (--c resumes from it)
        alpha = float(self.chain_setting("decoder_interpolation", 1.0))
        changed = self.interpolate_decoder(alpha)
        if self.rank == 0 and self.chain_setting("validation_choice", False):
            self.choose_on_validation()
            changed = True
        if self.rank == 0 and changed:
            self.save("checkpoint_final.pth")
            self.finish_best_checkpoint(alpha)

    def make_datasets(self) -> None:
        if getattr(self, "stage1", None) is None:
            self.ensure_stage1()
        self.cache = self.make_cache()
        needed = self.split["train"] + self.split["val"] + self.split.get("test", [])
        # under torchrun every rank encodes its share of the cases, then all wait for the rest
        self.cache.build(needed, self.sam, part=self.rank, num_parts=self.world_size)
        dist_utils.barrier()
        if isinstance(self.stage1, SAMTrainerMixin):  # one SAM and one cache for both stages
            self.stage1.sam, self.stage1.cache = self.sam, self.cache
        self.always_present = self.always_present_labels()
        if hasattr(self.stage1, "build_flip_cache"):  # stage 1's test-time flipping on validation/test cases
            self.stage1.build_flip_cache(self.split["val"] + self.split.get("test", []), self.make_cache)
            dist_utils.barrier()
        source = self.options.get("train_box_source") or self.plans["sam"].get("train_box_source", "stage1")
        self.oof_sources = {}
        oof = self.out_of_fold_stage1() if source != "gt" else {}
        if oof:
            self.oof_sources = {case: list(v["trained_on"]) for case, v in oof.items()}
            parts = list({id(v["network"]): v["network"] for v in oof.values()}.values())
            logger.info("decoder-training boxes: out-of-fold stage 1 (%d parts)", len(parts))
            if self.chain_setting("stage1_ensemble", False) and hasattr(self.stage1, "ensemble_members"):
                # validation/test boxes: the mean of the fold's head and the out-of-fold heads
                self.stage1.ensemble_members = parts
        self.decoder_view_caches = self.stage1_view_caches()
        self.train_prompts = self.collect_prompts(self.split["train"], source, oof)
        self.val_prompts = self.collect_prompts(self.split["val"], source)
        self.gt_prompts = self.reference_prompts(self.split["train"])
        if not self.train_prompts:
            raise RuntimeError(
                f"no box prompts from {source} on the training cases of fold {self.fold}: stage 1 finds no object "
                "at θ1. Train stage 1 longer, lower prompting.theta1 in plans.json, or set train_box_source to gt."
            )
        logger.info("%d training prompts, %d validation prompts", len(self.train_prompts), len(self.val_prompts))

    def _target(self, case: str, z: int, label: int, box) -> np.ndarray:
        mask = np.asarray(self._seg(case)[0, z]) == label
        if multi_box_settings(self.prompting) is None:
            return mask  # SAMMed: the label's whole mask, whatever the box
        return component_target(mask, box)

    def _batch(self, prompts: list[tuple], n: int, rng: np.random.Generator, jitter: bool,
               gt_prompts: list[tuple] | None = None, gt_fraction: float = 0.0, views: list | None = None) -> dict:
        """``n`` prompts with their embeddings and targets; ``views``: appearance-view caches a sample
        may take its embedding from instead of the plain one (each with the plain one's chance)."""
        emb, boxes, targets = [], [], []
        for _ in range(n):
            pool = gt_prompts if gt_prompts and gt_fraction > 0 and rng.random() < gt_fraction else prompts
            case, z, label, box = pool[int(rng.integers(len(pool)))]
            source = self.cache
            if views:  # no draw without views: the same samples as before for every other plan
                v = int(rng.integers(len(views) + 1))
                source = views[v - 1] if v else self.cache
            emb.append(np.asarray(source.load(case)[z], dtype=np.float32))
            target = self._target(case, z, label, box)
            if jitter:
                from samunet.sam.prompts import jitter_box

                lo, hi = self.prompting["box_jitter_px"]
                box = jitter_box(box, rng, int(hi), target.shape, min_shift=int(lo))
            boxes.append(self.sam.scale_boxes(torch.as_tensor(np.asarray(box)[None], dtype=torch.float32), target.shape)[0])
            info = self.cache.info(case)
            low = mask_to_low_res(torch.from_numpy(target)[None], info["scaled_hw"], self.sam.input_size)[0]
            ignored = self.ignored_pixels(np.asarray(self._seg(case)[0, z]))
            if ignored is not None:
                low = mark_ignored(low, mask_to_low_res(torch.from_numpy(ignored)[None], info["scaled_hw"],
                                                        self.sam.input_size)[0])
            targets.append(low)
        return {"embeddings": torch.from_numpy(np.stack(emb)), "boxes": torch.stack(boxes), "target": torch.stack(targets)}

    def next_train_batch(self) -> dict:
        return self._batch(self.train_prompts, max(1, self.batch_size // self.world_size), self.rng, jitter=True,
                           gt_prompts=getattr(self, "gt_prompts", None),
                           gt_fraction=float(self.chain_setting("gt_box_fraction", 0.0)),
                           views=getattr(self, "decoder_view_caches", None))

    def next_val_batch(self, rng: np.random.Generator) -> dict:
        return self._batch(self.val_prompts or self.train_prompts, self.batch_size, rng, jitter=False)

    def _forward(self, batch: dict) -> torch.Tensor:
        emb = batch["embeddings"].to(self.device)
        sparse, dense = self.sam.encode_prompts(boxes=batch["boxes"].to(self.device))
        logits, _ = self.sam.decode(emb, sparse, dense, None, multimask_output=False)
        return logits

    def l2sp_penalty(self) -> torch.Tensor:
        """``sum((w - w_pretrained)^2)`` over the trained decoder weights."""
        ref = self.pretrained_decoder
        terms = [((p - ref[n].to(p.device)) ** 2).sum() for n, p in self.sam.mask_decoder.named_parameters()
                 if p.requires_grad]
        return torch.stack(terms).sum() if terms else torch.zeros(())

    def train_step(self, batch: dict) -> float:
        """One update from the whole batch; its gradient is accumulated over micro-batches of the
        plan's ``sam.micro_batch_size`` prompts (0: one pass), each loss weighted by its share of the
        batch, so the update is the batch's (pooled BCE weighting aside, with ignored pixels) while
        the decoder's activations are held for one micro-batch at a time."""
        self.sam.train()
        self.optimizer.zero_grad(set_to_none=True)
        n = int(batch["boxes"].shape[0])
        step = int(self.chain_setting("micro_batch_size", 0) or 0)
        step = n if step <= 0 else min(step, n)
        weight = float(self.chain_setting("l2sp_weight", 0.0))
        total_loss = 0.0
        for start in range(0, n, step):
            part = {k: v[start:start + step] for k, v in batch.items()}
            loss = self.loss(self._forward(part), part["target"].to(self.device)) * (part["boxes"].shape[0] / n)
            total = loss + weight * self.l2sp_penalty() if weight > 0 and start == 0 else loss
            total.backward()
            total_loss += float(loss.detach())
        dist_utils.average_gradients(self.sam.trainable_decoder_parameters())
        self.optimizer.step()
        return total_loss

    @torch.no_grad()
    def validation_step(self, batch: dict):
        self.sam.eval()
        logits = self._forward(batch)
        target = batch["target"].to(self.device)
        loss = float(self.loss(logits, target))
        pred = (logits > 0) & (target >= 0)  # IGNORE_TARGET pixels are neither right nor wrong
        t = target > 0.5
        tp, fp, fn = confusion_counts(pred, t)
        return loss, np.array([tp]), np.array([fp]), np.array([fn])

    # ---- inference ----------------------------------------------------------------
    @torch.no_grad()
    def predict_preprocessed(self, data: np.ndarray, case: str | None = None, reference_seg=None,
                             prompt: str = "auto", user_boxes: dict | None = None, prompts_out: list | None = None,
                             **context) -> np.ndarray:
        """``(C, Z, Y, X)`` -> ``(K, Z, Y, X)`` class probabilities, background first, summing to 1
        per voxel (:meth:`class_probabilities`), from SAM's sigmoid for each label (the max over
        that label's boxes): the argmax is the label above θ2 (background otherwise). With
        automatic prompts, a label for which the validation choice picked stage 1 takes stage 1's
        probability against the background instead (with every label from stage 1: stage 1's
        probabilities, whose argmax the choice validated).

        ``user_boxes`` ``{z: {label: [x0, y0, x1, y1]}}`` in the preprocessed slice frame
        (see :func:`samunet.sam.box_prompting.user_boxes_to_preprocessed`) replace the
        automatic prompts of the case (slices without a user box get none); SAM stays
        promptable after fine-tuning. ``prompts_out`` (a list), when given, receives every
        box used: ``{"z", "label", "box"}`` (see :mod:`samunet.inference.prompt_record`)."""
        if prompt not in PROMPT_MODES:
            raise ValueError(f"unknown prompt mode {prompt!r}; choose one of {PROMPT_MODES}")
        self.sam.eval()
        _, z_count, y, x = data.shape
        fg = self.foreground_labels
        out = self.empty_label_scores(data.shape)
        automatic = prompt in ("auto", "unfiltered_box") and user_boxes is None
        all_probs = self.stage1.predict_preprocessed(data, case=case) if automatic else None
        probs = None if all_probs is None else all_probs[1:]
        rng = np.random.default_rng(self.seed if hasattr(self, "seed") else 0) \
            if self.prompting.get("test_time_box_jitter") else None
        auto_sets = case_box_sets(probs, fg, self.prompting, rng, getattr(self, "always_present", None)) \
            if prompt == "auto" and user_boxes is None else None
        cache = getattr(self, "cache", None)
        use_cache = case is not None and cache is not None and cache.is_valid(case)
        for z in range(z_count):
            ref = None if reference_seg is None else np.asarray(reference_seg[0, z])
            if user_boxes is not None:  # the user's boxes are this case's prompts
                boxes = {int(l): np.asarray(b).reshape(-1, 4) for l, b in user_boxes.get(z, {}).items() if int(l) in fg}
            elif prompt == "auto":
                boxes = auto_sets[z]
            else:
                boxes = {l: b[None] for l, b in slice_boxes(prompt, None if probs is None else probs[:, z], ref, fg,
                                                            self.prompting, rng, slice_shape=(y, x)).items()}
            if not boxes:
                continue  # no prompt -> empty slice, never a crash
            # prompting.candidate_thresholds: more box sets per label, SAM's IoU prediction picks one
            pairs = candidate_box_sets(boxes, probs[:, z], fg, self.prompting, rng) if auto_sets \
                else list(boxes.items())
            emb, scaled_hw = self.slice_embedding(data, z, case if use_cache else None)
            flat = np.concatenate([bs for _, bs in pairs])
            if prompt == "auto" and user_boxes is None:  # prompting.box_scale: a little beyond stage 1's extents
                flat = scaled_boxes(flat, float(self.prompting.get("box_scale", 1.0)), (y, x))
            b = self.sam.scale_boxes(torch.as_tensor(flat, dtype=torch.float32), (y, x))
            sparse, dense = self.sam.encode_prompts(boxes=b.to(self.device))
            logits, iou = self.sam.decode(emb.to(self.device), sparse, dense, None)
            keep = np.asarray(pick_by_predicted_iou(pairs, iou[:, 0].cpu().numpy()))
            box_labels = [l for l, bs in pairs for _ in bs]
            owners = [l for l, k in zip(box_labels, keep) if k]
            if prompts_out is not None:
                prompts_out.extend({"z": z, "label": int(l), "box": [int(round(float(v))) for v in b]}
                                   for l, b in zip(owners, flat[keep]))
            p = torch.sigmoid(self.sam.postprocess_logits(logits[torch.as_tensor(keep)], scaled_hw, (y, x)))
            p = p[:, 0].cpu().numpy()
            for l, pl in zip(owners, p):
                k = fg.index(l) + 1
                out[k, z] = np.maximum(out[k, z], pl)
        choice = (getattr(self, "final_choice", None) or {}).get("labels", {})
        from_stage1 = {}
        if prompt == "auto" and user_boxes is None and choice:
            from_stage1 = {fg.index(l) + 1: all_probs for l in fg if choice.get(str(l)) == "stage1"}
        return self.class_probabilities(out, from_stage1)
