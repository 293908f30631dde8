"""Resolve a dataset given by ID (``501``) or full name (``Dataset501_Prostate``)."""

from __future__ import annotations

import re
from pathlib import Path

from samunet.paths import preprocessed_root, raw_root, results_root

_NAME = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9_\-]+)$")


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 0 <= int(dataset_id) <= 999:
        raise ValueError(f"dataset id must be between 0 and 999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise ValueError(f"dataset name {name!r} may contain only letters, digits, '_' and '-'")
    return f"Dataset{int(dataset_id):03d}_{name}"


def parse_dataset_name(folder_name: str) -> tuple[int, str]:
    m = _NAME.match(folder_name)
    if not m:
        raise ValueError(f"{folder_name!r} is not a dataset folder name (expected DatasetXXX_Name)")
    return int(m.group(1)), m.group(2)


def _candidates(dataset_id: int) -> set[str]:
    prefix = f"Dataset{dataset_id:03d}_"
    names: set[str] = set()
    # results too: an installed model's dataset may exist nowhere else on this machine
    for root in (raw_root(), preprocessed_root(), results_root()):
        if root.is_dir():
            names.update(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix))
    return names


def resolve_dataset(dataset: str | int) -> str:
    """Return the full ``DatasetXXX_Name`` for an ID or name.

    Looks in the raw, preprocessed and results roots. Raises ``FileNotFoundError`` with the
    roots searched, or ``ValueError`` if an ID matches several names.
    """
    text = str(dataset).strip()
    if _NAME.match(text):
        return text
    if not text.isdigit():
        raise ValueError(f"dataset must be an ID like 501 or a name like Dataset501_Prostate, got {text!r}")
    names = _candidates(int(text))
    if not names:
        raise FileNotFoundError(
            f"no dataset with ID {int(text)} in SAMUNET_raw ({raw_root()}), SAMUNET_preprocessed "
            f"({preprocessed_root()}) or SAMUNET_results ({results_root()}). Convert one first (samunet_convert_nifti_pairs / "
            f"samunet_convert_2d_folder) or set the SAMUNET_raw environment variable."
        )
    if len(names) > 1:
        raise ValueError(
            f"dataset ID {int(text)} is ambiguous: {sorted(names)}. Pass the full name or remove one."
        )
    return names.pop()


def raw_dataset_folder(dataset: str | int) -> Path:
    return raw_root() / resolve_dataset(dataset)


def preprocessed_dataset_folder(dataset: str | int) -> Path:
    return preprocessed_root() / resolve_dataset(dataset)
