"""The interface every reader/writer implements.

Arrays are always returned channel-first in *array order*: images ``(C, Z, Y, X)``
float32, segmentations ``(1, Z, Y, X)`` integer. 2D inputs have ``Z == 1``. The
``properties`` dict carries what is needed to write a prediction back in exactly
the input's geometry; it is JSON-serialisable.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

# Spacing given to the (absent) slice axis of 2D images, as nnU-Net does.
SPACING_2D_SLICE_AXIS = 999.0
# float32 copies of an image held while preprocessing or predicting it (memory budget check)
WORKING_COPIES = 6


class ImageReadError(RuntimeError):
    """A file could not be read; the message names the file and the fix."""


class ImageIO(ABC):
    supported_file_endings: tuple[str, ...] = ()

    @abstractmethod
    def read_images(self, files: Sequence[str | os.PathLike]) -> tuple[np.ndarray, dict]:
        """Read the channel files of one case. Returns ``(C, Z, Y, X)`` float32 and properties.

        A single file may hold several channels (an RGB PNG); all are returned in order.
        """

    @abstractmethod
    def read_seg(self, file: str | os.PathLike) -> tuple[np.ndarray, dict]:
        """Read a label map. Returns ``(1, Z, Y, X)`` int16 and properties."""

    @abstractmethod
    def write_seg(self, seg: np.ndarray, file: str | os.PathLike, properties: dict) -> None:
        """Write a ``(Z, Y, X)`` label map with the geometry in ``properties``."""

    @classmethod
    def name(cls) -> str:
        return cls.__name__


def check_memory_budget(file: str | os.PathLike, size: Sequence[int], components: int = 1) -> None:
    """Refuse, from the header alone, an image too big to process within the memory budget.

    ``size`` is the voxel grid as the header gives it, ``components`` the channels per voxel.
    Preprocessing and prediction hold about ``WORKING_COPIES`` float32 copies of an image
    (read, cropped, normalised, resampled, class probabilities).
    """
    from samunet.utilities.resources import format_bytes, memory_budget_bytes

    voxels = int(np.prod([int(s) for s in size], dtype=np.float64)) * max(1, int(components))
    need = voxels * 4 * WORKING_COPIES
    budget, how = memory_budget_bytes()
    if need > budget:
        dims = " x ".join(str(int(s)) for s in size) + (f" x {components} channels" if components > 1 else "")
        raise ImageReadError(
            f"{file}: refused, the image is too big: {dims} voxels need about {format_bytes(need)} to process "
            f"({WORKING_COPIES} float32 copies), more than the memory budget of {format_bytes(budget)} ({how}). "
            "Crop or downsample the image first, or raise the budget on a machine with more memory."
        )


def check_finite(data: np.ndarray, file: str | os.PathLike) -> None:
    if not np.all(np.isfinite(data)):
        n = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise ImageReadError(
            f"{file}: {n} voxels are NaN or Inf. Replace them (e.g. with the image minimum) before using samunet."
        )


def as_label_array(arr: np.ndarray, file: str | os.PathLike) -> np.ndarray:
    """Convert a label array to int16, refusing non-integer values."""
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ImageReadError(f"{file}: label map contains NaN/Inf values. Labels must be integers 0, 1, 2, ...")
        rounded = np.rint(arr)
        if np.any(np.abs(rounded - arr) > 1e-3):
            raise ImageReadError(
                f"{file}: label map holds non-integer values (e.g. {arr[np.abs(rounded - arr) > 1e-3].flat[0]!r}). "
                "Labels must be integers; was an image given as a label, or the mask interpolated?"
            )
        arr = rounded
    if arr.size and (arr.min() < 0 or arr.max() > 32767):
        raise ImageReadError(
            f"{file}: label values must lie in 0..32767, found {arr.min()}..{arr.max()}. Renumber the label map "
            "(background 0, labels 1, 2, ...)."
        )
    return arr.astype(np.int16, copy=False)
