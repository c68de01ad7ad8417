"""Layers one way (issue 15, docs/architecture.md): every import inside `tierline/` points down.

Low to high (a module imports its own layer or a lower one, never a higher one or a sibling):

    core      every module directly under tierline/ (errors, jobs, config, schemas, resume, ...)
    ledger    storage and pricing; it takes neutral call facts, never a dispatch type
    dispatch  | tiering    siblings: neither imports the other (the run package joins them)
    testing   | run        testing: FakeBackend on the backend protocol; run: orchestration
    ray       `--engine ray` and `tierline.ray`: the run on a Ray cluster (issue 17)
    cli       the commands, `tierline/__main__.py`

`tierline/__init__.py` is exempt: the package root re-exports the public API. Every import
counts, at module level or inside a function (a lazy import is still a dependency), with
relative imports resolved. Import cycles between modules fail too.

ALLOWED and ALLOWED_CYCLES are empty: issue 15's redesign removed every exception they held.
An exception added while code moves must say why and what removes it; one that no longer
occurs fails the test, so the lists only shrink.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO

PACKAGE = "tierline"

# Layer of each subpackage (by the first name under tierline/) and its rank; equal ranks are
# siblings. A module directly under tierline/ is core (`__main__` runs the CLI: cli).
LAYERS: Mapping[str, int] = {
    "core": 0,
    "ledger": 1,
    "dispatch": 2,
    "tiering": 2,
    "testing": 3,
    "run": 3,
    "ray": 4,
    "cli": 5,
}
EXEMPT = frozenset({PACKAGE})  # the root __init__ re-exports

# (importer, imported) module pairs allowed to break the layering: none.
ALLOWED: frozenset[tuple[str, str]] = frozenset()
# Import cycles allowed (each the set of modules of one strongly connected component): none.
ALLOWED_CYCLES: frozenset[frozenset[str]] = frozenset()
# Nothing in the product may import the test suite or a dev-only package.
DEV_ONLY = ("tests", "pytest", "hypothesis", "yaml", "uvloop", "_pytest")


@dataclass(frozen=True, slots=True)
class Edge:
    importer: str
    imported: str
    line: int

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported} (line {self.line})"


def modules(root: Path, package: str = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package __init__), for every .py under root/package."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The dotted names an import statement may load, relative ones made absolute."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        parent = module.split(".")[: None if is_package else -1]
        parent = parent[: len(parent) - (node.level - 1)]
        base = ".".join([*parent, *([node.module] if node.module else [])])
    # `from pkg import name`: name may be a submodule (counted as such) or an attribute of pkg.
    for alias in node.names:
        yield f"{base}.{alias.name}"


def imports(root: Path, package: str = PACKAGE) -> tuple[dict[str, list[Edge]], list[Edge]]:
    """Every module's imports of other modules of the package, and its imports from outside."""
    known = modules(root, package)
    edges: dict[str, list[Edge]] = {name: [] for name in known}
    outside: list[Edge] = []
    for name, (path, is_package) in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):  # walk: imports inside functions count too
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _targets(name, is_package, node):
                resolved = target
                while resolved and resolved not in known:
                    resolved = resolved.rpartition(".")[0]
                if not resolved:
                    outside.append(Edge(name, target, node.lineno))
                elif resolved != name:
                    edges[name].append(Edge(name, resolved, node.lineno))
    return edges, outside


def layer(module: str) -> str | None:
    """The layer a module belongs to; None for the exempt package root or an unknown package."""
    if module in EXEMPT:
        return None
    parts = module.split(".")
    if parts[1] == "__main__":  # `python -m tierline` runs the CLI
        return "cli"
    if parts[1] in LAYERS and parts[1] != "core":
        return parts[1]
    return (
        "core" if len(parts) == 2 else None
    )  # tierline/x.py is core; tierline/x/y.py must be placed


