"""AutoMedSAM (Huang et al., arXiv 2502.06817; METHODS.md §3): SAM prompted by class names.

A diffusion-based class-prompt encoder (:class:`~samunet.networks.class_prompt_encoder.ClassPromptEncoder`)
turns the frozen image embedding and a class index into SAM's sparse and dense prompt
embeddings, so a multi-organ label map comes from class names alone — no boxes, no points,
no stage 1::

    samunet_train 503 0 -tr ClassPromptTrainer
    samunet_predict -i in/ -o out/ -d 503 -tr ClassPromptTrainer -f 0 [--classes liver spleen | --classes all]

Trained: the class-prompt encoder, SAM's mask decoder and the five loss weights λ. Frozen:
the image encoder (embeddings come from the shared embedding cache, so an epoch costs no
image-encoder work) and the prompt encoder, which supplies the dense positional encoding
and the MSE targets (its embeddings of the jittered reference box of the class).

Training sample = (slice, one class present on it drawn at random, binary reference of that
class), at the decoder's 256² low-resolution frame. No flips: images are not re-encoded
(as in SAMBoxTrainer, the cached embeddings are used as is). A share ``absent_class_fraction``
of the samples are instead (slice, one class absent from it, all-zero target), drawn from every
slice of the training cases: inference prompts every class on every slice, so the encoder
must also learn to say "not here" (issue 15.3). Those samples have no box, so they count in
BCE, Dice (pooled: their predicted foreground enlarges the denominator) and the dense MSE
(whose target does not depend on the box), not in the sparse MSE nor the shape term.

Settings (trainer option, else ``plans["class_prompt"][key]``, else the default):

=====================  ============  ============================================================
``steps``              100           T, forward-diffusion steps (1 = the paper's single step)
``width``              1.0           hidden-width multiplier of the class encoder (1 = paper);
                                     about 8.5 GMAC/sample at 1.0 — 0.25 is ~10× cheaper on CPU
``attention_activation`` ``none``    dense attention activation: none (code) / relu / sigmoid
``final_relu``         False         ReLU at the end of both decoders (code-faithful if True)
``noise_sampling``     closed_form   one draw of the summed diffusion noise, or ``loop``
``train_noise``        True          sample the diffusion noise in training
``eval_noise``         ``zero``      test-time noise: ``zero`` (deterministic) or ``sampled``
                                     (seeded with ``eval_noise_seed``, default the trainer seed)
``box_jitter_px``      5             0..N px per side on the GT box of the MSE targets (S frame)
``unnormalised``       False         raw distance transform in the shape-distance loss
``initial_lr``         5e-4          AdamW, betas (0.9, 0.999), eps 1e-8
``weight_decay``       0.01          not on the λ's
``min_object_pixels``  1             a class counts as present on a slice from this many pixels
                                     (absent: 0 pixels; 1..N-1 pixels: neither, never sampled)
``absent_class_fraction`` 0.25       share of training/validation samples that prompt an absent
                                     class with an empty target (plans without the key: 0)
``batch_size``         plans         overrides ``plans["sam"]["batch_size"]`` (paper: 16)
``num_val_iterations`` plans         validation batches per epoch
=====================  ============  ============================================================

Schedule: ReduceLROnPlateau (factor 0.9, patience 5, cooldown 0) stepped on the epoch's mean
training loss. Per epoch, ``training_log.json`` gets ``loss_weights`` (1/(2λ²) per term),
``lambdas`` and the mean unweighted ``loss_terms``; ``progress.png`` has a third panel with
the weights.

Inference: every slice is encoded once (from the cache when the case is cached), then the
class encoder and decoder run once per requested class (``classes``: label names from
dataset.json, ``["all"]``/None = every foreground label, ``["oracle"]`` = the labels present
in ``reference_seg``); fusion: the argmax of the per-class sigmoids above θ2 = 0.5.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from samunet.networks.class_prompt_encoder import ClassPromptEncoder
from samunet.sam.box_prompting import mask_to_low_res
from samunet.sam.embedding_cache import encode_volume
from samunet.sam.embedding_lru import prediction_lru
from samunet.sam.prompts import mask_box
from samunet.training.losses import confusion_counts, mark_ignored
from samunet.training.progress_logger import ProgressLogger
from samunet.training import distributed as dist_utils
from samunet.experiment_planning import method_defaults
from samunet.training.trainer_base import BaseTrainer
from samunet.training.trainers.sam_common import SAMTrainerMixin
from samunet.training.uncertainty_weighted_loss import TERMS, UncertaintyWeightedLoss, distance_map

logger = logging.getLogger(__name__)

DEFAULTS = method_defaults.CLASS_PROMPT
EVAL_NOISE = ("zero", "sampled")


class ClassPromptNetwork(nn.Module):
    """What is trained and checkpointed: ``class_encoder``, SAM's ``mask_decoder`` (shared with
    the trainer's :class:`SamWrapper`) and the loss with its λ's."""

    def __init__(self, class_encoder: ClassPromptEncoder, mask_decoder: nn.Module, loss: UncertaintyWeightedLoss):
        super().__init__()
        self.class_encoder = class_encoder
        self.mask_decoder = mask_decoder
        self.loss = loss


class ClassPromptProgressLogger(ProgressLogger):
    """The standard two panels plus the effective loss weights 1/(2λ²) per term."""

    def extra_panels(self) -> list:
        return [self._draw_loss_weights]

    def _draw_loss_weights(self, ax, ep) -> None:
        for term in TERMS:
            vals = [(e.get("loss_weights") or {}).get(term) for e in self.epochs]
            if any(v is not None for v in vals):
                ax.plot(ep, vals, marker=".", label=term)
        ax.set_ylabel("loss weight 1/(2λ²)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize="small")


class ClassPromptTrainer(SAMTrainerMixin, BaseTrainer):
    """AutoMedSAM: class index → diffusion class-prompt encoder → SAM mask decoder."""

    plans_section = "sam"
    wrap_in_ddp = False  # used piecewise; gradients are averaged in train_step
    # final validation: "auto" = every foreground class prompted (validation/), "oracle" = only
    # the classes present in the reference (validation_oracle/), the two settings of §3.4 [R]
    validation_prompt_modes = ["auto", "oracle"]
    settings_section = "class_prompt"
    DEFAULTS = DEFAULTS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.progress = ClassPromptProgressLogger()

    # ---- configuration ------------------------------------------------------------
    def network_config(self) -> dict:
        return {"sam": self.sam_name, "sam_checkpoint": self.sam_checkpoint,
                **{k: self.setting(k) for k in ("steps", "width", "attention_activation", "final_relu",
                                                "noise_sampling")}}

    def build_network(self) -> nn.Module:
        self.sam = self.make_sam()  # image encoder on --encoder_backend/--encoder_precision
        encoder = ClassPromptEncoder(
            embed_dim=256, embedding_hw=self.sam.image_embedding_size, steps=int(self.setting("steps")),
            width=float(self.setting("width")), attention_activation=str(self.setting("attention_activation")),
            final_relu=bool(self.setting("final_relu")), noise_sampling=str(self.setting("noise_sampling")))
        loss = UncertaintyWeightedLoss(unnormalised=bool(self.setting("unnormalised")))
        return ClassPromptNetwork(encoder, self.sam.mask_decoder, loss)

    def build_loss(self) -> UncertaintyWeightedLoss:
        return self.network.loss

    def configure_optimizers(self):
        net = self.network
        weights = list(net.class_encoder.parameters()) + [p for p in net.mask_decoder.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(
            [{"params": weights, "weight_decay": float(self.setting("weight_decay"))},
             {"params": [net.loss.lambdas], "weight_decay": 0.0}],
            lr=float(self.setting("initial_lr")),
            betas=(0.9, 0.999), eps=1e-8)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=float(self.setting("plateau_factor")),
            patience=int(self.setting("plateau_patience")), cooldown=0)
        return opt, sched

    def load(self, path, weights_only_network: bool = False) -> None:
        super().load(path, weights_only_network)
        if not isinstance(self.progress, ClassPromptProgressLogger):
            self.progress = ClassPromptProgressLogger(self.progress.state())

    def restore_inference_state(self, checkpoint: dict) -> None:
        self.cache = None

    # ---- data ---------------------------------------------------------------------
    def collect_samples(self, cases: list[str], absent: bool = False) -> list[tuple[str, int, tuple[int, ...]]]:
        """``(case, z, labels present)`` for every slice showing at least one foreground class
        (from ``min_object_pixels`` pixels on); with ``absent``, ``(case, z, labels absent)`` for
        every slice missing at least one (0 pixels of it; smaller objects are neither)."""
        min_px = int(self.setting("min_object_pixels"))
        fg = self.foreground_labels
        out = []
        for case in cases:
            seg = np.asarray(self._seg(case))[0]
            for z in range(seg.shape[0]):
                values, counts = np.unique(seg[z], return_counts=True)
                if absent:
                    on_slice = set(values.tolist())
                    labels = tuple(v for v in fg if v not in on_slice)
                else:
                    labels = tuple(int(v) for v, n in zip(values, counts) if v in fg and n >= min_px)
                if labels:
                    out.append((case, z, labels))
        return out

    def absent_class_fraction(self) -> float:
        """Share of samples prompting an absent class: the option, else the plan's
        ``class_prompt.absent_class_fraction``; plans written before the key: 0, as then."""
        value = self.options.get("absent_class_fraction")
        if value is None:
            value = (self.plans.get(self.settings_section) or {}).get("absent_class_fraction")
        value = float(value or 0.0)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"class_prompt.absent_class_fraction must be in [0, 1), got {value} "
                             "(plans.json or --opt absent_class_fraction=...)")
        return value

    def make_datasets(self) -> None:
        self._segs = {}
        self.cache = self.make_cache()
        needed = self.split["train"] + self.split["val"] + self.split.get("test", [])
        self.cache.build(needed, self.sam, part=self.rank, num_parts=self.world_size)  # each rank its share
        dist_utils.barrier()
        self.train_samples = self.collect_samples(self.split["train"])
        self.val_samples = self.collect_samples(self.split["val"])
        if not self.train_samples:
            raise RuntimeError(f"no labelled slice in the training cases of fold {self.fold}")
        self.train_absent, self.val_absent = [], []
        if self.absent_class_fraction() > 0:
            self.train_absent = self.collect_samples(self.split["train"], absent=True)
            self.val_absent = self.collect_samples(self.split["val"], absent=True)
        logger.info("%d training slices, %d validation slices with foreground; %d / %d with an absent class "
                    "(share %.2f)", len(self.train_samples), len(self.val_samples), len(self.train_absent),
                    len(self.val_absent), self.absent_class_fraction())

    def _box_s_frame(self, mask: np.ndarray, scaled_hw, rng: np.random.Generator | None) -> np.ndarray:
        """Tight box of ``mask`` (slice frame) in the S frame, each side pushed out by 0..N px
        (``box_jitter_px``, LiteMedSAM's bbox_shift) when ``rng`` is given, clipped to the content."""
        box = self.sam.scale_boxes(torch.as_tensor(mask_box(mask)[None], dtype=torch.float32),
                                   mask.shape)[0].cpu().numpy()
        if rng is not None:
            s = rng.integers(0, int(self.setting("box_jitter_px")) + 1, size=4)
            box = box + np.array([-s[0], -s[1], s[2], s[3]], dtype=np.float32)
        h, w = scaled_hw
        return np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1]).astype(np.float32)

    def _batch(self, samples, n: int, rng: np.random.Generator, jitter: bool, absent=(),
               absent_fraction: float = 0.0) -> dict:
        """``n`` samples from ``samples`` ``(case, z, labels present)``; each is replaced with
        probability ``absent_fraction`` by one from ``absent`` ``(case, z, labels absent)``, whose
        target is empty (``present`` False, placeholder box). With no share the random draws are
        those of the present-only sampler, so runs without it are reproduced exactly."""
        idx = rng.integers(len(samples), size=n)
        use_absent = (rng.random(n) < absent_fraction) if (absent and absent_fraction > 0) else np.zeros(n, bool)
        emb, classes, boxes, targets, present_flags = [], [], [], [], []
        for i, is_absent in zip(idx, use_absent):
            case, z, labels = absent[rng.integers(len(absent))] if is_absent else samples[i]
            label = int(labels[rng.integers(len(labels))])
            seg = np.asarray(self._seg(case)[0, z])
            mask = seg == label
            scaled_hw = self.cache.info(case)["scaled_hw"]
            emb.append(np.asarray(self.cache.load(case)[z], dtype=np.float32))
            classes.append(label)
            present_flags.append(not is_absent)
            boxes.append(np.zeros(4, np.float32) if is_absent else
                         self._box_s_frame(mask, scaled_hw, rng if jitter else None))
            low = mask_to_low_res(torch.from_numpy(mask)[None], scaled_hw, self.sam.input_size)[0]
            ignored = self.ignored_pixels(seg)
            if ignored is not None:
                low = mark_ignored(low, mask_to_low_res(torch.from_numpy(ignored)[None], scaled_hw,
                                                        self.sam.input_size)[0])
            targets.append(low)
        target = torch.stack(targets)
        dist = torch.from_numpy(distance_map(target.numpy() > 0.5, normalise=not bool(self.setting("unnormalised"))))
        return {"embeddings": torch.from_numpy(np.stack(emb)), "classes": torch.tensor(classes, dtype=torch.float32),
                "boxes": torch.from_numpy(np.stack(boxes)), "target": target, "dist": dist,
                "present": torch.tensor(present_flags)}

    def next_train_batch(self) -> dict:
        return self._batch(self.train_samples, max(1, self.batch_size // self.world_size), self.rng, jitter=True,
                           absent=self.train_absent, absent_fraction=self.absent_class_fraction())

    def next_val_batch(self, rng: np.random.Generator) -> dict:
        # absent prompts here too, so the pseudo-Dice (and the best checkpoint) sees false positives
        samples, absent = (self.val_samples, self.val_absent) if self.val_samples else (self.train_samples,
                                                                                       self.train_absent)
        return self._batch(samples, self.batch_size, rng, jitter=False, absent=absent,
                           absent_fraction=self.absent_class_fraction())

    # ---- forward / steps ----------------------------------------------------------
    def _eval_generator(self) -> torch.Generator | None:
        mode = str(self.setting("eval_noise"))
        if mode not in EVAL_NOISE:
            raise ValueError(f"eval_noise must be one of {EVAL_NOISE}, got {mode!r}")
        if mode == "zero":
            return None
        seed = self.setting("eval_noise_seed")
        g = torch.Generator(device=self.device)
        g.manual_seed(int(self.seed if seed is None else seed))
        return g

    def _prompts(self, emb: torch.Tensor, classes: torch.Tensor, train: bool, generator=None):
        """Class-prompt encoder; in eval the noise follows ``eval_noise`` (zero or seeded)."""
        enc = self.network.class_encoder
        if train:
            return enc(emb, classes, noise=bool(self.setting("train_noise")))
        return enc(emb, classes, noise=generator is not None, generator=generator)

    def _forward(self, batch: dict, train: bool):
        emb = batch["embeddings"].to(self.device)
        sparse, dense = self._prompts(emb, batch["classes"].to(self.device), train,
                                      None if train else self._eval_generator())
        logits, _ = self.sam.decode(emb, sparse, dense, None, multimask_output=False)
        with torch.no_grad():
            sparse_t, dense_t = self.sam.encode_prompts(boxes=batch["boxes"].to(self.device))
        return sparse, dense, sparse_t, dense_t, logits

    def _loss(self, batch: dict, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        sparse, dense, sparse_t, dense_t, logits = self._forward(batch, train)
        present = batch.get("present")
        loss = self.loss(sparse, dense, sparse_t, dense_t, logits, batch["target"].to(self.device),
                         batch["dist"].to(self.device), None if present is None else present.to(self.device))
        return loss, logits

    def train_step(self, batch: dict) -> float:
        self.network.train()
        self.sam.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss, _ = self._loss(batch, train=True)
        loss.backward()
        dist_utils.average_gradients([p for g in self.optimizer.param_groups for p in g["params"]])
        clip = self.setting("grad_clip")
        if clip:
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], float(clip))
        self.optimizer.step()
        self._epoch_terms.append(dict(self.loss.last_terms))
        return float(loss.detach())

    @torch.no_grad()
    def validation_step(self, batch: dict):
        """Loss and TP/FP/FN per foreground label (each sample counts for its prompted class)."""
        self.network.eval()
        self.sam.eval()
        loss, logits = self._loss(batch, train=False)
        pred = (torch.sigmoid(logits) > self.theta2).cpu() & (batch["target"] >= 0)  # IGNORE_TARGET: not counted
        t = batch["target"] > 0.5
        fg = self.foreground_labels
        tp, fp, fn = np.zeros(len(fg), np.int64), np.zeros(len(fg), np.int64), np.zeros(len(fg), np.int64)
        for i, c in enumerate(batch["classes"].tolist()):
            k = fg.index(int(c))
            a, b, c = confusion_counts(pred[i], t[i])
            tp[k], fp[k], fn[k] = tp[k] + a, fp[k] + b, fn[k] + c
        return float(loss), tp, fp, fn

    def run_epoch(self) -> dict:
        """BaseTrainer's epoch, with ReduceLROnPlateau stepped on the mean training loss (the base
        class steps schedulers without a metric) and the loss weights added to the record."""
        self._epoch_terms = []
        scheduler, self.scheduler = self.scheduler, None
        try:
            record = super().run_epoch()
        finally:
            self.scheduler = scheduler
        if self.scheduler is not None:
            self.scheduler.step(record["train_loss"])
            record["lr"] = self.optimizer.param_groups[0]["lr"]
        record["loss_weights"] = self.loss.term_weights()
        record["lambdas"] = {k: float(v) for k, v in zip(TERMS, self.loss.lambdas.detach().cpu())}
        if self._epoch_terms:
            record["loss_terms"] = {k: float(np.mean([d[k] for d in self._epoch_terms])) for k in TERMS}
        logger.info("loss weights 1/(2λ²): %s", {k: round(v, 4) for k, v in record["loss_weights"].items()})
        return record

    # ---- inference ----------------------------------------------------------------
    def resolve_classes(self, classes, reference_seg=None) -> list[int]:
        """Label values to prompt: names from dataset.json's ``labels`` (or label values),
        ``None``/``["all"]`` = every foreground label, ``["oracle"]`` = labels in ``reference_seg``."""
        fg = self.foreground_labels
        if classes is None or (isinstance(classes, str) and classes == "all"):
            return list(fg)
        if isinstance(classes, str):
            classes = [classes]
        classes = list(classes)
        if not classes or [str(c).lower() for c in classes] == ["all"]:
            return list(fg)
        if [str(c).lower() for c in classes] == ["oracle"]:
            if reference_seg is None:
                raise ValueError("classes 'oracle' needs the reference segmentation")
            present = set(np.unique(np.asarray(reference_seg)).tolist())
            return [v for v in fg if v in present]
        names = {}
        for name, value in self.dataset_json["labels"].items():
            if isinstance(value, (int, float)) and int(value) in fg:
                names[str(name)] = int(value)
        lower = {n.lower(): v for n, v in names.items()}
        out = []
        for c in classes:
            key = str(c)
            if key in names:
                v = names[key]
            elif key.lower() in lower:
                v = lower[key.lower()]
            elif key.lstrip("-").isdigit() and int(key) in fg:
                v = int(key)
            else:
                raise ValueError(f"unknown class {c!r}; foreground labels of this dataset: "
                                 f"{', '.join(f'{n} ({v})' for n, v in names.items())}, or 'all'")
            if v not in out:
                out.append(v)
        return out

    @torch.no_grad()
    def predict_preprocessed(self, data: np.ndarray, case: str | None = None, reference_seg=None,
                             classes=None, prompt: str | None = None, **context) -> np.ndarray:
        """``(C, Z, Y, X)`` → ``(K, Z, Y, X)`` class probabilities, background first, summing to 1
        per voxel, from the sigmoid of each label's prompt (:meth:`class_probabilities`; exactly 0
        for classes not requested), so the argmax is the label whose sigmoid is highest among
        those above θ2 (background otherwise).

        ``prompt="oracle"`` (final validation) prompts only the labels present in ``reference_seg``;
        ``"auto"``/None use ``classes``."""
        if prompt == "oracle":
            classes = ["oracle"]
        elif prompt not in (None, "auto"):
            raise ValueError(f"ClassPromptTrainer has no prompt mode {prompt!r}; use --classes")
        labels = self.resolve_classes(classes, reference_seg)
        self.network.eval()
        self.sam.eval()
        _, z_count, y, x = data.shape
        fg = self.foreground_labels
        out = self.empty_label_scores(data.shape)
        if not labels:
            return self.class_probabilities(out)
        cache = getattr(self, "cache", None)
        if case is not None and cache is not None and cache.is_valid(case):
            emb_all, scaled_hw = cache.load(case), cache.info(case)["scaled_hw"]
        else:
            emb_all, scaled_hw = encode_volume(self.sam, data, lru=prediction_lru())  # shared across folds
        generator = self._eval_generator()
        cls = torch.tensor(labels, dtype=torch.float32, device=self.device)
        for z in range(z_count):
            emb = torch.from_numpy(np.asarray(emb_all[z], dtype=np.float32))[None].to(self.device)
            # one class-encoder + decoder pass per requested class, on the one embedding
            sparse, dense = self._prompts(emb.expand(len(labels), -1, -1, -1), cls, False, generator)
            logits, _ = self.sam.decode(emb, sparse, dense, None, multimask_output=False)
            p = torch.sigmoid(self.sam.postprocess_logits(logits, scaled_hw, (y, x)))[:, 0].cpu().numpy()
            for label, pl in zip(labels, p):
                out[fg.index(label) + 1, z] = pl
        return self.class_probabilities(out)


class ClassPromptTrainer_Width025(ClassPromptTrainer):
    """The class-prompt encoder at a quarter of the paper widths (16/32/64): ~10× cheaper on CPU."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("width", 0.25)
        super().__init__(*args, **kwargs)
