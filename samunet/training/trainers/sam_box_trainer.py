"""SAMMed stage 2: box prompts from the stage-1 ResNet, SAM with a fine-tuned mask decoder.

The chain: stage-1 probabilities -> θ1 threshold -> largest connected component of the
downsampled mask -> its box (jittered in training) -> frozen prompt encoder -> fine-tuned
mask decoder on the cached image embedding -> sigmoid -> θ2. Only the mask decoder is
trained; image and prompt encoders are frozen, and image embeddings come from the
embedding cache, so an epoch costs decoder work only.

If the fold's stage-1 model (``ResNetTrainer``) is missing it is trained first, so
``samunet_train DATASET FOLD`` runs the whole chain.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from samunet.sam.box_prompting import PROMPT_MODES, mask_to_low_res, slice_boxes
from samunet.sam.embedding_cache import EmbeddingCache, encode_volume
from samunet.sam.embedding_lru import prediction_lru
from samunet.sam.registry import weights_identity
from samunet.training import distributed as dist_utils
from samunet.training.trainer_base import BaseTrainer, trainer_output_folder
from samunet.training.trainers.sam_common import SAMTrainerMixin
from samunet.experiment_planning.plan_and_preprocess import data_identifier
from samunet.preprocessing.preprocessor import load_preprocessed_case

logger = logging.getLogger(__name__)

STAGE1_TRAINER = "ResNetTrainer"


class DiceBCEWithLogits(torch.nn.Module):
    """Per-sample soft Dice + BCE on logits, 1:1 (MedSAM style). ``(B, 1, H, W)`` both."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits, target)
        p = torch.sigmoid(logits)
        inter = (p * target).sum((1, 2, 3))
        dice = (2 * inter + 1e-5) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1e-5)
        return bce + (1 - dice).mean()


