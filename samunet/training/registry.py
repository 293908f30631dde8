"""Find a trainer class by name (``-tr``).

Searched: every module under ``samunet.training.trainers``, then every ``.py`` file in
the folders listed in the environment variable ``SAMUNET_TRAINER_PATHS``
(``os.pathsep``-separated), so users add trainers without touching the package.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pkgutil
import sys
from pathlib import Path

import samunet.training.trainers as builtin_trainers


def _classes_in(module) -> dict[str, type]:
    from samunet.training.trainer_base import BaseTrainer

    return {
        n: c for n, c in inspect.getmembers(module, inspect.isclass)
        if issubclass(c, BaseTrainer) and c.__module__ == module.__name__
    }


def available_trainers() -> dict[str, type]:
    found: dict[str, type] = {}
    for info in pkgutil.walk_packages(builtin_trainers.__path__, builtin_trainers.__name__ + "."):
        found.update(_classes_in(importlib.import_module(info.name)))
    for folder in filter(None, os.environ.get("SAMUNET_TRAINER_PATHS", "").split(os.pathsep)):
        for f in sorted(Path(folder).glob("*.py")):
            name = f"samunet_user_trainers.{f.stem}"
            if name not in sys.modules:
                spec = importlib.util.spec_from_file_location(name, f)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
            found.update(_classes_in(sys.modules[name]))
    return found


def find_trainer(name: str) -> type:
    trainers = available_trainers()
    if name not in trainers:
        raise KeyError(
            f"no trainer named {name!r}. Available: {', '.join(sorted(trainers))}. "
            "Your own trainers are found in folders listed in SAMUNET_TRAINER_PATHS."
        )
    return trainers[name]
