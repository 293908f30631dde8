"""ProMISe (Wang et al., arXiv 2403.04164): SAM prompts itself with learned points (APM) and
shifts its mask tokens (PaE + IPS); every SAM weight stays frozen.

Per slice: cached frozen-encoder outputs (final embedding + intermediate features, see
:mod:`samunet.sam.feature_cache`) → APM → N points per foreground class with fixed labels →
frozen prompt encoder → PaE offsets on the 4 mask tokens → frozen mask decoder in multimask
mode → output ``mask_token`` (default 0, the first multimask output, i.e. mask token #1 as in
the reference) → 256² logits. No stage 1, no boxes.

Settings (trainer option, e.g. ``samunet_train ... -tr ProMISeTrainer --points 16`` or a
keyword argument of ``samunet.training.fold_training.fit_fold``; else ``plans["promise"][key]`` if the plan
has that section; else the default):

=========================  =======  ==============================================================
``points``                 16       3, 5 or 16 learned points (1+2, 2+3, 8+8 positive+negative)
``mask_token``             0        which of the 3 multimask outputs is used (0 = mask token #1,
                                    the reference's choice)
``legacy_double_sigmoid``  False    reproduce the reference's defect (loss on
                                    ``sigmoid(logits)`` treated as logits); False: BCE + Dice on
                                    the logits
``lr``                     1e-5     Adam, constant (METHODS §2.3). ``plans["sam"]["initial_lr"]``
                                    (1e-4) is SAMMed's decoder fine-tuning rate and is
                                    deliberately not used: ProMISe trains freshly initialised
                                    modules through a frozen SAM at 1e-5
``apm_depth``              18       ResNet trunk depth 10/18/34 (reference 34; lighter for CPU)
``apm_width``              256      channels of the three reducing 3×3 convs (reference 256;
                                    they dominate the APM's CPU cost, 128 halves it)
``fg_slice_fraction``      0.67     share of training slices drawn among slices with foreground;
                                    the rest uniformly over all slices (incl. empty ones, so the
                                    model learns to leave empty slices empty)
``cache_features``         True     cache the APM features (False: re-encode every sampled
                                    slice, ~5 s per slice on a CPU)
``batch_size``             plans    overrides ``plans["sam"]["batch_size"]`` (8 = the reference)
``num_val_iterations``     plans    validation batches per epoch
=========================  =======  ==============================================================

Epochs, iterations per epoch and batch size come from ``plans["sam"]`` (batch 8 = the
reference). Targets are the reference masks at the decoder's 256² low-resolution frame
(:func:`~samunet.sam.box_prompting.mask_to_low_res`). No data augmentation: inputs are
cached encoder outputs.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from samunet.experiment_planning.plans_io import data_identifier
from samunet.experiment_planning.sam_input import sam_input_cache_key
from samunet.networks.promise import AutoPromptingModule, PatternEmbedding, apm_feature_spec, encode_with_features
from samunet.preprocessing.preprocessor import load_preprocessed_case
from samunet.experiment_planning import method_defaults
from samunet.sam.box_prompting import mask_to_low_res
from samunet.sam.embedding_cache import EmbeddingCache
from samunet.sam.feature_cache import FeatureCache
from samunet.sam.registry import weights_identity
from samunet.training import distributed as dist_utils
from samunet.training.losses import ProMISeLoss, confusion_counts, mark_ignored  # noqa: F401  (ProMISeLoss: importable from here, as before)
from samunet.training.trainer_base import BaseTrainer
from samunet.training.trainers.sam_common import SAMTrainerMixin

logger = logging.getLogger(__name__)

DEFAULTS = method_defaults.PROMISE


class ProMISeTrainer(SAMTrainerMixin, BaseTrainer):
    """APM + PaE/IPS trained through a fully frozen SAM (LiteMedSAM by default)."""

    plans_section = "sam"
    wrap_in_ddp = False  # used piecewise; gradients are averaged in train_step
    settings_section = "promise"
    DEFAULTS = DEFAULTS

    # ---- configuration ------------------------------------------------------------


    @property
    def num_points(self) -> int:
        return int(self.setting("points"))

    @property
    def mask_token(self) -> int:
        m = int(self.setting("mask_token"))
        if m not in (0, 1, 2):
            raise ValueError(f"mask_token must be 0, 1 or 2 (one of the 3 multimask outputs), got {m}")
        return m

    @property
    def learning_rate(self) -> float:
        return float(self.setting("lr"))

    def network_config(self) -> dict:
        return {"sam": self.sam_name, "sam_checkpoint": self.sam_checkpoint, "points": self.num_points,
                "num_classes": len(self.foreground_labels), "apm_depth": int(self.setting("apm_depth")),
                "apm_width": int(self.setting("apm_width")), "mask_token": self.mask_token,
                "taps": getattr(self, "taps", None)}

    # ---- network ------------------------------------------------------------------
    def build_network(self) -> nn.Module:
        """SAM (every weight frozen, kept in eval mode) and ``ModuleDict(apm=..., pae=...)``,
        the only trained (and checkpointed) part."""
        self.sam = self.make_sam()  # image encoder on --encoder_backend/--encoder_precision
        for p in self.sam.parameters():
            p.requires_grad_(False)
        self.sam.eval()
        spec = apm_feature_spec(self.sam)
        self.taps = spec["names"]
        k = len(self.foreground_labels)
        apm = AutoPromptingModule(sum(spec["channels"]), self.num_points, k, self.sam.input_size,
                                  width=int(self.setting("apm_width")), depth=int(self.setting("apm_depth")))
        pae = PatternEmbedding(256, 1024, self.sam.mask_decoder.num_mask_tokens, k)
        return nn.ModuleDict({"apm": apm, "pae": pae})

    def build_loss(self):
        return ProMISeLoss(bool(self.setting("legacy_double_sigmoid")))

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.network.parameters(), lr=self.learning_rate)
        return opt, None  # constant learning rate, as in the reference

    def extra_checkpoint_state(self) -> dict:
        return {"sam_weights_identity": weights_identity(self.sam_name, self.sam_checkpoint)}

    def restore_inference_state(self, checkpoint: dict) -> None:
        self.cache = self.feature_cache = None
        saved = checkpoint.get("sam_weights_identity")
        if saved:
            try:
                now = weights_identity(self.sam_name, self.sam_checkpoint)
            except Exception:  # a missing weights file fails in build_network with a clear message
                return
            if now != saved:
                logger.warning("the SAM weights differ from those %s was trained with (%s... vs %s...)",
                               type(self).__name__, saved[:12], now[:12])

    # ---- the forward pass ---------------------------------------------------------
    def forward_heads(self, embeddings: torch.Tensor, features: torch.Tensor,
                      mask_token_offsets: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``embeddings (B, 256, 64, 64)``, ``features (B, C_apm, 64, 64)`` →
        ``logits (B, K, 256, 256)`` (one prompt per foreground class) and ``points (B, K, N, 2)``
        in the S frame."""
        apm, pae = self.network["apm"], self.network["pae"]
        b, k = embeddings.shape[0], apm.num_classes
        points = apm(features)
        offsets = pae(embeddings) if mask_token_offsets else None
        labels = apm.point_labels(b * k)
        sparse, dense = self.sam.encode_prompts(points=points.reshape(b * k, apm.num_points, 2), point_labels=labels)
        index = torch.arange(b, device=embeddings.device).repeat_interleave(k)
        logits, _ = self.sam.decode(embeddings, sparse, dense, index, multimask_output=True,
                                    mask_token_offsets=None if offsets is None else offsets.reshape(b * k, *offsets.shape[2:]))
        logits = logits[:, self.mask_token]
        return logits.view(b, k, *logits.shape[-2:]), points

    # ---- caches and slices --------------------------------------------------------
    def make_caches(self) -> tuple[EmbeddingCache, FeatureCache]:
        cache = self.make_cache()
        dtype = self.plans["sam"].get("cache_dtype", "float16")
        return cache, FeatureCache(self.preprocessed_folder, data_identifier(self.plans), self.sam_name,
                                   weights_identity(self.sam_name, self.sam_checkpoint), self.sam.input_size, dtype,
                                   taps=self.taps, embedding_cache=cache, sam_input=sam_input_cache_key(self.plans))

    def _slice_index(self, cases: list[str]) -> dict:
        """All ``(case, z)`` of ``cases`` and those whose reference has foreground."""
        all_slices, fg = [], []
        for case in cases:
            seg = np.asarray(self._seg(case))
            for z in range(seg.shape[1]):
                all_slices.append((case, z))
                if np.isin(seg[0, z], self.foreground_labels).any():
                    fg.append((case, z))
        return {"all": all_slices, "fg": fg}

    def make_datasets(self) -> None:
        self._segs = {}
        self.use_feature_cache = bool(self.setting("cache_features"))
        self.cache, self.feature_cache = self.make_caches()
        needed = self.split["train"] + self.split["val"] + self.split.get("test", [])
        if self.use_feature_cache:
            # also fills the embedding cache, one encoder pass; under torchrun each rank encodes its share
            self.feature_cache.build(needed, self.sam, part=self.rank, num_parts=self.world_size)
            dist_utils.barrier()
        else:
            self.feature_cache = None
        self.cache.build(needed, self.sam, part=self.rank, num_parts=self.world_size)
        dist_utils.barrier()
        self.train_slices = self._slice_index(self.split["train"])
        self.val_slices = self._slice_index(self.split["val"]) if self.split["val"] else self.train_slices
        logger.info("%d training slices (%d with foreground), %d validation slices", len(self.train_slices["all"]),
                    len(self.train_slices["fg"]), len(self.val_slices["all"]))

    def _inputs(self, case: str, zs: list[int]) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Embeddings ``(n, 256, 64, 64)``, APM features ``(n, C, 64, 64)`` (float32) and the
        scaled slice size for slices ``zs`` of a cached case (features recomputed when they
        are not cached)."""
        emb = np.asarray(self.cache.load(case)[zs], dtype=np.float32)
        scaled_hw = tuple(self.cache.info(case)["scaled_hw"])
        if self.feature_cache is not None:
            feats = torch.from_numpy(np.asarray(self.feature_cache.load(case)[zs], dtype=np.float32))
        else:
            data = load_preprocessed_case(self.data_folder, case)[0][:, zs]
            images, _ = self.sam.prepare_images(torch.from_numpy(np.ascontiguousarray(data.transpose(1, 0, 2, 3))))
            feats = encode_with_features(self.sam, images)[1].float().cpu()
        return torch.from_numpy(emb), feats, scaled_hw

    def _batch(self, slices: dict, n: int, rng: np.random.Generator) -> dict:
        frac = float(self.setting("fg_slice_fraction"))
        emb, feats, targets = [], [], []
        for _ in range(n):
            pool = slices["fg"] if slices["fg"] and rng.random() < frac else slices["all"]
            case, z = pool[int(rng.integers(len(pool)))]
            e, f, scaled_hw = self._inputs(case, [z])
            emb.append(e[0])
            feats.append(f[0])
            seg = torch.from_numpy(np.asarray(self._seg(case)[0, z]))
            masks = torch.stack([seg == v for v in self.foreground_labels])
            low = mask_to_low_res(masks, scaled_hw, self.sam.input_size)[:, 0]
            ignored = self.ignored_pixels(seg)
            if ignored is not None:  # the same unannotated pixels for every class
                low = mark_ignored(low, mask_to_low_res(ignored[None], scaled_hw, self.sam.input_size)[0].expand_as(low))
            targets.append(low)
        return {"embeddings": torch.stack(emb), "features": torch.stack(feats), "target": torch.stack(targets)}

    def next_train_batch(self) -> dict:
        return self._batch(self.train_slices, max(1, self.batch_size // self.world_size), self.rng)

    def next_val_batch(self, rng: np.random.Generator) -> dict:
        return self._batch(self.val_slices, self.batch_size, rng)

    # ---- steps --------------------------------------------------------------------
    def _forward_batch(self, batch: dict) -> torch.Tensor:
        logits, _ = self.forward_heads(batch["embeddings"].to(self.device), batch["features"].to(self.device))
        return logits

    def train_step(self, batch: dict) -> float:
        self.network.train()
        self.sam.eval()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(self._forward_batch(batch), batch["target"].to(self.device))
        loss.backward()
        dist_utils.average_gradients([p for g in self.optimizer.param_groups for p in g["params"]])
        self.optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def validation_step(self, batch: dict):
        """Loss and per-class TP/FP/FN at the 256² low-resolution frame, threshold θ2."""
        self.network.eval()
        self.sam.eval()
        logits = self._forward_batch(batch)
        target = batch["target"].to(self.device)
        loss = float(self.loss(logits, target))
        pred = (torch.sigmoid(logits) > self.theta2) & (target >= 0)  # IGNORE_TARGET: neither right nor wrong
        t = target > 0.5
        tp, fp, fn = confusion_counts(pred, t, (0, 2, 3))
        return loss, tp, fp, fn

    # ---- inference ----------------------------------------------------------------
    @torch.no_grad()
    def predict_preprocessed(self, data: np.ndarray, case: str | None = None, reference_seg=None,
                             prompts_out: list | None = None, prompt: str | None = None,
                             batch_slices: int | None = None,
                             **context) -> np.ndarray:
        """``(C, Z, Y, X)`` → ``(K, Z, Y, X)`` class probabilities, background first, summing to 1
        per voxel, from each label's sigmoid (:meth:`class_probabilities`), so the argmax is the
        label above θ2 (background otherwise).

        ``prompts_out`` (a list), when given, receives the learned points of every slice and
        class in the slice pixel frame: ``{"z", "label", "points": [[x, y], ...],
        "point_labels": [1, 0, ...]}`` (1 positive, 0 negative; see
        :mod:`samunet.inference.prompt_record`). Points may fall into SAM's zero padding, i.e.
        outside the slice, for non-square slices.
        """
        if prompt not in (None, "auto"):
            raise ValueError(f"{type(self).__name__} prompts itself; prompt mode {prompt!r} is not supported")
        self.network.eval()
        self.sam.eval()
        _, z_count, y, x = data.shape
        fg = self.foreground_labels
        out = self.empty_label_scores(data.shape)
        cache, fcache = getattr(self, "cache", None), getattr(self, "feature_cache", None)
        use_cache = (case is not None and cache is not None and fcache is not None
                     and cache.is_valid(case) and fcache.is_valid(case))
        labels = self.network["apm"].labels.tolist()
        scale = self.sam.frame_scale((y, x))
        batch_slices = batch_slices or self.sam.encoder_batch_size
        for start in range(0, z_count, batch_slices):
            zs = list(range(start, min(z_count, start + batch_slices)))
            if use_cache:
                emb, feats, scaled_hw = self._inputs(case, zs)
            else:
                sl = torch.from_numpy(np.ascontiguousarray(data[:, zs].transpose(1, 0, 2, 3)))
                images, scaled_hw = self.sam.prepare_images(sl.float())
                emb, feats = encode_with_features(self.sam, images)
            logits, points = self.forward_heads(emb.to(self.device), feats.to(self.device))
            probs = torch.sigmoid(self.sam.postprocess_logits(logits, scaled_hw, (y, x))).cpu().numpy()
            out[1:, zs] = probs.transpose(1, 0, 2, 3)
            if prompts_out is not None:
                pts = (points / scale).cpu().numpy()
                for i, z in enumerate(zs):
                    for ci, cv in enumerate(fg):
                        prompts_out.append({"z": z, "label": int(cv), "points": pts[i, ci].tolist(),
                                            "point_labels": [int(v) for v in labels]})
        return self.class_probabilities(out)
