"""The package's layers (README, "Architecture"): what may import what.

Every module of trajreg is parsed (``ast``, nothing is imported but the record-mode
registry). An import counts wherever it is: at module level, inside a function, under
``if TYPE_CHECKING:``. ``from trajreg.x import y`` imports ``trajreg.x.y`` when ``y`` is a
module, else ``trajreg.x``; relative imports are resolved. Importing ``trajreg.x.y`` runs
the ``__init__`` of ``trajreg`` and ``trajreg.x`` too, but only the named module counts
(or every module would import the top-level package).

1. No module imports a module on a higher floor (``FLOORS``).
2. No import cycle between modules (a package's ``__init__`` importing its submodules is
   an edge like any other).
3. Outside ``trajreg/record/`` no record-mode name (``MODE_NAMES``) is compared as a
   string: ``mode == "store"``, ``mode in ("sample", "sketch")``. Ask the mode class
   (``trajreg.record.modes.get_mode``) instead; listing the names through the registry
   (``name not in MODE_NAMES``) is fine.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import trajreg

ROOT = Path(trajreg.__file__).resolve().parent  # trajreg/
PACKAGE = "trajreg"

# floor of each part of the package, bottom to top: a module imports only from its own
# floor or below. The longest matching prefix decides (``trajreg`` alone is the package's
# ``__init__``; a new top-level module must be placed here).
FLOORS = {
    "trajreg.errors": 0, "trajreg.atomic": 0, "trajreg._lazy": 0,  # utilities
    "trajreg.principle": 1,     # the mathematics: pure functions over arrays
    "trajreg.record": 2,        # the recorder, record modes, the trajectory store
    "trajreg.train": 3,         # configs, data, models, optimizers, the training loop
    "trajreg.run": 4,           # one run: runner, analysis, figures, the run directory
    "trajreg.distributed": 5,   # one run on N processes
    "trajreg.integrations": 6,  # sessions, Lightning and Hugging Face callbacks
    "trajreg.checkpoints": 6,   # a finished run measured from its checkpoints
    "trajreg.study": 7,         # grids of runs and their report
    "trajreg.cli": 8, "trajreg.demo": 8, "trajreg.__main__": 8, "trajreg": 8,  # entries
}

# study modules that import each other inside a function on purpose: the report's
# libraries (scipy, matplotlib) and torch load only when a study runs or reports
# (tests/test_imports.py); building the cli's parser must not import torch through the
# config. Any other import between study modules is at module level (no hidden cycle).
STUDY_DEFERRED = {("trajreg.study.cli", "trajreg.study.execute"),
                  ("trajreg.study.cli", "trajreg.study.spec"),
                  ("trajreg.study.cli", "trajreg.study.report"),
                  ("trajreg.study.execute", "trajreg.study.report"),
                  ("trajreg.study.cli", "trajreg.study.findings")}

# string comparisons with a record-mode name that are not about record modes:
# (file relative to trajreg/, the constant). Keep it minimal, each with its reason.
MODE_NAME_ALLOWED: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Import:
    target: str  # the imported module
    line: int
    where: str  # "module level", "in a function", "under TYPE_CHECKING"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


@cache
def tree(name: str) -> ast.Module:
    path = modules()[name]
    return ast.parse(path.read_text(), str(path))


def relpath(name: str) -> str:
    return str(modules()[name].relative_to(ROOT.parent))


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(name: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_package = modules()[name].name == "__init__.py"
    base = name.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


@cache
def imports(name: str) -> tuple[Import, ...]:
    """Every import of a trajreg module by module ``name``."""
    found: list[Import] = []
    known = modules()

    def add(target: str, node: ast.stmt, where: str) -> None:
        if target == PACKAGE or target.startswith(PACKAGE + "."):
            found.append(Import(target, node.lineno, where))

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = where
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                inner = "in a function"
            elif _is_type_checking(child) and where == "module level":
                inner = "under TYPE_CHECKING"
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, child, inner)
            elif isinstance(child, ast.ImportFrom):
                source = _resolve(name, child)
                for alias in child.names:
                    sub = f"{source}.{alias.name}"
                    add(sub if sub in known else source, child, inner)
            visit(child, inner)

    visit(tree(name), "module level")
    return tuple(found)


def floor(name: str) -> int | None:
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in FLOORS and (prefix != PACKAGE or name == PACKAGE):
            return FLOORS[prefix]
    return None


def graph() -> dict[str, dict[str, Import]]:
    """module -> {imported trajreg module: its first import}."""
    known = modules()
    out: dict[str, dict[str, Import]] = {}
    for name in known:
        edges: dict[str, Import] = {}
        for imp in imports(name):
            if imp.target in known and imp.target != name:
                edges.setdefault(imp.target, imp)
        out[name] = edges
    return out


def test_every_module_has_a_floor():
    missing = sorted(name for name in modules() if floor(name) is None)
    assert not missing, f"modules on no floor (add them to FLOORS): {missing}"


def test_no_module_imports_a_higher_floor():
    upward = []
    for name, edges in graph().items():
        mine = floor(name)
        for target, imp in sorted(edges.items()):
            theirs = floor(target)
            if mine is not None and theirs is not None and theirs > mine:
                upward.append(f"{relpath(name)}:{imp.line} ({imp.where}): {name} (floor "
                              f"{mine}) imports {target} (floor {theirs})")
    assert not upward, (f"{len(upward)} upward import(s):\n  " + "\n  ".join(upward))


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return out


def cycles(edges: dict[str, set[str]], component: list[str], cap: int = 1000
           ) -> list[list[str]]:
    """The elementary cycles within one component, each from its smallest module (at
    most ``cap``), shortest first."""
    inside = set(component)
    out: list[list[str]] = []

    def walk(start: str, path: list[str]) -> None:
        for w in sorted(edges[path[-1]] & inside):
            if len(out) >= cap:
                return
            if w == start:
                out.append([*path, start])
            elif w > start and w not in path:
                walk(start, [*path, w])

    for start in component:
        walk(start, [start])
    return sorted(out, key=lambda path: (len(path), path))


SHOWN_CYCLES = 8  # a component's cycles listed in full; its edges are all listed


def test_no_import_cycles():
    g = graph()
    edges = {name: set(targets) for name, targets in g.items()}
    report = []
    for component in strongly_connected(edges):
        found = cycles(edges, component)
        shown = SHOWN_CYCLES
        lines = [f"cycle among {', '.join(component)} ({len(found)} elementary cycles"
                 + (f", the {shown} shortest shown" if len(found) > shown else "") + "):"]
        lines += ["    " + " -> ".join(path) for path in found[:shown]]
        lines.append("  its edges (cutting enough of them breaks every cycle):")
        for name in component:
            for target, imp in sorted(g[name].items()):
                if target in component:
                    lines.append(f"    {relpath(name)}:{imp.line} ({imp.where}): "
                                 f"{name} -> {target}")
        report.append("\n".join(lines))
    assert not report, (f"{len(report)} import cycle(s):\n" + "\n".join(report))


def test_study_modules_import_each_other_at_module_level():
    hidden = []
    for name in modules():
        if not name.startswith("trajreg.study."):
            continue
        for imp in imports(name):
            if (imp.target.startswith("trajreg.study.") and imp.where != "module level"
                    and (name, imp.target) not in STUDY_DEFERRED):
                hidden.append(f"{relpath(name)}:{imp.line}: {name} imports {imp.target} "
                              f"{imp.where} (a hidden cycle? else add it to STUDY_DEFERRED)")
    assert not hidden, "\n".join(hidden)


def _strings(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [e.value for e in node.elts
                if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


def test_record_mode_names_are_not_compared_as_strings_outside_record():
    from trajreg.record.modes import MODE_NAMES

    ops = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)
    found, allowed_used = [], set()
    for name in modules():
        if name == "trajreg.record" or name.startswith("trajreg.record."):
            continue
        rel = str(modules()[name].relative_to(ROOT))
        for node in ast.walk(tree(name)):
            if not isinstance(node, ast.Compare) or not any(isinstance(o, ops)
                                                            for o in node.ops):
                continue
            names = {s for operand in (node.left, *node.comparators)
                     for s in _strings(operand) if s in MODE_NAMES}
            allowed_used |= {(rel, mode) for mode in names if (rel, mode) in MODE_NAME_ALLOWED}
            if any((rel, mode) not in MODE_NAME_ALLOWED for mode in names):
                found.append((relpath(name), node.lineno, ast.unparse(node)))
    unused = MODE_NAME_ALLOWED - allowed_used
    assert not unused, f"stale MODE_NAME_ALLOWED entries: {sorted(unused)}"
    assert not found, (f"{len(found)} record-mode name(s) compared as strings outside "
                       "trajreg/record/ (ask the mode: trajreg.record.modes.get_mode):\n  "
                       + "\n  ".join(f"{f}:{line}: {text}" for f, line, text in sorted(found)))
