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
        raise ImageReadError(f"{file}: label values must lie in 0..32767, found {arr.min()}..{arr.max()}")
    return arr.astype(np.int16, copy=False)
