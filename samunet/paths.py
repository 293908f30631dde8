"""The three data roots.

Each root comes from an environment variable and falls back to a folder under
``~/samunet_data`` so that a first run needs no configuration:

=====================  ===================================
variable               default
=====================  ===================================
``SAMUNET_raw``        ``~/samunet_data/SAMUNET_raw``
``SAMUNET_preprocessed`` ``~/samunet_data/SAMUNET_preprocessed``
``SAMUNET_results``    ``~/samunet_data/SAMUNET_results``
=====================  ===================================

The variables are read at call time (never at import), so tests and scripts can
change them with ``os.environ`` at any point.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_BASE = Path("~/samunet_data")


def _root(variable: str) -> Path:
    value = os.environ.get(variable)
    if value:
        return Path(value).expanduser()
    return (DEFAULT_BASE / variable).expanduser()


def raw_root() -> Path:
    """Folder holding ``DatasetXXX_Name`` raw datasets."""
    return _root("SAMUNET_raw")


def preprocessed_root() -> Path:
    """Folder holding fingerprints, plans, splits and preprocessed cases."""
    return _root("SAMUNET_preprocessed")


def results_root() -> Path:
    """Folder holding trained models and their validation output."""
    return _root("SAMUNET_results")
