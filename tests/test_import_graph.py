"""The package's import graph, read from the code: no import circle between modules and no
module importing a later stage (conversion -> planning -> preprocessing -> SAM/networks ->
training -> inference -> evaluation -> CLI; helpers, paths, image I/O and demo data below all).
Imports inside functions count: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import samunet

ROOT = Path(samunet.__file__).resolve().parent
STAGE = {"utilities": 0, "paths": 0, "demo_data": 0, "imageio": 0, "dataset_conversion": 1,
         "experiment_planning": 2, "preprocessing": 3, "sam": 4, "networks": 4, "training": 5, "inference": 6,
         "evaluation": 7, "run": 8}
# samunet_plan_and_preprocess is one console script over two stages (as nnU-Net's): it plans, then
# preprocesses; nothing imports it but CLIs and tests
ALLOWED_UPWARD = {("samunet.experiment_planning.plan_and_preprocess", "samunet.preprocessing.preprocessor")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        mod = module_name(path)
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        targets = edges.setdefault(mod, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("samunet."))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.startswith("samunet."):
                    # "from samunet.x import y" may import the submodule samunet.x.y
                    subs = [f"{target}.{a.name}" for a in node.names]
                    targets.update(s for s in subs if (ROOT.parent / (s.replace(".", "/") + ".py")).is_file()
                                   or (ROOT.parent / s.replace(".", "/")).is_dir())
                    targets.add(target)
    return edges


def stage_of(mod: str) -> int | None:
    parts = mod.split(".")
    return STAGE.get(parts[1]) if len(parts) > 1 else None


def test_no_module_imports_a_later_stage():
    bad = sorted((a, b) for a, bs in import_edges().items() for b in bs
                 if stage_of(a) is not None and stage_of(b) is not None and stage_of(b) > stage_of(a)
                 and (a, b) not in ALLOWED_UPWARD)
    assert not bad, "imports against the pipeline's direction:\n" + "\n".join(f"{a} -> {b}" for a, b in bad)


def test_no_import_cycles():
    edges = {a: {b for b in bs if b in import_edges_cache} for a, bs in import_edges_cache.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            # a package's __init__ re-exporting its own modules is not a circle between stages
            if len(comp) > 1 and not all(c == comp[0].rsplit(".", 1)[0] or c.startswith(p + ".")
                                         for p in [min(comp, key=len)] for c in comp):
                cycles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_guard_sees_a_violation():
    """The walk finds real edges (a broken walk would pass the checks above vacuously)."""
    edges = import_edges()
    assert "samunet.training.trainer_base" in edges["samunet.training.fold_training"] or \
        any(b.startswith("samunet.training") for b in edges["samunet.training.fold_training"])
    assert "samunet.training.fold_training" in edges["samunet.evaluation.final_validation"]
    assert stage_of("samunet.run.train") > stage_of("samunet.evaluation.final_validation")


import_edges_cache = import_edges()
