"""Stage 1 on the frozen SAM image embedding: a light conv head, trained on the embedding cache.

The foundation encoder already separates what a from-scratch stage 1 has to learn from one
hospital's images; this trainer only reads it out. A training step costs no encoder pass:
it reads cached ``(256, 64, 64)`` embeddings of the training slices and of ``num_views``
appearance views of each (random intensity curves incl. contrast reversal, gamma with
noise, blur/down-sampling, bias fields, random shallow convolutions; made on the image
*before* the encoder, encoded once and cached beside the plain embeddings in
``embeddings/<backbone>/view<i>/``). Targets are the labels mapped into the decoder's
low-resolution ``256 × 256`` frame; the padding is background.

Prediction: embeddings (cache, else the encoder) → head → logits mapped to the slice with
:meth:`~samunet.sam.wrapper.SamWrapper.postprocess_logits` → ``(K, Z, Y, X)`` class
probabilities, background first, like ``ResNetTrainer``: usable alone
(``-tr EmbeddingHeadTrainer``) and as ``SAMBoxTrainer``'s stage 1.

Settings: the plan's ``embedding_head`` section (see
:mod:`samunet.experiment_planning.method_defaults`).
"""

from __future__ import annotations

import copy
import logging
import zlib

import numpy as np
import torch

from samunet.experiment_planning.splits import group_k_fold, group_members
from samunet.networks.embedding_head import build_embedding_head
from samunet.sam.appearance_views import OP_PROBS, OPS, random_appearance
from samunet.sam.box_prompting import mask_to_low_res
from samunet.sam.embedding_cache import encode_volume
from samunet.sam.embedding_lru import prediction_lru
from samunet.sam.scale_views import DEFAULT_SCALE_RANGE, apply_zoom, slice_zoom
from samunet.training import distributed as dist_utils
from samunet.training.losses import DiceCELoss, logits_to_probabilities, num_outputs_for
from samunet.training.optim import build_adamw_poly
from samunet.training.trainer_base import BaseTrainer
from samunet.training.trainers.sam_common import SAMTrainerMixin

logger = logging.getLogger(__name__)


def view_cache_tag(name: str, seed: int = 0, ops: tuple[str, ...] = OPS) -> str:
    """The cache variant of appearance view ``name`` (e.g. ``view1``) drawn with ``seed`` from ``ops``."""
    return name + (f"_s{seed}" if seed else "") + ("" if tuple(ops) == OPS else "_" + "+".join(ops))


def view_transform(view: int, seed: int = 0, ops: tuple[str, ...] = OPS):
    """``transform(data (C, Z, Y, X), case) -> data``: appearance view ``view`` (1-based) of a
    case made of ``ops``, the same every time (seeded by view, case name and slice)."""

    def transform(data: np.ndarray, case: str) -> np.ndarray:
        out = np.empty_like(data, dtype=np.float32)
        key = zlib.crc32(case.encode())
        for z in range(data.shape[1]):
            rng = np.random.default_rng([int(seed), int(view), key, z])
            out[:, z] = random_appearance(np.asarray(data[:, z], dtype=np.float32), rng, ops=ops)
        return out

    return transform


def case_zoom(seed: int, view: int, case: str, z: int, shape_hw, scale_range=DEFAULT_SCALE_RANGE):
    """The zoom of scale view ``view`` (1-based) of slice ``z`` of ``case``: one definition for the
    image (:func:`scale_transform`) and its training target."""
    return slice_zoom(seed, view, zlib.crc32(case.encode()), z, shape_hw, scale_range)


def scale_transform(view: int, seed: int = 0, scale_range=DEFAULT_SCALE_RANGE):
    """``transform(data (C, Z, Y, X), case) -> data``: scale view ``view`` (1-based) of a case, each
    slice zoomed by :func:`case_zoom` (the same every time)."""

    def transform(data: np.ndarray, case: str) -> np.ndarray:
        out = np.empty_like(data, dtype=np.float32)
        for z in range(data.shape[1]):
            zoom = case_zoom(seed, view, case, z, data.shape[2:], scale_range)
            out[:, z] = apply_zoom(np.asarray(data[:, z], dtype=np.float32), zoom, order=1)
        return out

    return transform


