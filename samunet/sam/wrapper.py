"""A thin, backbone-agnostic wrapper around a Segment Anything model.

``SamWrapper`` holds the three SAM parts (image encoder, prompt encoder, mask decoder) of
either LiteMedSAM (TinyViT, 256² input) or a ViT SAM/MedSAM (1024² input) and exposes the
steps the samunet methods need separately:

1. :meth:`SamWrapper.prepare_images` — samunet-normalised slices → backbone input
   (resize longest side, backbone-specific intensity normalisation, zero padding);
2. :meth:`SamWrapper.encode` — frozen image encoder → ``(B, 256, 64, 64)``;
3. :meth:`SamWrapper.scale_boxes` / :meth:`SamWrapper.scale_points` — slice pixel frame →
   model-input frame;
4. :meth:`SamWrapper.encode_prompts` — frozen prompt encoder (differentiable w.r.t. the
   prompt coordinates);
5. :meth:`SamWrapper.decode` — mask decoder with several prompts per image embedding and
   optional additive offsets on the mask tokens (ProMISe's IPS);
6. :meth:`SamWrapper.postprocess_logits` — low-resolution logits → slice frame.

Frames: the *slice frame* is the original (H, W) pixel grid; the *S frame* is the padded
square model input of side ``S = input_size``; the low-resolution decoder output is always
256² and covers the whole S frame.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from samunet.experiment_planning.method_defaults import ENCODER_BATCH_SIZE
from samunet.experiment_planning.sam_input import MODES as INPUT_CHANNEL_MODES

# SAM's ImageNet pixel statistics (segment_anything/modeling/sam.py), in the [0, 255] range.
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)

NORMALIZATIONS = ("minmax01", "sam")


def frame_scale(hw: Sequence[int], target: int, canvas_px: Optional[int] = None) -> float:
    """Slice pixels → S-frame pixels: ``target / max(H, W)``, or with a canvas
    ``target / max(H, W, canvas_px)`` (a slice smaller than the canvas keeps the canvas's scale and
    does not fill the S frame)."""
    return target / max(int(hw[0]), int(hw[1]), int(canvas_px or 0))


def scaled_size(hw: Sequence[int], target: int, canvas_px: Optional[int] = None) -> tuple[int, int]:
    """Size ``(h, w)`` after resizing ``hw`` so that its longest side (or ``canvas_px``, if larger)
    is ``target`` (rounded like segment_anything's ``ResizeLongestSide``)."""
    h, w = int(hw[0]), int(hw[1])
    scale = frame_scale(hw, target, canvas_px)
    return int(h * scale + 0.5), int(w * scale + 0.5)


class SamWrapper(nn.Module):
    """SAM image encoder + prompt encoder + mask decoder with explicit, separable steps.

    Args:
        name: registry name (``lite_medsam``, ``vit_b``, ...).
        image_encoder: ``(B, 3, S, S) -> (B, 256, 64, 64)``.
        prompt_encoder: segment_anything ``PromptEncoder`` (input size S, embedding 64²).
        mask_decoder: segment_anything ``MaskDecoder``.
        input_size: S, the side of the square model input (256 or 1024).
        normalization: ``"minmax01"`` (MedSAM/LiteMedSAM: per-image min-max to [0, 1]) or
            ``"sam"`` (original SAM: per-image min-max to [0, 255], then SAM's pixel mean/std).
        checkpoint_path: the weights file the model was loaded from (informative).
        weights_identity: sha256 of that file (keys encoder exports and caches; set by
            :func:`samunet.sam.build_sam`).
    """

    def __init__(self, name: str, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module,
                 input_size: int, normalization: str = "minmax01", checkpoint_path: Optional[str] = None,
                 weights_identity: Optional[str] = None):
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        self.name = name
        self.input_size = int(input_size)
        self.normalization = normalization
        self.checkpoint_path = checkpoint_path
        self.weights_identity = weights_identity
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        self._encoders_frozen = False
        self.freeze_image_and_prompt_encoders()
        # which runtime runs the frozen image encoder (see samunet.sam.encoder_backends); eager
        # PyTorch fp32 unless configure_encoder() says otherwise
        self.encoder_backend, self.encoder_precision = "torch", "fp32"
        self._frozen_encoder = None
        # which slice channels become SAM's 3 input channels (the plan's sam.input_channels);
        # None: the behaviour of plans without that key (3 channels as RGB, else channel 0)
        self.input_channels: Optional[tuple[int, ...]] = None
        self.input_channel_mode: Optional[str] = None
        self.encoder_batch_size = ENCODER_BATCH_SIZE  # slices per encoder call (plans.json sam.encoder_batch_size)
        # the slice size (pixels at the plan's target spacing) that S stands for (plans.json sam.canvas_px):
        # every slice up to it keeps one physical scale in the S frame; None: each slice fills S
        self.canvas_px: Optional[int] = None

    def configure_input(self, channels: Optional[Sequence[int]], mode: Optional[str] = None) -> "SamWrapper":
        """Feed slice channels ``channels`` to the encoder: one channel with ``mode="replicate"``
        (copied to R, G, B) or three with ``mode="rgb"``; ``None`` restores the old default."""
        if channels is None:
            self.input_channels, self.input_channel_mode = None, None
            return self
        channels = tuple(int(c) for c in channels)
        if mode not in INPUT_CHANNEL_MODES or len(channels) != (1 if mode == "replicate" else 3):
            raise ValueError(f"SAM input: mode must be one of {INPUT_CHANNEL_MODES} with 1 (replicate) or 3 (rgb) "
                             f"channels, got channels {list(channels)}, mode {mode!r}")
        self.input_channels, self.input_channel_mode = channels, mode
        return self

    def configure_from_plan(self, plans: dict, where: str = "plans.json") -> "SamWrapper":
        """What the plan's ``sam`` section says about feeding the encoder: :meth:`configure_input`
        with ``input_channels``/``input_channel_mode`` (a plan without them: the old default, 3
        channels as RGB, else channel 0), ``encoder_batch_size`` (default 4) and ``canvas_px`` (default
        none: each slice fills the S frame)."""
        from samunet.experiment_planning.sam_input import plan_sam_input

        section = plans.get("sam") or {}
        batch = int(section.get("encoder_batch_size", ENCODER_BATCH_SIZE))
        if batch < 1:
            raise ValueError(f"{where}: sam.encoder_batch_size must be >= 1, got {batch}")
        self.encoder_batch_size = batch
        canvas = section.get("canvas_px")
        if canvas is not None and (isinstance(canvas, bool) or not isinstance(canvas, int) or canvas < 1):
            raise ValueError(f"{where}: sam.canvas_px must be a positive whole number of pixels or null, got {canvas!r}")
        self.canvas_px = canvas
        if "input_channels" not in section and "input_channel_mode" not in section:
            return self.configure_input(None)  # the old default, whatever the channel count
        chosen = plan_sam_input(plans, where)
        return self.configure_input(chosen["channels"], chosen["mode"])

    def select_input_channels(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` slices -> ``(B, 3, H, W)``: the configured channels (see
        :meth:`configure_input`), or, unconfigured, ``C == 3`` as is and channel 0 otherwise."""
        if self.input_channels is None:
            return x if x.shape[1] == 3 else x[:, :1].expand(-1, 3, -1, -1)
        if max(self.input_channels) >= x.shape[1]:
            raise ValueError(f"SAM input channels {list(self.input_channels)} (plans.json sam.input_channels) do not "
                             f"exist in slices with {x.shape[1]} channel(s)")
        x = x[:, list(self.input_channels)]
        return x.expand(-1, 3, -1, -1) if self.input_channel_mode == "replicate" else x

    # ------------------------------------------------------------------ state
    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def image_embedding_size(self) -> tuple[int, int]:
        return tuple(self.prompt_encoder.image_embedding_size)

    def freeze_image_and_prompt_encoders(self) -> "SamWrapper":
        """Set ``requires_grad=False`` on the image and prompt encoders and keep them in eval
        mode (the default after building). Only the mask decoder stays trainable."""
        for module in (self.image_encoder, self.prompt_encoder):
            for p in module.parameters():
                p.requires_grad_(False)
            module.eval()
        self._encoders_frozen = True
        return self

    def trainable_decoder_parameters(self) -> list[nn.Parameter]:
        """The mask decoder's parameters that require gradients (what an optimiser gets)."""
        return [p for p in self.mask_decoder.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> "SamWrapper":
        """Like ``nn.Module.train`` but frozen encoders always stay in eval mode: TinyViT has
        BatchNorm layers whose running statistics must not drift while the decoder trains."""
        super().train(mode)
        if self._encoders_frozen:
            self.image_encoder.eval()
            self.prompt_encoder.eval()
        return self

    # ------------------------------------------------------------------ images
    def prepare_images(self, slices: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Turn samunet-normalised slices into the backbone's input.

        Args:
            slices: ``(B, C, H, W)`` float, samunet-normalised (roughly [0, 1]).

        Returns:
            ``(images, (h, w))``: images ``(B, 3, S, S)`` and the scaled size ``(h, w)`` of the
            content before padding (top-left corner of the S frame).

        Steps:
            1. Channels (:meth:`select_input_channels`): the plan's ``sam.input_channels`` —
               one channel replicated to 3 (a grey MR/CT slice, the MedSAM/LiteMedSAM
               convention) or three used as R, G, B. SAM's encoders were pretrained on RGB and
               only accept 3 channels. Unconfigured (plans without the key): ``C == 3`` as is,
               otherwise channel 0 replicated.
            2. Resize so that the longest side is S (bilinear, ``antialias=True``, aspect kept); with
               a canvas (``canvas_px``, the plan's ``sam.canvas_px``) so that ``max(H, W, canvas_px)``
               is S: slices of a smaller field of view keep the training slices' physical scale.
            3. Per-image intensity normalisation over all channels of the valid region:
               ``minmax01`` → [0, 1]; ``sam`` → [0, 255] then ``(x - mean) / std``.
            4. Zero-pad bottom/right to ``S × S`` (after normalisation, so padding is 0 in the
               backbone's input space, as in both SAM and MedSAM).
        """
        if slices.ndim != 4:
            raise ValueError(f"slices must be (B, C, H, W), got shape {tuple(slices.shape)}")
        x = self.select_input_channels(slices.to(device=self.device, dtype=torch.float32))
        S = self.input_size
        h, w = scaled_size(x.shape[-2:], S, self.canvas_px)
        if (h, w) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        x = (x - lo) / (hi - lo).clamp_min(1e-8)
        if self.normalization == "sam":
            x = (x * 255.0 - self.pixel_mean) / self.pixel_std
        x = F.pad(x, (0, S - w, 0, S - h), value=0.0)
        return x, (h, w)

    def configure_encoder(self, backend: str = "auto", precision: str = "fp32") -> "SamWrapper":
        """Run the frozen image encoder on ``backend`` (``auto``, ``torch``, ``onnxruntime``,
        ``openvino``) in ``precision`` (``fp32``, ``bf16``). Checked now (a precision the device
        cannot run is refused here); the backend itself is built, and exported if needed, at
        the first :meth:`encode`."""
        from samunet.sam.encoder_backends import (ENCODER_BACKENDS, INSTALL_HINT, EncoderBackendError,
                                                  backend_installed, check_precision)

        if backend not in ENCODER_BACKENDS:
            raise EncoderBackendError(f"--encoder_backend must be one of {ENCODER_BACKENDS}, got {backend!r}")
        if backend in INSTALL_HINT and not backend_installed(backend):
            raise EncoderBackendError(f"--encoder_backend {backend} is not installed; {INSTALL_HINT[backend]}, "
                                      "or use --encoder_backend auto or torch")
        if backend in INSTALL_HINT and self.device.type != "cpu":
            raise EncoderBackendError(f"--encoder_backend {backend} runs on the CPU only; on {self.device} use "
                                      "torch or auto")
        check_precision(precision, backend, self.device)
        self.encoder_backend, self.encoder_precision = backend, precision
        self._frozen_encoder = None
        return self

    @property
    def frozen_encoder(self):
        """The :class:`~samunet.sam.encoder_backends.FrozenEncoder` :meth:`encode` uses (built on first use)."""
        if self._frozen_encoder is None:
            from samunet.sam.encoder_backends import build_encoder

            self._frozen_encoder = build_encoder(self.name, self.encoder_backend, self.encoder_precision,
                                                 device=self.device, sam=self)
        return self._frozen_encoder

    def encode(self, images: torch.Tensor, eager: bool = False) -> torch.Tensor:
        """Frozen image encoder: ``(B, 3, S, S) -> (B, 256, 64, 64)`` float32 (no gradients), on the
        configured backend; ``eager=True`` runs this module's own encoder (so forward hooks on its
        blocks fire, as ProMISe's feature taps need) in the configured precision."""
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (self.input_size,) * 2:
            raise ValueError(f"images must be (B, 3, {self.input_size}, {self.input_size}), got {tuple(images.shape)}")
        if not eager and self.encoder_backend != "torch":
            return self.frozen_encoder(images).to(self.device)
        with torch.no_grad():
            if self.encoder_precision == "bf16":
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    return self.image_encoder(images.to(self.device)).float()
            return self.image_encoder(images.to(self.device))

    # ------------------------------------------------------------------ prompts
    def frame_scale(self, slice_hw: Sequence[int]) -> float:
        """Slice pixels → S-frame pixels for a ``slice_hw`` slice (see :func:`frame_scale`)."""
        return frame_scale(slice_hw, self.input_size, self.canvas_px)

    def scale_boxes(self, boxes, slice_hw: Sequence[int]) -> torch.Tensor:
        """Boxes ``(N, 4)`` ``[x0, y0, x1, y1]`` in slice pixels → float boxes in the S frame
        (multiplied by :meth:`frame_scale`, ``S / max(H, W)`` without a canvas)."""
        b = torch.as_tensor(boxes, dtype=torch.float32, device=self.device)
        if b.shape[-1] != 4:
            raise ValueError(f"boxes must be (N, 4), got {tuple(b.shape)}")
        return b * self.frame_scale(slice_hw)

    def scale_points(self, points, slice_hw: Sequence[int]) -> torch.Tensor:
        """Points ``(N, P, 2)`` ``(x, y)`` in slice pixels → float points in the S frame."""
        p = torch.as_tensor(points, dtype=torch.float32, device=self.device)
        if p.shape[-1] != 2:
            raise ValueError(f"points must be (N, P, 2), got {tuple(p.shape)}")
        return p * self.frame_scale(slice_hw)

    def encode_prompts(self, boxes: Optional[torch.Tensor] = None, points: Optional[torch.Tensor] = None,
                       point_labels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen prompt encoder.

        Args:
            boxes: ``(N, 4)`` in the S frame, or None.
            points: ``(N, P, 2)`` ``(x, y)`` in the S frame, or None.
            point_labels: ``(N, P)``: 1 positive, 0 negative, -1 padding; required with points.

        Returns:
            ``sparse (N, T, 256)``, ``dense (N, 256, 64, 64)``. T = 2 for a box, P + 1 for points
            alone (SAM appends a "not-a-point" padding token when no box is given), P + 2 for
            points and a box.

        Not wrapped in ``torch.no_grad``: gradients flow to the point/box coordinates (ProMISe
        learns point positions); the encoder's own parameters are frozen.
        """
        pts = None
        if points is not None:
            if point_labels is None:
                raise ValueError("point_labels are required with points")
            coords = torch.as_tensor(points, dtype=torch.float32, device=self.device)
            labels = torch.as_tensor(point_labels, device=self.device)
            if coords.ndim != 3 or coords.shape[-1] != 2 or labels.shape != coords.shape[:2]:
                raise ValueError(f"points must be (N, P, 2) and labels (N, P); got {tuple(coords.shape)}, "
                                 f"{tuple(labels.shape)}")
            pts = (coords, labels)
        bx = None
        if boxes is not None:
            bx = torch.as_tensor(boxes, dtype=torch.float32, device=self.device).reshape(-1, 4)
            if pts is not None and bx.shape[0] != pts[0].shape[0]:
                raise ValueError("boxes and points must have the same number of prompts N")
        return self.prompt_encoder(points=pts, boxes=bx, masks=None)

    # ------------------------------------------------------------------ decoder
    def decode(self, image_embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
               image_index: Optional[torch.Tensor] = None, multimask_output: bool = False,
               mask_token_offsets: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask decoder for N prompts on B image embeddings.

        Args:
            image_embeddings: ``(B, 256, 64, 64)``.
            sparse: ``(N, T, 256)`` sparse prompt embeddings.
            dense: ``(N, 256, 64, 64)`` (or ``(1, ...)``, broadcast) dense prompt embeddings.
            image_index: ``(N,)`` long — prompt n uses ``image_embeddings[image_index[n]]``.
                None means one-to-one (B == N); B == 1 is also accepted and shared by all prompts.
            multimask_output: False → mask token 0 only (k = 1); True → tokens 1..3 (k = 3),
                as in ``MaskDecoder.forward``.
            mask_token_offsets: ``(N, 4, 256)`` added to the 4 mask-token embeddings (not the IoU
                token) before the two-way transformer (ProMISe IPS), or None.

        Returns:
            ``low_res_logits (N, k, 256, 256)`` over the whole S frame, ``iou (N, k)``.

        This re-implements ``MaskDecoder.predict_masks`` with the decoder's own submodules so
        that offsets can be injected. Unlike segment_anything's version, which always does
        ``repeat_interleave(image_embeddings, N)`` (correct only for B == 1; B == N would blow up
        to N² rows), embeddings are gathered per prompt with ``image_index``.
        """
        dec = self.mask_decoder
        N = sparse.shape[0]
        B = image_embeddings.shape[0]
        if image_index is None:
            if B == N:
                src = image_embeddings
            elif B == 1:
                src = image_embeddings.expand(N, -1, -1, -1)
            else:
                raise ValueError(f"image_index is required when B ({B}) != N ({N}) and B != 1")
        else:
            idx = torch.as_tensor(image_index, dtype=torch.long, device=image_embeddings.device).reshape(-1)
            if idx.numel() != N:
                raise ValueError(f"image_index has {idx.numel()} entries for {N} prompts")
            if N and (int(idx.min()) < 0 or int(idx.max()) >= B):
                raise IndexError(f"image_index out of range for {B} image embeddings")
            src = image_embeddings.index_select(0, idx)
        if dense.shape[0] not in (N, 1):
            raise ValueError(f"dense has batch {dense.shape[0]}, expected {N} or 1")
        src = src + dense
        pe = self.prompt_encoder.get_dense_pe()
        pos_src = pe.expand(N, -1, -1, -1)
        b, c, h, w = src.shape

        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(N, -1, -1)
        if mask_token_offsets is not None:
            expected = (N, dec.num_mask_tokens, output_tokens.shape[-1])
            if tuple(mask_token_offsets.shape) != expected:
                raise ValueError(f"mask_token_offsets must be {expected}, got {tuple(mask_token_offsets.shape)}")
            output_tokens = torch.cat([output_tokens[:, :1], output_tokens[:, 1:] + mask_token_offsets], dim=1)
        tokens = torch.cat((output_tokens, sparse), dim=1)

        hs, src = dec.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1:(1 + dec.num_mask_tokens), :]

        src = src.transpose(1, 2).reshape(b, c, h, w)
        upscaled = dec.output_upscaling(src)
        hyper_in = torch.stack([dec.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :])
                                for i in range(dec.num_mask_tokens)], dim=1)
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        iou = dec.iou_prediction_head(iou_token_out)

        sl = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sl], iou[:, sl]

    def postprocess_logits(self, logits: torch.Tensor, scaled_hw: Sequence[int],
                           slice_hw: Sequence[int]) -> torch.Tensor:
        """Low-resolution logits ``(N, k, 256, 256)`` → ``(N, k, H, W)`` in the slice frame:
        upsample to S × S (bilinear), crop the unpadded ``scaled_hw`` region, resize to
        ``slice_hw`` (bilinear)."""
        S = self.input_size
        x = logits
        if tuple(x.shape[-2:]) != (S, S):
            x = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False)
        x = x[..., : int(scaled_hw[0]), : int(scaled_hw[1])]
        target = (int(slice_hw[0]), int(slice_hw[1]))
        if tuple(x.shape[-2:]) != target:
            x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
        return x

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, input_size={self.input_size}, normalization={self.normalization!r}, "
                f"input_channels={self.input_channels}, input_channel_mode={self.input_channel_mode!r}, "
                f"canvas_px={self.canvas_px}")

