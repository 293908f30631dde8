"""The chain's final decoder and choice. The adapted decoder is first pulled back towards the
pretrained one in weight space (:meth:`ValidationChoiceMixin.interpolate_decoder`); then, on the
fold's (source) validation cases: stage 1 as the mean of
its heads or the fold's head alone, original vs adapted mask decoder (mean Dice with automatic
boxes), then stage 1 vs SAM per label. With ``sam.validation_views`` (default 0), every Dice
behind these choices is the mean over the validation cases as acquired and under that many
appearance views of them (simulated scanner changes, encoded once).
When the original decoder is chosen, the adapted weights stay in ``self.adapted_decoder`` (and
the checkpoint's ``adapted_decoder``), so what adaptation did can still be measured.

Mixed into :class:`~samunet.training.trainers.sam_box_trainer.SAMBoxTrainer`; the result is
``self.final_choice`` (stored in the checkpoint, read by ``predict_preprocessed``).
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager

import numpy as np

from samunet.preprocessing.preprocessor import load_preprocessed_case

logger = logging.getLogger(__name__)

# added to the plan's embedding_head.view_seed: the validation views differ from any training view
VALIDATION_VIEW_SEED = 4242
# share of the time budget that encoding the validation views may take (it comes on top of the training)
VALIDATION_VIEW_SHARE = 0.1


def _dice(pred: np.ndarray, ref: np.ndarray) -> float | None:
    denom = int(pred.sum()) + int(ref.sum())
    return None if denom == 0 else 2.0 * float((pred & ref).sum()) / denom


def _fmt(d: dict) -> str:
    return "{" + ", ".join(f"{k}: {v:.3f}" for k, v in d.items()) + "}"


class ValidationChoiceMixin:
    """For a trainer with ``stage1``, ``sam``, ``pretrained_decoder`` and ``predict_preprocessed``."""

    # the fold's head alone replaces the mean of it and the out-of-fold heads only when it validates
    # this much better: the ensemble generalised better on polyp_dev (unseen centre 0.739 -> 0.766,
    # validation 0.835 -> 0.839), but out-of-fold heads that each saw 3-4 prostate volumes made it worse
    # (real slices of unseen sites 0.369 -> 0.317, validation 0.790 -> 0.776)
    ENSEMBLE_MARGIN = 0.01

    def _validation_dice(self, cases: list[str], use_stage1: bool = False, choice: dict | None = None
                         ) -> dict[int, float]:
        """Mean Dice per foreground label on ``cases`` (preprocessed frame), automatic prompts;
        SAM's masks, stage 1's own with ``use_stage1``, or each label's as ``choice`` (a
        ``final_choice``) takes it. With validation views: the mean of the cases' Dice as acquired
        and under each view (each rendition weighs the same)."""
        per_rendition = []
        for rendition in [None, *getattr(self, "validation_renditions", [])]:
            with self._rendition(rendition):
                per_rendition.append(self._rendition_dice(cases, use_stage1, choice,
                                                          rendition[0] if rendition else None))
        out = {}
        for label in self.foreground_labels:
            values = [d[label] for d in per_rendition if not np.isnan(d[label])]
            out[label] = float(np.mean(values)) if values else float("nan")
        return out

    def _rendition_dice(self, cases, use_stage1, choice, transform) -> dict[int, float]:
        per_label: dict[int, list[float]] = {l: [] for l in self.foreground_labels}
        saved, self.final_choice = getattr(self, "final_choice", None), choice
        try:
            for case in cases:
                data, seg, _ = load_preprocessed_case(self.data_folder, case)
                if transform is not None:  # the view's image (a stage 1 that reads images sees it too)
                    data = transform(data, case)
                if use_stage1:
                    probs = self.stage1.predict_preprocessed(data, case=case)
                else:
                    probs = self.predict_preprocessed(data, case=case, prompt="auto")
                pred = probs.argmax(0)
                ignored = self.ignored_pixels(seg[0])
                if ignored is not None:  # unannotated pixels are neither right nor wrong
                    pred = np.where(ignored, -1, pred)
                for i, label in enumerate(self.foreground_labels, start=1):
                    d = _dice(pred == i, seg[0] == label)
                    if d is not None:
                        per_label[label].append(d)
        finally:
            self.final_choice = saved
        return {l: float(np.mean(v)) if v else float("nan") for l, v in per_label.items()}

    @contextmanager
    def _rendition(self, rendition):
        """SAM and stage 1 read the view's embeddings (``rendition``: ``(transform, cache, flip_cache)``;
        ``None``: the cases as acquired)."""
        if rendition is None:
            yield
            return
        stage1 = getattr(self, "stage1", None)
        saved = (self.cache, getattr(stage1, "cache", None), getattr(stage1, "flip_cache", None))
        self.cache = rendition[1]
        if stage1 is not None and hasattr(stage1, "cache"):
            stage1.cache = rendition[1]
        if stage1 is not None and saved[2] is not None:
            stage1.flip_cache = rendition[2]
        try:
            yield
        finally:
            self.cache = saved[0]
            if stage1 is not None and hasattr(stage1, "cache"):
                stage1.cache = saved[1]
            if stage1 is not None and saved[2] is not None:
                stage1.flip_cache = saved[2]

    def _validation_view_count(self, cases: list[str]) -> int:
        """``sam.validation_views`` (option ``validation_views``), capped by what stage 1's time budget
        decision (its ``appearance_views.json``) says about this device: no more than the training views
        the budget allowed, and only as many as encode within :data:`VALIDATION_VIEW_SHARE` of the
        budget at the encoder speed measured there (each view: every validation slice, twice with
        test-time flipping)."""
        from samunet.training import view_budget

        k = int(self.chain_setting("validation_views", 0))
        stage1 = getattr(self, "stage1", None)
        folder = getattr(stage1, "output_folder", None)
        stored = None if k <= 0 or folder is None else view_budget.read_decision(folder)
        if stored is None:
            return max(k, 0)
        try:
            planned, used = int(stored["planned"]), int(stored["used"])
        except (KeyError, TypeError, ValueError):
            return k
        per_slice, allowance = stored.get("seconds_per_slice"), stored.get("allowance_s")
        fit = min(k, used) if used < planned else k
        if per_slice and allowance is not None:  # decided under a time budget
            budget = float(allowance) / view_budget.VIEW_BUDGET_SHARE
            slices = sum(int(self.cache.info(c)["shape"][0]) for c in cases)
            passes = slices * (2 if getattr(stage1, "flip_cache", None) is not None else 1)
            fit = min(fit, view_budget.views_that_fit([passes] * fit, float(per_slice),
                                                      VALIDATION_VIEW_SHARE * budget))
        if fit < k:
            logger.info("validation views: %d of %d (stage 1 got %d of %d training views under the time budget; "
                        "%.0f%% of the budget for encoding validation views)", fit, k, used, planned,
                        100 * VALIDATION_VIEW_SHARE)
        return fit

    def _validation_view_caches(self, cases: list[str]) -> list[tuple]:
        """``sam.validation_views`` appearance views of the validation ``cases`` (the transforms stage 1's
        training views draw from, another seed), encoded once and cached beside the plain embeddings
        (``valview<i>_s<seed>``; mirrored too when stage 1 flips at test time):
        ``[(transform, cache, flip_cache)]``."""
        from samunet.sam.appearance_views import OPS
        from samunet.training.trainers.embedding_head_trainer import flip_transform, view_cache_tag, view_transform

        k = self._validation_view_count(cases)
        if k <= 0:
            return []
        stage1 = getattr(self, "stage1", None)
        ops = tuple(getattr(stage1, "view_ops", None) or OPS)
        seed = int(self.plans["embedding_head"].get("view_seed", 0)) + VALIDATION_VIEW_SEED
        flip = getattr(stage1, "flip_cache", None) is not None
        logger.info("validation choice under %d appearance view(s) of the %d validation case(s) besides the cases "
                    "as acquired (plan sam.validation_views; encoded once, cached)", k, len(cases))
        out = []
        for v in range(1, k + 1):
            transform = view_transform(v, seed, ops)
            tag = view_cache_tag(f"valview{v}", seed, ops)
            cache = self.make_cache(tag, transform)
            cache.build(cases, self.sam)
            flip_cache = None
            if flip:
                flip_cache = self.make_cache(f"{tag}_flip",
                                             lambda data, case, t=transform: flip_transform(t(data, case), case))
                flip_cache.build(cases, self.sam)
            out.append((transform, cache, flip_cache))
        return out

    def interpolate_decoder(self, alpha: float) -> bool:
        """The adapted decoder becomes ``alpha * trained + (1 - alpha) * pretrained`` weights (a weight-space
        ensemble, WiSE-FT, Wortsman et al. 2022): most of what fine-tuning gained, little of what it
        forgot. ``alpha`` 1: the weights as trained. Returns whether anything changed."""
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"sam.decoder_interpolation must be in [0, 1] (1: the decoder as trained), got {alpha}")
        if alpha == 1.0:
            return False
        trained = self.sam.mask_decoder.state_dict()
        blended = {k: (alpha * v.float() + (1.0 - alpha) * self.pretrained_decoder[k].to(v.device).float()).to(v.dtype)
                   if v.is_floating_point() else v for k, v in trained.items()}
        self.sam.mask_decoder.load_state_dict(blended)
        logger.info("adapted decoder: %.2f x the trained weights + %.2f x LiteMedSAM's/SAM's own (weight-space "
                    "interpolation, plan sam.decoder_interpolation)", alpha, 1.0 - alpha)
        return True

    def choose_on_validation(self) -> dict:
        """Original vs adapted decoder (mean Dice with automatic boxes), then stage 1 vs SAM per
        label, on the fold's validation cases; stored in ``self.final_choice`` and the checkpoint."""
        cases = self.split["val"]
        if not cases:
            self.final_choice = None
            return {}
        self.validation_renditions = self._validation_view_caches(cases)
        try:
            return self._choose(cases)
        finally:
            self.validation_renditions = []

    def _choose(self, cases: list[str]) -> dict:
        ensemble = self._choose_stage1_ensemble(cases)  # {} without extra heads
        adapted = {k: v.detach().clone() for k, v in self.sam.mask_decoder.state_dict().items()}
        d_adapted = self._validation_dice(cases)
        self.sam.mask_decoder.load_state_dict(self.pretrained_decoder)
        d_original = self._validation_dice(cases)
        use_adapted = np.nanmean(list(d_adapted.values())) >= np.nanmean(list(d_original.values()))
        if use_adapted:
            self.sam.mask_decoder.load_state_dict(adapted)
            self.adapted_decoder = None
        else:  # kept in the checkpoint, so the adapted decoder can still be measured (benchmarks)
            self.adapted_decoder = adapted
        d_sam = d_adapted if use_adapted else d_original
        d_stage1 = ensemble.pop("chosen", None) or self._validation_dice(cases, use_stage1=True)
        labels = {str(l): ("stage1" if d_stage1[l] > d_sam[l] else "sam") for l in self.foreground_labels}
        decoder = "adapted" if use_adapted else "original"
        mixture = self._validate_mixture(cases, decoder, labels, d_sam, d_stage1)
        labels = mixture.pop("labels")
        self.final_choice = {
            "decoder": decoder, "labels": labels, "validation_views": len(self.validation_renditions),
            "validation_dice": {"adapted_decoder": d_adapted, "original_decoder": d_original, "stage1": d_stage1,
                                **ensemble, **mixture},
        }
        logger.info("validation choice: %s decoder (auto-box Dice adapted %s, original %s); per label %s "
                    "(stage 1 alone %s)", self.final_choice["decoder"], _fmt(d_adapted), _fmt(d_original), labels,
                    _fmt(d_stage1))
        return self.final_choice

    def _validate_mixture(self, cases: list[str], decoder: str, labels: dict, d_sam: dict, d_stage1: dict) -> dict:
        """Labels chosen one by one were each validated with the others from the same source; composed
        (SAM's labels and stage 1's in one label map, nested labels yielding to the deeper one) they can
        score otherwise. A mixture is validated as composed and kept only if it beats every label from
        SAM and every label from stage 1 (mean Dice over labels); returns ``{"labels": ..}`` plus
        ``{"mixture": Dice per label}`` when one was validated."""
        if len(set(labels.values())) < 2:
            return {"labels": labels}
        d_mix = self._validation_dice(cases, choice={"decoder": decoder, "labels": labels})
        options = [(labels, d_mix), ({l: "sam" for l in labels}, d_sam), ({l: "stage1" for l in labels}, d_stage1)]
        best, d_best = max(options, key=lambda o: np.nanmean(list(o[1].values())))  # first wins ties
        if best is not labels:
            source = "SAM" if "sam" in best.values() else "stage 1"
            logger.info("validation choice: the per-label mixture %s scored %s composed; every label from %s "
                        "validates better (%s)", labels, _fmt(d_mix), source, _fmt(d_best))
        return {"labels": best, "mixture": d_mix}

    def _choose_stage1_ensemble(self, cases: list[str]) -> dict:
        """Keep stage 1's ensemble (its heads' mean) unless the fold's head alone validates better by
        :attr:`ENSEMBLE_MARGIN` (mean Dice over labels); then the extra heads are dropped (and not
        saved). Returns the two Dice ``{"stage1_ensemble": .., "stage1_single": .., "chosen": ..}``
        (empty: no ensemble)."""
        members = list(getattr(getattr(self, "stage1", None), "ensemble_members", None) or [])
        if not members:
            return {}
        d_ensemble = self._validation_dice(cases, use_stage1=True)
        self.stage1.ensemble_members = []
        d_single = self._validation_dice(cases, use_stage1=True)
        single_better = np.nanmean(list(d_single.values())) > np.nanmean(list(d_ensemble.values())) + \
            self.ENSEMBLE_MARGIN
        if not single_better:
            self.stage1.ensemble_members = members
        logger.info("stage 1 at validation: %d heads' mean %s, the fold's head alone %s: %s", len(members) + 1,
                    _fmt(d_ensemble), _fmt(d_single), "the fold's head alone" if single_better else "the mean")
        return {"stage1_ensemble": d_ensemble, "stage1_single": d_single,
                "chosen": d_single if single_better else d_ensemble}

    # ---- the finished run's state in other checkpoints -------------------------------
    def finish_best_checkpoint(self, alpha: float) -> None:
        """``checkpoint_best.pth`` (written during training, decoder as trained, no choice yet) gets what the
        final checkpoint got: its decoder interpolated with the same ``alpha`` and the validation choice (made
        on the final decoder: original or adapted decoder, stage 1's heads, SAM or stage 1 per label), so
        ``--use_best`` validates and predicts the way the final checkpoint does, with the best epoch's
        decoder. Its epoch and progress entries stay the best epoch's."""
        from samunet.training.checkpoint import load_checkpoint, save_checkpoint

        path = self.output_folder / "checkpoint_best.pth"
        if not path.is_file():
            return
        best = load_checkpoint(path)
        final_decoder = {k: v.detach().clone() for k, v in self.sam.mask_decoder.state_dict().items()}
        final_adapted = getattr(self, "adapted_decoder", None)
        try:
            self.sam.mask_decoder.load_state_dict(best["network_weights"])
            self.interpolate_decoder(alpha)
            if (getattr(self, "final_choice", None) or {}).get("decoder") == "original":
                self.adapted_decoder = {k: v.detach().clone() for k, v in self.sam.mask_decoder.state_dict().items()}
                self.sam.mask_decoder.load_state_dict(self.pretrained_decoder)
            state = self.checkpoint_dict()
            state.update({k: best[k] for k in ("epoch", "best_ema", "ema_dice", "progress") if k in best})
            save_checkpoint(path, state)
        finally:
            self.sam.mask_decoder.load_state_dict(final_decoder)
            self.adapted_decoder = final_adapted
        logger.info("%s: the best epoch's decoder with the final checkpoint's interpolation and validation choice",
                    path.name)

    def load(self, path, weights_only_network: bool = False) -> None:
        """With ``weights_only_network`` (``--val_only``, ``--use_best``): the decoder and, from the same
        checkpoint, the finished run's stage-1 heads and choices, so that validating again gives what
        the run's own validation gave."""
        super().load(path, weights_only_network)
        if weights_only_network:
            from samunet.training.checkpoint import load_checkpoint

            self.restore_run_choices(load_checkpoint(path, map_location=self.device))

    def restore_run_choices(self, checkpoint: dict) -> None:
        """A chain checkpoint's validation choice, label rules (older checkpoints: none), adapted decoder kept
        beside the original, and stage 1's weights and extra heads (into ``self.stage1``, built from the
        checkpoint or by ``make_datasets``)."""
        self.final_choice = json.loads(checkpoint.get("final_choice", "null"))
        self.adapted_decoder = checkpoint.get("adapted_decoder")  # kept when the choice took the original
        self.always_present = frozenset(json.loads(checkpoint.get("always_present_labels", "[]")))
        self.restore_label_depths(checkpoint)
        stage1 = getattr(self, "stage1", None)
        if stage1 is None or "stage1_weights" not in checkpoint:
            return
        stage1.network.load_state_dict(checkpoint["stage1_weights"])
        if hasattr(stage1, "ensemble_members"):
            members = []
            for weights in checkpoint.get("stage1_ensemble_weights") or []:
                net = stage1.build_network()
                net.load_state_dict(weights)
                members.append(net)
            stage1.ensemble_members = members
