"""Checkpoint I/O: atomic writes, ``weights_only=True`` loads.

A checkpoint holds tensors and plain Python containers only (the plan as a JSON
string, RNG states as lists and strings), so it loads without unpickling code.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from samunet.utilities.file_io import atomic_path


class CheckpointError(RuntimeError):
    pass


def rng_state(generator: np.random.Generator) -> dict:
    """Every RNG a training run draws from, as weights_only-loadable data."""
    np_global = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy_generator": json.dumps(generator.bit_generator.state),
        "numpy_global": [np_global[0], torch.from_numpy(np_global[1].astype(np.int64)), int(np_global[2]),
                         int(np_global[3]), float(np_global[4])],
        "python": json.dumps(random.getstate()),
    }


def restore_rng_state(state: dict, generator: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.bit_generator.state = json.loads(state["numpy_generator"])
    g = state["numpy_global"]
    np.random.set_state((g[0], g[1].numpy().astype(np.uint32), g[2], g[3], g[4]))
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))


def save_checkpoint(path: str | Path, checkpoint: dict) -> None:
    with atomic_path(path, suffix=".pth") as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # unpickling errors, truncated zip archives, ...
        raise CheckpointError(
            f"{path}: could not be loaded safely ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "The file is truncated, not a samunet checkpoint, or contains code (refused for safety). Replace it "
            "with an intact copy, or delete it (samunet_train --c then starts the fold from scratch)."
        ) from None
