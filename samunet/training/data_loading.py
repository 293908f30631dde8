"""2D slice batches from preprocessed cases, with foreground oversampling.

Cases are unpacked once from ``CASE.npz`` to ``CASE.data.npy`` / ``CASE.seg.npy`` and
memory-mapped, so a large dataset never has to fit in RAM. All randomness comes from
the ``numpy.random.Generator`` passed in, which the trainer checkpoints: a resumed run
draws exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from samunet.utilities.file_io import atomic_path, load_json, load_npz

logger = logging.getLogger(__name__)


def _npy_is_complete(path: Path) -> bool:
    """The ``.npy`` header parses and the file holds all the bytes it announces."""
    try:
        np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError):
        return False
    return True


def unpack_case(folder: Path, case: str) -> None:
    """Write ``CASE.data.npy`` and ``CASE.seg.npy`` beside ``CASE.npz`` unless up to date."""
    npz = folder / f"{case}.npz"
    targets = [folder / f"{case}.data.npy", folder / f"{case}.seg.npy"]
    if all(t.is_file() and t.stat().st_mtime_ns >= npz.stat().st_mtime_ns and _npy_is_complete(t) for t in targets):
        return
    arrays = load_npz(npz)
    for key, target in zip(("data", "seg"), targets):
        if key in arrays:
            with atomic_path(target, suffix=".npy") as tmp:
                np.save(tmp, arrays[key])


class SliceDataset:
    """Random 2D patches ``(C, *patch)`` / ``(1, *patch)`` drawn from preprocessed cases."""

    def __init__(self, folder: str | Path, cases: list[str], patch_size: tuple[int, int],
                 foreground_labels: list[int], oversample_foreground: float = 0.33):
        self.folder = Path(folder)
        self.cases = sorted(cases)
        if not self.cases:
            raise ValueError("no cases to train on")
        missing = [c for c in self.cases if not (self.folder / f"{c}.json").is_file()]
        if missing:
            raise FileNotFoundError(
                f"preprocessed cases missing in {self.folder}: {missing[:5]}{'...' if len(missing) > 5 else ''}. "
                "Run samunet_plan_and_preprocess first."
            )
        self.patch_size = tuple(int(p) for p in patch_size)
        self.foreground_labels = [int(v) for v in foreground_labels]
        self.oversample_foreground = oversample_foreground
        self.props = {}
        for c in self.cases:
            unpack_case(self.folder, c)
            self.props[c] = load_json(self.folder / f"{c}.json")
        self._data, self._seg = {}, {}

    def arrays(self, case: str) -> tuple[np.ndarray, np.ndarray]:
        if case not in self._data:
            self._data[case] = np.load(self.folder / f"{case}.data.npy", mmap_mode="r")
            self._seg[case] = np.load(self.folder / f"{case}.seg.npy", mmap_mode="r")
        return self._data[case], self._seg[case]

    def _pick_slice(self, case: str, rng: np.random.Generator, force_fg: bool) -> tuple[int, int | None]:
        data, _ = self.arrays(case)
        if force_fg:
            swl = self.props[case].get("slices_with_label", {})
            present = [int(v) for v in self.foreground_labels if swl.get(str(v))]
            if present:
                label = present[rng.integers(len(present))]
                slices = swl[str(label)]
                return int(slices[rng.integers(len(slices))]), label
        return int(rng.integers(data.shape[1])), None

    def sample(self, rng: np.random.Generator, force_fg: bool) -> tuple[np.ndarray, np.ndarray, str, int]:
        case = self.cases[rng.integers(len(self.cases))]
        z, label = self._pick_slice(case, rng, force_fg)
        data, seg = self.arrays(case)
        img = np.asarray(data[:, z], dtype=np.float32)
        lab = np.asarray(seg[:, z], dtype=np.int16)
        img, lab = self._crop(img, lab, rng, label)
        return img, lab, case, z

    def _crop(self, img, lab, rng, label):
        """Crop/pad ``(C, Y, X)`` to the patch; with ``label``, the patch holds one of its pixels."""
        shape = np.array(img.shape[1:])
        patch = np.array(self.patch_size)
        pad = np.maximum(patch - shape, 0)
        if pad.any():
            widths = [(0, 0)] + [(int(p) // 2, int(p) - int(p) // 2) for p in pad]
            img = np.pad(img, widths)
            lab = np.pad(lab, widths)
            shape = np.array(img.shape[1:])
        hi = shape - patch  # inclusive upper bound of the patch origin
        if label is not None:
            ys, xs = np.nonzero(lab[0] == label)
            if len(ys):
                i = rng.integers(len(ys))
                centre = np.array([ys[i], xs[i]])
                lo_o = np.maximum(centre - patch + 1, 0)
                hi_o = np.minimum(centre, hi)
                origin = np.array([rng.integers(a, b + 1) for a, b in zip(lo_o, hi_o)])
            else:
                origin = np.array([rng.integers(0, h + 1) for h in hi])
        else:
            origin = np.array([rng.integers(0, h + 1) for h in hi])
        sl = (slice(None),) + tuple(slice(o, o + p) for o, p in zip(origin, patch))
        return img[sl], lab[sl]

    def batch(self, batch_size: int, rng: np.random.Generator) -> dict:
        """``{"data": (B, C, *patch) float32, "seg": (B, 1, *patch) int16, "keys": [...]}``.

        At least ``round(B * oversample_foreground)`` (min 1 when > 0) items hold foreground.
        """
        n_fg = int(round(batch_size * self.oversample_foreground))
        if self.oversample_foreground > 0:
            n_fg = max(1, n_fg)
        imgs, labs, keys = [], [], []
        for i in range(batch_size):
            img, lab, case, z = self.sample(rng, force_fg=i >= batch_size - n_fg)
            imgs.append(img)
            labs.append(lab)
            keys.append(f"{case}:{z}")
        return {"data": np.stack(imgs), "seg": np.stack(labs), "keys": keys}
