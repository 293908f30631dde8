"""What every SAM-stage trainer shares: which backbone, which weights, per-method settings."""

from __future__ import annotations

import json
import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)


class SAMTrainerMixin:
    """Mix into a :class:`~samunet.training.trainer_base.BaseTrainer` subclass.

    ``settings_section`` names an optional plans.json section with the method's own
    settings; :meth:`setting` looks in the trainer options first, then there, then in
    the class's ``DEFAULTS``.
    """

    settings_section: str | None = None
    DEFAULTS: dict = {}
    OPTIONS = frozenset({"sam", "sam_checkpoint", "encoder_backend", "encoder_precision"})
    # box prompts fill an outer label's box (:meth:`label_depths`); learned prompts learn the label itself
    box_prompted = False

    @property
    def sam_name(self) -> str:
        return self.options.get("sam") or self.plans["sam"]["model"]

    @property
    def sam_checkpoint(self):
        return self.options.get("sam_checkpoint")

    @property
    def encoder_settings(self) -> tuple[str, str]:
        """``(backend, precision)`` of the frozen image encoder: trainer option
        (``--encoder_backend``/``--encoder_precision``), else ``plans["sam"]``, else auto/fp32."""
        plan = self.plans.get("sam") or {}
        backend = self.options.get("encoder_backend") or plan.get("encoder_backend") or "auto"
        precision = self.options.get("encoder_precision") or plan.get("encoder_precision") or "fp32"
        if torch.device(self.device).type != "cpu" and backend in ("onnxruntime", "openvino"):
            logger.warning("encoder backend %s runs on the CPU only; using PyTorch on %s", backend, self.device)
            backend = "torch"
        return backend, precision

    def make_sam(self):
        """The SAM backbone on the trainer's device, its image encoder on the configured backend and
        fed the plan's ``sam.input_channels`` (a warning names channels SAM does not see)."""
        from samunet.experiment_planning.plans_io import plans_file_name
        from samunet.experiment_planning.sam_input import dropped_channels_warning
        from samunet.sam.encoder_backends import EncoderBackendError
        from samunet.sam.registry import build_sam

        sam = build_sam(self.sam_name, self.sam_checkpoint, self.device)
        folder = getattr(self, "preprocessed_folder", None)  # None: a trainer built from a checkpoint alone
        where = (str(folder / plans_file_name(getattr(self, "plans_name", "samunetPlans"))) if folder is not None
                 else "the plans stored in the checkpoint")
        sam.configure_from_plan(self.plans, where)
        if (dropped := dropped_channels_warning(self.plans)) is not None:
            logger.warning("%s: %s", type(self).__name__, dropped)
        try:
            return sam.configure_encoder(*self.encoder_settings)
        except EncoderBackendError as exc:
            if getattr(self, "output_folder", None) is not None:  # training: the user asked for it here
                raise
            # a checkpoint loaded for prediction on a machine that lacks what it was trained with
            logger.warning("%s; predicting with --encoder_backend auto --encoder_precision fp32", exc)
            return sam.configure_encoder("auto", "fp32")

    def slice_embedding(self, data: np.ndarray, z: int, case: str | None = None) -> tuple[torch.Tensor, tuple]:
        """``(1, 256, 64, 64)`` embedding of slice ``z`` and its scaled size: from the cache when
        ``case`` is given (and cached), else one encoder call (shared through the prediction LRU,
        so every label's box and every fold model of an ensemble decode from one embedding)."""
        from samunet.sam.embedding_cache import encode_volume
        from samunet.sam.embedding_lru import prediction_lru

        cache = getattr(self, "cache", None)
        if case is not None and cache is not None:
            return (torch.from_numpy(np.asarray(cache.load(case)[z], dtype=np.float32))[None],
                    tuple(cache.info(case)["scaled_hw"]))
        e, scaled_hw = encode_volume(self.sam, data[:, z:z + 1], lru=prediction_lru())
        return torch.from_numpy(e), scaled_hw

    def make_cache(self, variant: str = "", transform=None):
        """The fold's embedding cache (``variant``/``transform``: an appearance-view cache beside it)."""
        from samunet.experiment_planning.plans_io import data_identifier
        from samunet.experiment_planning.sam_input import sam_input_cache_key
        from samunet.sam.embedding_cache import EmbeddingCache
        from samunet.sam.registry import weights_identity

        return EmbeddingCache(self.preprocessed_folder, data_identifier(self.plans), self.sam_name,
                              weights_identity(self.sam_name, self.sam_checkpoint), self.sam.input_size,
                              self.plans["sam"].get("cache_dtype", "float16"), precision=self.sam.encoder_precision,
                              variant=variant, transform=transform, sam_input=sam_input_cache_key(self.plans))

    def _seg(self, case: str) -> np.ndarray:
        """``(1, Z, Y, X)`` preprocessed labels of a case (memory-mapped where possible, read once)."""
        from samunet.preprocessing.preprocessor import load_preprocessed_case

        segs = self.__dict__.setdefault("_segs", {})
        if case not in segs:
            f = self.data_folder / f"{case}.seg.npy"
            segs[case] = np.load(f, mmap_mode="r") if f.is_file() else load_preprocessed_case(self.data_folder, case)[1]
        return segs[case]

    def setting(self, key: str):
        if self.options.get(key) is not None:
            return self.options[key]
        section = self.plans.get(self.settings_section) or {} if self.settings_section else {}
        if section.get(key) is not None:
            return section[key]
        return self.DEFAULTS[key]

    @property
    def theta2(self) -> float:
        return float((self.plans.get("prompting") or {}).get("theta2", 0.5))

    def empty_label_scores(self, data_shape) -> np.ndarray:
        """``(K, Z, Y, X)`` zeros for ``(C, Z, Y, X)`` data: channel ``k >= 1`` receives SAM's sigmoid
        probability of label ``k`` (0: not prompted), channel 0 is filled by :meth:`class_probabilities`."""
        _, z, y, x = data_shape
        return np.zeros((len(self.foreground_labels) + 1, z, y, x), dtype=np.float32)

    def class_probabilities(self, scores: np.ndarray, softmax_labels: dict | None = None) -> np.ndarray:
        """In place: ``scores`` from :meth:`empty_label_scores`, filled with per-label sigmoids, become
        class probabilities ``(K, Z, Y, X)`` (background first, summing to 1 per voxel) whose argmax
        is the label above θ2 with the highest probability (background otherwise); see
        :mod:`samunet.training.class_probabilities`. ``softmax_labels`` ``{channel k: (K, Z, Y, X)
        softmax probabilities}`` (a stage-1 network's) take label ``k`` from those instead (where stage 1's
        argmax is ``k``); every label from one stage 1: exactly its probabilities."""
        from samunet.training.class_probabilities import (log_odds_to_probabilities_, prefer_inner_labels_,
                                                          sigmoid_log_odds, softmax_label_odds)

        softmax_labels = softmax_labels or {}
        if set(softmax_labels) == set(range(1, scores.shape[0])):  # every label from stage 1: its probabilities
            scores[:] = next(iter(softmax_labels.values()))
            return scores
        sigmoid_log_odds(scores[1:], self.theta2, out=scores[1:])
        for k, probs in softmax_labels.items():
            scores[k] = softmax_label_odds(probs, k)
        channel = {label: i + 1 for i, label in enumerate(self.foreground_labels)}
        prefer_inner_labels_(scores, {channel[l]: d for l, d in self.label_depths().items() if l in channel},
                             frozenset(softmax_labels))
        return log_odds_to_probabilities_(scores)

    def label_depths(self) -> dict[int, int]:
        """``{label: nesting depth}`` (plan ``prompting.nesting_precedence``): where SAM's masks of
        several labels overlap, the deepest label wins (the optic cup over the disc rim whose box SAM
        fills). Measured from the fold's training labels on first use
        (:func:`~samunet.sam.box_prompting.nested_label_depths`) and kept in checkpoints
        (:meth:`label_depths_state`); plans without the key and older checkpoints: none (the most
        probable label wins)."""
        if getattr(self, "_label_depths", None) is None:
            self._label_depths = {}
            prompting = self.plans.get("prompting") or {}
            split = getattr(self, "split", None) or {}
            if (self.box_prompted and prompting.get("nesting_precedence") and split.get("train")
                    and len(self.foreground_labels) > 1):
                from samunet.sam.box_prompting import nested_label_depths

                self._label_depths = nested_label_depths(
                    (np.asarray(self._seg(c))[0] for c in split["train"]), self.foreground_labels,
                    float(prompting.get("nesting_fraction", 0.5)))
                if self._label_depths:
                    logger.info("nested labels (depth): %s; where SAM's masks overlap, the deepest label wins",
                                self._label_depths)
        return self._label_depths

    def label_depths_state(self) -> dict:
        """The checkpoint entry of :meth:`label_depths`."""
        return {"label_depths": json.dumps({str(k): v for k, v in self.label_depths().items()})}

    def restore_label_depths(self, checkpoint: dict) -> None:
        self._label_depths = {int(k): int(v) for k, v in json.loads(checkpoint.get("label_depths", "{}")).items()}
