"""The package's layout (issue 12): no import cycle, and the core imports nothing above it.

The import graph is read from the source with ``ast`` (nothing is imported). Only imports that run
when a module is imported count for the cycle check: module-level ones, not those inside a function
(deprecated aliases reach their new home that way, lazily) or under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "eggroll"
CORE = ("strategies._core", "strategies._checks", "strategies.eggroll", "strategies.open_es", "noise", "lowrank")
CORE += ("population", "shaping", "types", "intops")
ABOVE_THE_CORE = ("eggroll.run", "eggroll.apps", "eggroll.commands", "eggroll.cli", "eggroll.problems", "eggroll.llm")


def _modules() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imports(module: str, path: Path, names: dict[str, Path], *, at_import_only: bool) -> set[str]:
    """The package modules ``module`` imports (with ``at_import_only``: those imported when it is)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    found: list[ast.stmt] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append(node)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body), visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body), visit(node.orelse), visit(node.finalbody)
                for handler in node.handlers:
                    visit(handler.body)

    if at_import_only:
        visit(tree.body)
    else:
        found = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    targets = set()
    for node in found:
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
            continue
        base = node.module or ""
        if node.level:
            up = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(up + ([node.module] if node.module else []))
        targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in names else base for a in node.names)
    return {t for t in targets if t in names and t != module}


def test_no_module_imports_itself_back_at_import_time():
    names = _modules()
    graph = {m: _imports(m, p, names, at_import_only=True) for m, p in names.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            assert state.get(target) != 1, "import cycle: " + " -> ".join([*path, module, target])
            if target not in state:
                walk(target, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [])
    assert len(graph) > 60 and graph["eggroll.run.loop"]  # the graph was read (the package's modules and edges)


@pytest.mark.parametrize("core", CORE)
def test_the_core_imports_nothing_of_the_layers_above_it(core):
    """Not even lazily: the strategies' maths does not reach the run loop, the commands, the problems or the LLMs."""
    names = _modules()
    module = f"eggroll.{core}"
    above = sorted(
        t for t in _imports(module, names[module], names, at_import_only=False) if t.startswith(ABOVE_THE_CORE)
    )
    assert not above, f"{module} imports {above}"
