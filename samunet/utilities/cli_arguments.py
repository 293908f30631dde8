"""Command-line helpers shared by every console script (the SAM encoder flags live in
:mod:`samunet.sam.cli_arguments`)."""

from __future__ import annotations



def parse_options(pairs: list[str]) -> dict:
    """``["key=value", ...]`` from ``--opt`` -> ``{key: value}``; values parsed as JSON when they are JSON."""
    import json

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--opt {pair!r}: expected KEY=VALUE, e.g. --opt legacy_double_sigmoid=true")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options
