"""Every console script and every flag of its ``--help`` is documented (issue 16).

The console scripts are read from ``pyproject.toml`` (``[project.scripts]``). For each one the
argparse parser is obtained without running the command: ``ArgumentParser.parse_args`` / ``parse_known_args`` are
patched to raise a sentinel carrying the parser, and the entry point is called with an empty argument list. For
each action the primary option (the first ``--long`` option string, or the first option string when there is no
long one) must appear as an exact token somewhere in ``documentation/*.md`` or ``README.md``, and also on the
script's own page: the page(s) whose line in the index ``documentation/README.md`` names the script, so that a
flag described only in passing elsewhere (e.g. ``--part`` in scaling_out.md) does not count for the command's page.
"""

from __future__ import annotations

import argparse
import tomllib
import importlib
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


class _Grab(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__(parser.prog)
        self.parser = parser


def _console_scripts() -> dict[str, str]:
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        return dict(tomllib.load(f)["project"]["scripts"])


def _parser_for(target: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    module_name, func_name = target.split(":")
    module = importlib.import_module(module_name)
    func = getattr(module, func_name)

    def grab(self, *args, **kwargs):
        raise _Grab(self)

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", grab)
        m.setattr(argparse.ArgumentParser, "parse_known_args", grab)
        try:
            func([])
        except _Grab as g:
            return g.parser
    raise AssertionError(f"{target} returned without parsing its arguments")


def _docs_text() -> str:
    pages = sorted((REPO_ROOT / "documentation").glob("*.md")) + [REPO_ROOT / "README.md"]
    return "\n".join(p.read_text(encoding="utf-8") for p in pages)


def _home_pages() -> dict[str, list[Path]]:
    """Script name -> the documentation pages whose index line (documentation/README.md) names it."""
    doc = REPO_ROOT / "documentation"
    homes: dict[str, list[Path]] = {}
    for line in (doc / "README.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"-\s*\[[^\]]+\]\(([\w.-]+\.md)\):(.*)", line.strip())
        if not m or not (doc / m.group(1)).is_file():
            continue
        for name in re.findall(r"`(samunet_\w+)`", m.group(2)):
            homes.setdefault(name, []).append(doc / m.group(1))
    return homes


def _primary_option(action: argparse.Action) -> str:
    longs = [o for o in action.option_strings if o.startswith("--")]
    return longs[0] if longs else action.option_strings[0]


def _documented(token: str, text: str) -> bool:
    return re.search(r"(?<![\w-])" + re.escape(token) + r"(?![\w-])", text) is not None


SCRIPTS = _console_scripts()


def test_pyproject_lists_console_scripts():
    assert len(SCRIPTS) >= 10, SCRIPTS


def test_every_console_script_is_documented():
    text = _docs_text()
    missing = [name for name in SCRIPTS if not _documented(name, text)]
    assert not missing, f"console scripts not mentioned in documentation/*.md or README.md: {missing}"


def _flags(target: str, monkeypatch) -> list[str]:
    parser = _parser_for(target, monkeypatch)
    return [_primary_option(a) for a in parser._actions
            if a.option_strings and not isinstance(a, argparse._HelpAction)]


def _report(missing: dict[str, list[str]]) -> str:
    return "\n".join(f"  {name}: {' '.join(flags)}" for name, flags in missing.items())


def test_every_flag_is_documented(monkeypatch):
    text = _docs_text()
    missing: dict[str, list[str]] = {}
    total = 0
    for name, target in SCRIPTS.items():
        for flag in _flags(target, monkeypatch):
            total += 1
            if not _documented(flag, text):
                missing.setdefault(name, []).append(flag)
    assert total > 0
    n = sum(len(v) for v in missing.values())
    assert not missing, (f"{n} of {total} flags are not documented in documentation/*.md or README.md:\n"
                         + _report(missing))


def test_every_console_script_has_a_page_in_the_index():
    homes = _home_pages()
    missing = [name for name in SCRIPTS if name not in homes]
    assert not missing, f"no line of documentation/README.md names these console scripts (their page): {missing}"


def test_every_flag_is_documented_on_its_scripts_page(monkeypatch):
    homes = _home_pages()
    missing: dict[str, list[str]] = {}
    total = 0
    for name, target in SCRIPTS.items():
        pages = homes.get(name, [])
        text = "\n".join(p.read_text(encoding="utf-8") for p in pages)
        for flag in _flags(target, monkeypatch):
            total += 1
            if not _documented(flag, text):
                missing.setdefault(f"{name} ({', '.join(p.name for p in pages) or 'no page'})", []).append(flag)
    n = sum(len(v) for v in missing.values())
    assert not missing, f"{n} of {total} flags are missing from their script's page:\n" + _report(missing)