def flip_transform(data: np.ndarray, case: str | None = None) -> np.ndarray:
    """``(C, Z, Y, X)`` data mirrored left-right (the image before the encoder: flipping the embedding
    grid is not the same, with SAM's bottom-right padding)."""
    return np.ascontiguousarray(np.asarray(data)[..., ::-1])


class EmbeddingHeadTrainer(SAMTrainerMixin, BaseTrainer):
    """A ~0.1 M-parameter conv head on the cached SAM image embedding (stage 1)."""

    plans_section = "embedding_head"
    settings_section = "embedding_head"
    OPTIONS = frozenset({"num_views", "view_ops", "num_scale_views", "test_time_flip"})

    # ---- configuration ------------------------------------------------------------
    @property
    def num_views(self) -> int:
        v = self.options.get("num_views")
        return int(v if v is not None else self.plans["embedding_head"].get("num_views", 0))

    @property
    def view_ops(self) -> tuple[str, ...]:
        """The transforms appearance views draw from (plan ``embedding_head.view_ops``; trainer option
        ``view_ops=a,b``; default all of :data:`OPS`)."""
        v = self.options.get("view_ops")
        v = v if v is not None else self.plans["embedding_head"].get("view_ops")
        ops = tuple(v.split(",") if isinstance(v, str) else v) if v else OPS
        unknown = [o for o in ops if o not in OP_PROBS]
        if unknown:
            raise ValueError(f"embedding_head.view_ops: unknown transform(s) {unknown}; choose from "
                             f"{sorted(OP_PROBS)}")
        return ops

    @property
    def num_scale_views(self) -> int:
        """Scale views per training slice (plan ``embedding_head.num_scale_views``; plans written
        before it: 0)."""
        v = self.options.get("num_scale_views")
        return int(v if v is not None else self.plans["embedding_head"].get("num_scale_views", 0))

    @property
    def view_seed(self) -> int:
        return int(self.plans["embedding_head"].get("view_seed", 0))

    @property
    def scale_range(self) -> tuple[float, float]:
        lo, hi = self.plans["embedding_head"].get("scale_range", DEFAULT_SCALE_RANGE)
        return float(lo), float(hi)

    def network_config(self) -> dict:
        cfg = self.plans["embedding_head"]
        return {"num_outputs": num_outputs_for(self.label_values), "width": int(cfg.get("width", 64)),
                "dropout": float(cfg.get("dropout", 0.1)), "context_dilations": list(cfg.get("context_dilations", []))}

    @property
    def test_time_flip(self) -> bool:
        """Average with the head's reading of the mirrored slice (plan ``embedding_head.test_time_flip``;
        trainer option ``test_time_flip``; plans written before it: off)."""
        v = self.options.get("test_time_flip")
        return bool(v if v is not None else self.plans["embedding_head"].get("test_time_flip", False))

    def build_network(self) -> torch.nn.Module:
        if getattr(self, "sam", None) is None:
            self.sam = self.make_sam()  # encodes slices that are not cached (prediction, cache builds)
        return build_embedding_head(self.network_config())

    def build_loss(self):
        return DiceCELoss(ignore_label=self.ignore_label)

    def configure_optimizers(self):
        cfg = self.plans["embedding_head"]
        return build_adamw_poly(self.network.parameters(), cfg["initial_lr"], cfg["weight_decay"], self.num_epochs)

    def restore_inference_state(self, checkpoint: dict) -> None:
        self.cache = self.flip_cache = None

    # ---- data ---------------------------------------------------------------------
    def build_caches(self) -> None:
        """The plain embeddings of every case of the fold and the appearance views of the training cases."""
        if getattr(self, "sam", None) is None:
            self.sam = self.make_sam()
        self.cache = getattr(self, "shared_cache", None) or self.make_cache()
        needed = self.split["train"] + self.split["val"] + self.split.get("test", [])
        self.cache.build(needed, self.sam, part=self.rank, num_parts=self.world_size)
        seed = self.view_seed
        ops = self.view_ops
        tags = [view_cache_tag(f"view{v}", seed, ops) for v in range(1, self.num_views + 1)]
        views = [self.make_cache(tag, view_transform(v, seed, ops)) for v, tag in enumerate(tags, start=1)]
        self.view_caches = views[:self.views_within_budget(views, tags)]
        lo, hi = self.scale_range
        self.scale_caches = [self.make_cache(f"scale{v}_{lo:g}-{hi:g}" + (f"_s{seed}" if seed else ""),
                                            scale_transform(v, seed, (lo, hi)))
                             for v in range(1, self.num_scale_views + 1)]
        self.build_flip_cache(self.split["val"] + self.split.get("test", []))
        for kind, caches in (("appearance", self.view_caches), ("scale", self.scale_caches)):
            for i, cache in enumerate(caches):
                if any(not cache.is_valid(c) for c in self.split["train"]):
                    logger.info("%s view %d/%d of the training slices (encoded once, cached)", kind, i + 1,
                                len(caches))
                cache.build(self.split["train"], self.sam, part=self.rank, num_parts=self.world_size)
        dist_utils.barrier()

    def views_within_budget(self, caches: list, tags: list[str]) -> int:
        """How many of the planned appearance-view ``caches`` to encode and train on: all without a time
        budget; under one, as many as fit :data:`~samunet.training.view_budget.VIEW_BUDGET_SHARE` of it
        at this device's measured encoder speed. Decided once per fold (kept in
        ``appearance_views.json``; copies for out-of-fold parts inherit it)."""
        from samunet.training import view_budget

        if not caches:
            return 0
        if getattr(self, "_views_used", None) is not None:
            return min(self._views_used, len(caches))
        key = view_budget.decision_key(len(caches), tags)
        used = view_budget.stored_decision(self.output_folder, key)
        if used is None:
            train = self.split["train"]
            uncached = [sum(self.cache.info(c)["shape"][0] for c in train if not v.is_valid(c)) for v in caches]
            budget = self.time_budget_s() if self.world_size == 1 else None
            allowance = None if budget is None else view_budget.VIEW_BUDGET_SHARE * budget
            per_slice = self.seconds_per_encoded_slice(caches[0]) if allowance is not None and any(uncached) else 0.0
            used = view_budget.views_that_fit(uncached, per_slice, allowance)
            view_budget.record_decision(self.output_folder, key, used, per_slice, allowance, uncached)
        self._views_used = used
        return used

    def seconds_per_encoded_slice(self, cache) -> float:
        """The encoder's seconds per slice on this device, timed on a batch of the first training case's
        slices as ``cache`` transforms them (one untimed call first)."""
        from samunet.sam.embedding_cache import encode_volume, encoder_batch_size
        from samunet.training.schedule import measure_seconds_per_call
        from samunet.utilities.file_io import load_npz

        case = sorted(self.split["train"])[0]
        data = load_npz(self.data_folder / f"{case}.npz")["data"]
        data = data[:, :encoder_batch_size(self.sam)]
        if cache.transform is not None:
            data = cache.transform(data, case)
        seconds = measure_seconds_per_call(lambda: encode_volume(self.sam, data), warmup=1, repeats=1)
        return seconds / data.shape[1]

    def build_flip_cache(self, cases, make_cache=None) -> None:
        """With test-time flipping: the mirrored slices of ``cases`` (the fold's validation and test
        cases), encoded once and cached in ``embeddings/<backbone>/flip/``. ``make_cache``: the
        cache factory of a chain that restored this head from a checkpoint (default: this trainer's)."""
        self.flip_cache = None
        if not self.test_time_flip:
            return
        self.flip_cache = (make_cache or self.make_cache)("flip", flip_transform)
        if any(not self.flip_cache.is_valid(c) for c in cases):
            logger.info("mirrored slices of %d validation/test cases for test-time flipping (encoded once, cached)",
                        len(cases))
        self.flip_cache.build(cases, self.sam, part=self.rank, num_parts=self.world_size)

    def make_datasets(self) -> None:
        self.build_caches()
        self._targets: dict = {}
        self.train_slices = self._slices(self.split["train"])
        self.val_slices = self._slices(self.split["val"]) if self.split["val"] else self.train_slices

    def _slices(self, cases) -> tuple[list, list]:
        """``(all (case, z), foreground (case, z))`` slices of ``cases``."""
        every, fg = [], []
        for case in cases:
            seg = np.asarray(self._seg(case))[0]
            for z in range(seg.shape[0]):
                every.append((case, z))
                if np.isin(seg[z], self.foreground_labels).any():
                    fg.append((case, z))
        return every, fg

    def target(self, case: str, z: int, scale_view: int = 0) -> np.ndarray:
        """``(1, 256, 256)`` label indices in the decoder's low-resolution frame (padding = 0;
        unannotated pixels keep the ignore label's value, which the loss skips); of scale view
        ``scale_view`` (1-based; 0 = the slice itself)."""
        key = (case, z, scale_view)
        if key not in self._targets:
            seg = np.asarray(self._seg(case))[0, z]
            if scale_view:
                zoom = case_zoom(self.view_seed, scale_view, case, z, seg.shape, self.scale_range)
                seg = apply_zoom(seg, zoom, order=0, fill=0)
            seg = torch.from_numpy(seg.astype(np.int64))
            scaled_hw = self.cache.info(case)["scaled_hw"]
            t = torch.zeros((1, 256, 256), dtype=torch.uint8)
            for i, label in enumerate(self.label_values[1:], start=1):
                m = mask_to_low_res((seg == label)[None], scaled_hw, self.sam.input_size)[0]
                t[m > 0.5] = i
            ignored = self.ignored_pixels(seg)
            if ignored is not None:
                t[mask_to_low_res(ignored[None], scaled_hw, self.sam.input_size)[0] > 0.5] = self.ignore_label
            self._targets[key] = t.numpy()
        return self._targets[key]

    def _batch(self, slices: tuple[list, list], n: int, rng: np.random.Generator, views: bool) -> dict:
        every, fg = slices
        over = float(self.plans["embedding_head"].get("foreground_oversampling", 0.5))
        emb, seg = [], []
        caches = [self.cache, *self.view_caches, *self.scale_caches]  # index 0: the plain slices
        for _ in range(n):
            pool = fg if fg and rng.random() < over else every
            case, z = pool[int(rng.integers(len(pool)))]
            v = int(rng.integers(len(caches))) if views else 0
            emb.append(np.asarray(caches[v].load(case)[z], dtype=np.float32))
            seg.append(self.target(case, z, max(0, v - len(self.view_caches))))
        return {"data": np.stack(emb), "seg": np.stack(seg)}

    def next_train_batch(self) -> dict:
        return self._batch(self.train_slices, max(1, self.batch_size // self.world_size), self.rng, views=True)

    def next_val_batch(self, rng: np.random.Generator) -> dict:
        return self._batch(self.val_slices, self.batch_size, rng, views=False)

    # ---- inference ----------------------------------------------------------------
    def embeddings_of(self, data: np.ndarray, case: str | None = None) -> tuple[np.ndarray, tuple[int, int]]:
        """``(Z, 256, 64, 64)`` embeddings of a case (cache when valid, else the encoder) and the scaled size."""
        cache = getattr(self, "cache", None)
        if case is not None and cache is not None and cache.is_valid(case):
            return cache.load(case), tuple(cache.info(case)["scaled_hw"])
        return encode_volume(self.sam, data, lru=prediction_lru())

    def mirrored_embeddings_of(self, data: np.ndarray, case: str | None = None) -> np.ndarray:
        """``(Z, 256, 64, 64)`` embeddings of the horizontally mirrored slices (flip cache, else the encoder)."""
        cache = getattr(self, "flip_cache", None)
        if case is not None and cache is not None and cache.is_valid(case):
            return cache.load(case)
        return encode_volume(self.sam, flip_transform(data), lru=prediction_lru())[0]

    @torch.no_grad()
    def predict_embeddings(self, emb: np.ndarray, scaled_hw, slice_hw, network=None) -> np.ndarray:
        """``(Z, 256, 64, 64)`` embeddings -> ``(K, Z, Y, X)`` class probabilities (background first)."""
        net = network or self.network
        net.eval()
        out = np.zeros((len(self.label_values), emb.shape[0], *slice_hw), dtype=np.float32)
        step = max(1, self.batch_size)
        for start in range(0, emb.shape[0], step):
            x = torch.from_numpy(np.asarray(emb[start:start + step], dtype=np.float32)).to(self.device)
            logits = self.sam.postprocess_logits(net(x), scaled_hw, slice_hw)
            out[:, start:start + x.shape[0]] = logits_to_probabilities(logits).permute(1, 0, 2, 3).cpu().numpy()
        return out

    def predict_preprocessed(self, data: np.ndarray, case: str | None = None, network=None, **context) -> np.ndarray:
        """Class probabilities of ``network``, else the mean over this head and its
        :attr:`ensemble_members` (extra heads, e.g. the chain's out-of-fold heads), and — with
        :attr:`test_time_flip` — over the same heads on the mirrored slices, mirrored back."""
        emb, scaled_hw = self.embeddings_of(data, case)
        nets = [network] if network is not None else [self.network, *self.ensemble_members]
        views = [(emb, False)]
        if self.test_time_flip and network is None:
            views.append((self.mirrored_embeddings_of(data, case), True))
        out = None
        for e, mirrored in views:
            for net in nets:
                p = self.predict_embeddings(e, scaled_hw, data.shape[2:], net)
                p = p[..., ::-1] if mirrored else p
                out = p if out is None else out + p
        return np.ascontiguousarray(out / (len(nets) * len(views)))

    @property
    def ensemble_members(self) -> list:
        """Extra heads averaged with :attr:`network` at prediction (empty: the head alone)."""
        return getattr(self, "_ensemble_members", None) or []

    @ensemble_members.setter
    def ensemble_members(self, networks) -> None:
        self._ensemble_members = [n.to(self.device).eval() for n in networks]

    # ---- out-of-fold models (SAMBoxTrainer's decoder-training boxes) ---------------
    # parts keep dataset.json's groups whole: a head that saw other slices of a patient gives
    # that patient's held-out slices better boxes than test cases would get
    def train_out_of_fold(self, k: int) -> dict[str, dict]:
        """Train ``k`` heads, each on the training cases outside one of ``k`` parts (whole groups of
        dataset.json's ``groups``; fewer parts when there are fewer groups), and return
        ``{case: {"network": head that did not see the case, "trained_on": its training cases}}``
        for every training case. Parts are saved (and resumed) under ``<fold>/oof_<k>/part_<i>``.
        """
        if getattr(self, "cache", None) is None:
            self.build_caches()
        cases = sorted(self.split["train"])
        parts = out_of_fold_parts(cases, (self.dataset_json or {}).get("groups"), k, [self.seed, 11])
        if len(parts) < 2:
            logger.warning("out-of-fold stage 1 skipped: the %d training cases are all one group of dataset.json's "
                           "groups, so no part can be held out from a head that never saw its patient", len(cases))
            return {}
        k = len(parts)
        out: dict[str, dict] = {}
        for j, held in enumerate(parts):
            rest = sorted(set(cases) - set(held))
            part = copy.copy(self)
            part.options = dict(self.options)
            part.split = {"train": rest, "val": held, "test": []}
            part.output_folder = self.output_folder / f"oof_{k}" / f"part_{j}"
            part.network, part.current_epoch, part.best_ema, part.ema_dice = None, 0, -1.0, None
            part.progress = type(self.progress)()
            part.shared_cache = self.cache
            final = part.output_folder / "checkpoint_final.pth"
            if final.is_file():
                part.initialize()
                part.load(final, weights_only_network=True)
            else:
                logger.info("out-of-fold stage 1, part %d/%d: %d cases train, %d held out", j + 1, k, len(rest), len(held))
                part.run_training()
            net = part.network.eval()
            for case in held:
                out[case] = {"network": net, "trained_on": rest}
        return out


def out_of_fold_parts(cases: list[str], groups: dict[str, str] | None, k: int, seed) -> list[list[str]]:
    """``k`` parts of ``cases`` (at most one per group) for out-of-fold heads; a group's cases share
    a part. Without multi-case groups: every k-th case of a seeded permutation, as before groups."""
    cases = sorted(cases)
    members = group_members(cases, groups)
    k = min(max(2, int(k)), len(members))
    if len(members) == len(cases):
        order = np.random.default_rng(seed).permutation(len(cases))
        return [sorted(cases[i] for i in order[j::k]) for j in range(k)]
    return group_k_fold(cases, groups, k, seed)