def violations(edges: Mapping[str, list[Edge]]) -> list[Edge]:
    """Edges to a higher layer or to a sibling layer."""
    bad = []
    for importer, out in edges.items():
        mine = layer(importer)
        for edge in out:
            theirs = layer(edge.imported)
            if mine is None or theirs is None or mine == theirs:
                continue
            if LAYERS[theirs] >= LAYERS[mine]:
                bad.append(edge)
    return bad


def cycles(edges: Mapping[str, list[Edge]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    graph = {name: sorted({e.imported for e in out}) for name, out in edges.items()}
    counter = itertools.count()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = next(counter)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = next(counter)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


EDGES, OUTSIDE = imports(REPO)


def test_every_module_has_a_layer() -> None:
    """A new subpackage must say where it sits (LAYERS here, and docs/architecture.md)."""
    unplaced = [m for m in EDGES if m not in EXEMPT and layer(m) is None]
    assert not unplaced, f"modules in no layer (add their package to LAYERS): {unplaced}"


def test_imports_point_down() -> None:
    bad = [e for e in violations(EDGES) if (e.importer, e.imported) not in ALLOWED]
    assert not bad, "imports of a higher or sibling layer:\n" + "\n".join(map(str, bad))


def test_allowed_exceptions_still_exist() -> None:
    """An exception that no longer occurs comes off the list, so the list only shrinks."""
    present = {(e.importer, e.imported) for e in violations(EDGES)}
    stale = sorted(ALLOWED - present)
    assert not stale, f"remove these from ALLOWED in tests/test_layers.py: {stale}"
    stale_cycles = [sorted(c) for c in ALLOWED_CYCLES - set(cycles(EDGES))]
    assert not stale_cycles, f"remove these from ALLOWED_CYCLES: {stale_cycles}"


def test_no_import_cycles() -> None:
    found = [sorted(c) for c in cycles(EDGES) if c not in ALLOWED_CYCLES]
    assert not found, f"import cycles: {found}"


def test_product_imports_no_test_code_or_dev_package() -> None:
    """The fakes live under tests/ and need dev-only packages; the wheel must not need them."""
    leaks = [str(e) for e in OUTSIDE if e.imported.split(".")[0] in DEV_ONLY]
    assert not leaks, f"tierline imports test code or dev-only packages: {leaks}"


def test_checker_sees_relative_lazy_and_cyclic_imports(tmp_path: Path) -> None:
    """The checker itself: on a small package, a relative import inside a function that points
    up, a sibling import and a cycle are all found."""
    files = {
        "__init__.py": "from .cli import main\n",
        "errors.py": "",
        "ledger/__init__.py": "",
        "ledger/store.py": "from ..errors import x\n\ndef f():\n    from ..dispatch import router\n",
        "dispatch/__init__.py": "",
        "dispatch/router.py": "from ..tiering.vote import Vote\nfrom . import probe\n",
        "dispatch/probe.py": "import tierline.dispatch.router\n",
        "tiering/__init__.py": "",
        "tiering/vote.py": "from tierline.ledger import store\nimport yaml\n",
        "cli/__init__.py": "from ..dispatch.router import run\n",
    }
    for name, text in files.items():
        path = tmp_path / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    edges, outside = imports(tmp_path)
    assert sorted(map(str, violations(edges))) == [
        "tierline.dispatch.router -> tierline.tiering.vote (line 1)",
        "tierline.ledger.store -> tierline.dispatch.router (line 4)",
    ]
    assert {e.imported for e in edges["tierline.dispatch.router"]} == {
        "tierline.tiering.vote",
        "tierline.dispatch.probe",
    }
    # router -> probe -> router, and router -> vote -> store -> router: one component
    assert cycles(edges) == [
        frozenset(
            {
                "tierline.dispatch.probe",
                "tierline.dispatch.router",
                "tierline.ledger.store",
                "tierline.tiering.vote",
            }
        )
    ]
    assert [str(e) for e in outside] == ["tierline.tiering.vote -> yaml (line 2)"]
    assert [layer(m) for m in ("tierline.errors", "tierline.dispatch", "tierline.__main__")] == [
        "core",
        "dispatch",
        "cli",
    ]
    assert layer("tierline.newpkg.mod") is None  # a new subpackage must be placed
