"""The SAM stage's command-line flags, shared by ``samunet_train``, ``samunet_predict`` and the cache builds."""

from __future__ import annotations

import argparse

from samunet.sam.encoder_backends import ENCODER_BACKENDS, ENCODER_PRECISIONS


def add_encoder_arguments(p: argparse.ArgumentParser) -> None:
    """``--encoder_backend`` and ``--encoder_precision`` (samunet_train, samunet_predict, cache builds)."""
    p.add_argument("--encoder_backend", default=None, choices=ENCODER_BACKENDS,
                   help="runtime of the frozen SAM image encoder (default auto: OpenVINO or ONNX Runtime when "
                        "installed and matching PyTorch within 1e-3, else PyTorch; PyTorch on CUDA)")
    p.add_argument("--encoder_precision", default=None, choices=ENCODER_PRECISIONS,
                   help="fp32 (default) or bf16 (only where the CPU/GPU computes bf16 natively; bf16 embeddings are "
                        "cached apart from fp32 ones)")
