"""The study package's import structure: no cycles, nothing imported upwards."""

from __future__ import annotations

import ast
from pathlib import Path

import trajreg.study

PACKAGE = Path(trajreg.study.__file__).parent


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import in a file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "trajreg.study":  # from trajreg.study import figures, ...
                out += [(f"trajreg.study.{a.name}", id(node) in top) for a in node.names]
            else:
                out.append((node.module, id(node) in top))
    return out


def modules() -> dict[str, list[tuple[str, bool]]]:
    return {f"trajreg.study.{p.stem}": imports(p) for p in sorted(PACKAGE.glob("*.py"))
            if p.stem != "__init__"}


def test_no_upward_imports():
    for name, deps in modules().items():
        for dep, _ in deps:
            assert dep != "trajreg", f"{name} imports the top-level package (upwards)"
            assert not dep.startswith(("trajreg.cli", "trajreg.integrations")), (name, dep)


# imported inside a function on purpose: the report's libraries (scipy, matplotlib) and
# torch load only when a study runs or reports (tests/test_imports.py); still in the graph
# (the cli's spec: building the parser must not import torch through the config)
DEFERRED = {("trajreg.study.cli", "trajreg.study.execute"),
            ("trajreg.study.cli", "trajreg.study.spec"),
            ("trajreg.study.cli", "trajreg.study.report"),
            ("trajreg.study.execute", "trajreg.study.report")}


def test_study_modules_import_each_other_at_the_top_and_form_no_cycle():
    graph = {}
    for name, deps in modules().items():
        inner = [(d, top) for d, top in deps if d.startswith("trajreg.study.")]
        for dep, top in inner:
            assert top or (name, dep) in DEFERRED, (
                f"{name} imports {dep} inside a function (a hidden cycle?)")
        graph[name] = {d for d, _ in inner if d in modules()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == 1:
            raise AssertionError(f"import cycle: {' -> '.join([*path, node])}")
        if state.get(node) == 2:
            return
        state[node] = 1
        for dep in sorted(graph[node]):
            visit(dep, [*path, node])
        state[node] = 2

    for node in graph:
        visit(node, [])