class SAMBoxTrainer(SAMTrainerMixin, BaseTrainer):
    """SAMMed (Wang et al.): ResNet boxes -> SAM with a fine-tuned mask decoder."""

    OPTIONS = frozenset({"stage1_epochs", "stage1_iters", "train_box_source"})

    plans_section = "sam"
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

    def network_config(self) -> dict:
        return {"sam": self.sam_name, "sam_checkpoint": self.sam_checkpoint}

    def build_network(self) -> torch.nn.Module:
        self.sam = self.make_sam()  # image encoder on --encoder_backend/--encoder_precision
        return self.sam.mask_decoder  # the only trained part

    def build_loss(self):
        return DiceBCEWithLogits()

    def configure_optimizers(self):
        cfg = self.plans["sam"]
        opt = torch.optim.Adam(self.sam.trainable_decoder_parameters(), lr=cfg["initial_lr"],
                               weight_decay=cfg.get("weight_decay", 0.0))
        return opt, None  # constant learning rate, as in SAMMed

    # ---- stage 1 ------------------------------------------------------------------
    def ensure_stage1(self):
        """Load the fold's stage-1 model, training it first when it is missing."""
        from samunet.training.trainers.resnet_trainer import ResNetTrainer

        folder = trainer_output_folder(self.dataset_name, STAGE1_TRAINER, self.plans_name, self.fold)
        ckpt = folder / "checkpoint_final.pth"
        if not ckpt.is_file():
            logger.info("stage 1 (%s) for fold %s is missing: training it first", STAGE1_TRAINER, self.fold)
            from samunet.run.train import train

            train(self.dataset_name, self.fold, STAGE1_TRAINER, self.plans_name, str(self.device),
                  self.options.get("stage1_epochs"), self.options.get("stage1_iters"), seed=self.seed)
        self.stage1 = ResNetTrainer.from_checkpoint(ckpt, self.device)
        self.stage1_checkpoint = ckpt
        return self.stage1

    def extra_checkpoint_state(self) -> dict:
        return {
            "stage1_weights": self.stage1.network.state_dict(),
            "stage1_config": json.dumps(self.stage1.network_config()),
            "stage1_trainer": STAGE1_TRAINER,
        }

    def restore_inference_state(self, checkpoint: dict) -> None:
        from samunet.networks.resnet_segmenter import build_stage1_network
        from samunet.training.trainers.resnet_trainer import ResNetTrainer

        cfg = json.loads(checkpoint["stage1_config"])
        stage1 = ResNetTrainer.__new__(ResNetTrainer)
        stage1.device, stage1.plans, stage1.dataset_json = self.device, self.plans, self.dataset_json
        stage1.label_values, stage1.batch_size = self.label_values, int(self.plans["stage1"]["batch_size"])
        stage1.network = build_stage1_network(cfg["backbone"], cfg["in_channels"], cfg["num_outputs"], cfg["base_width"])
        stage1.network.load_state_dict(checkpoint["stage1_weights"])
        stage1.network.to(self.device).eval()
        self.stage1 = stage1
        self.cache = None

    # ---- cache and prompts --------------------------------------------------------
    def make_cache(self) -> EmbeddingCache:
        return EmbeddingCache(self.preprocessed_folder, data_identifier(self.plans), self.sam_name,
                              weights_identity(self.sam_name, self.sam_checkpoint), self.sam.input_size,
                              self.plans["sam"].get("cache_dtype", "float16"), precision=self.sam.encoder_precision)

    def stage1_fg_probs(self, data: np.ndarray) -> np.ndarray:
        """``(K_fg, Z, Y, X)`` stage-1 probability of each foreground label."""
        return self.stage1.predict_preprocessed(data)[1:]

    def collect_prompts(self, cases: list[str], source: str) -> list[tuple]:
        """``(case, z, label, box)`` training prompts, per plan/option ``train_box_source``:

        - ``stage1`` (default): stage-1 boxes, including false positives (their target is
          empty, which teaches the decoder to reject bad boxes); where stage 1 misses an
          object the reference box is used instead, so a weak stage 1 still leaves data;
        - ``stage1_only``: stage-1 boxes only (SAMMed's reference code);
        - ``gt``: reference boxes only.
        """
        if source not in ("stage1", "stage1_only", "gt"):
            raise ValueError(f"train_box_source must be stage1, stage1_only or gt, got {source!r}")
        prompts = []
        for case in tqdm(cases, desc=f"{source} boxes", leave=False):
            data, seg, _ = load_preprocessed_case(self.data_folder, case)
            probs = self.stage1_fg_probs(data) if source != "gt" else None
            for z in range(data.shape[1]):
                boxes = {}
                if source != "gt":
                    boxes = slice_boxes("auto", probs[:, z], None, self.foreground_labels, self.prompting)
                if source != "stage1_only":
                    gt = slice_boxes("gt_box", None, seg[0, z], self.foreground_labels, self.prompting)
                    boxes = {**gt, **boxes}
                prompts += [(case, z, label, box) for label, box in boxes.items()]
        return prompts

    def run_training(self, resume: bool = False) -> None:
        self.ensure_stage1()  # before seeding, so the RNG streams do not depend on whether stage 1 ran here
        super().run_training(resume)

    def make_datasets(self) -> None:
        if getattr(self, "stage1", None) is None:
            self.ensure_stage1()
        self.cache = self.make_cache()
        needed = self.split["train"] + self.split["val"] + self.split.get("test", [])
        # under torchrun every rank encodes its share of the cases, then all wait for the rest
        self.cache.build(needed, self.sam, part=self.rank, num_parts=self.world_size)
        dist_utils.barrier()
        source = self.options.get("train_box_source") or self.plans["sam"].get("train_box_source", "stage1")
        self.train_prompts = self.collect_prompts(self.split["train"], source)
        self.val_prompts = self.collect_prompts(self.split["val"], source)
        if not self.train_prompts:
            raise RuntimeError(
                f"no box prompts from {source} on the training cases of fold {self.fold}: stage 1 finds no object "
                "at θ1. Train stage 1 longer, lower prompting.theta1 in plans.json, or set train_box_source to gt."
            )
        self._segs = {}
        logger.info("%d training prompts, %d validation prompts", len(self.train_prompts), len(self.val_prompts))

    def _seg(self, case: str) -> np.ndarray:
        if case not in self._segs:
            self._segs[case] = np.load(self.data_folder / f"{case}.seg.npy", mmap_mode="r") \
                if (self.data_folder / f"{case}.seg.npy").is_file() else load_preprocessed_case(self.data_folder, case)[1]
        return self._segs[case]

    def _batch(self, prompts: list[tuple], n: int, rng: np.random.Generator, jitter: bool) -> dict:
        idx = rng.integers(len(prompts), size=n)
        emb, boxes, targets = [], [], []
        for i in idx:
            case, z, label, box = prompts[i]
            emb.append(np.asarray(self.cache.load(case)[z], dtype=np.float32))
            seg = np.asarray(self._seg(case)[0, z])
            if jitter:
                lo, hi = self.prompting["box_jitter_px"]
                from samunet.sam.prompts import jitter_box

                box = jitter_box(box, rng, int(hi), seg.shape)
            boxes.append(self.sam.scale_boxes(torch.as_tensor(np.asarray(box)[None], dtype=torch.float32), seg.shape)[0])
            info = self.cache.info(case)
            targets.append(mask_to_low_res(torch.from_numpy(seg == label)[None], info["scaled_hw"], self.sam.input_size)[0])
        return {"embeddings": torch.from_numpy(np.stack(emb)), "boxes": torch.stack(boxes), "target": torch.stack(targets)}

    def next_train_batch(self) -> dict:
        return self._batch(self.train_prompts, max(1, self.batch_size // self.world_size), self.rng, jitter=True)

    def next_val_batch(self, rng: np.random.Generator) -> dict:
        return self._batch(self.val_prompts or self.train_prompts, self.batch_size, rng, jitter=False)

    def _forward(self, batch: dict) -> torch.Tensor:
        emb = batch["embeddings"].to(self.device)
        sparse, dense = self.sam.encode_prompts(boxes=batch["boxes"].to(self.device))
        logits, _ = self.sam.decode(emb, sparse, dense, None, multimask_output=False)
        return logits

    def train_step(self, batch: dict) -> float:
        self.sam.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(self._forward(batch), batch["target"].to(self.device))
        loss.backward()
        dist_utils.average_gradients(self.sam.trainable_decoder_parameters())
        self.optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def validation_step(self, batch: dict):
        self.sam.eval()
        logits = self._forward(batch)
        target = batch["target"].to(self.device)
        loss = float(self.loss(logits, target))
        pred = logits > 0
        t = target > 0.5
        tp, fp, fn = int((pred & t).sum()), int((pred & ~t).sum()), int((~pred & t).sum())
        return loss, np.array([tp]), np.array([fp]), np.array([fn])

    # ---- inference ----------------------------------------------------------------
    @torch.no_grad()
    def predict_preprocessed(self, data: np.ndarray, case: str | None = None, reference_seg=None,
                             prompt: str = "auto", user_boxes: dict | None = None, prompts_out: list | None = None,
                             **context) -> np.ndarray:
        """``(C, Z, Y, X)`` -> ``(K, Z, Y, X)``: channel 0 holds θ2, channel k SAM's probability
        for label k, so the argmax is the label above θ2 (background otherwise).

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
        probs = self.stage1_fg_probs(data) if prompt in ("auto", "unfiltered_box") and user_boxes is None else None
        rng = np.random.default_rng(self.seed if hasattr(self, "seed") else 0) \
            if self.prompting.get("test_time_box_jitter") else None
        cache = getattr(self, "cache", None)
        use_cache = case is not None and cache is not None and cache.is_valid(case)
        for z in range(z_count):
            ref = None if reference_seg is None else np.asarray(reference_seg[0, z])
            if user_boxes is not None:  # the user's boxes are this case's prompts
                boxes = {int(l): np.asarray(b) for l, b in user_boxes.get(z, {}).items() if int(l) in fg}
            else:
                boxes = slice_boxes(prompt, None if probs is None else probs[:, z], ref, fg, self.prompting, rng,
                                    slice_shape=(y, x))
            if not boxes:
                continue  # no prompt -> empty slice, never a crash
            if prompts_out is not None:
                prompts_out.extend({"z": z, "label": int(l), "box": [int(v) for v in b]} for l, b in boxes.items())
            if use_cache:
                emb = torch.from_numpy(np.asarray(cache.load(case)[z], dtype=np.float32))[None]
                scaled_hw = cache.info(case)["scaled_hw"]
            else:
                # at most one encoder call per slice: every label's box, and every fold model of an
                # ensemble (the LRU), decode from this one embedding
                e, scaled_hw = encode_volume(self.sam, data[:, z:z + 1], lru=prediction_lru())
                emb = torch.from_numpy(e)
            labels = list(boxes)
            b = self.sam.scale_boxes(torch.as_tensor(np.stack([boxes[l] for l in labels]), dtype=torch.float32), (y, x))
            sparse, dense = self.sam.encode_prompts(boxes=b.to(self.device))
            logits, _ = self.sam.decode(emb.to(self.device), sparse, dense, None)
            p = torch.sigmoid(self.sam.postprocess_logits(logits, scaled_hw, (y, x)))[:, 0].cpu().numpy()
            for l, pl in zip(labels, p):
                out[fg.index(l) + 1, z] = pl
        return out


class SAMBoxTrainer_GTBoxes(SAMBoxTrainer):
    """Decoder fine-tuned on jittered reference boxes instead of stage-1 boxes."""

    def make_datasets(self) -> None:
        self.options.setdefault("train_box_source", "gt")
        super().make_datasets()
