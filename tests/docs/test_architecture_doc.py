"""docs/architecture.md names real things: every path it names exists, every class (and
`Class.attribute`) it names is defined under tierline/, so is every dotted name in its
diagrams, and every subpackage and layer is on it."""

from __future__ import annotations

import ast
import re

from tests.conftest import REPO
from tests.test_layers import LAYERS

DOC = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
CODE = re.findall(r"`([^`\n]+)`", DOC)
PATH = re.compile(r"^(tierline|tests|docs|scripts|benchmarks|examples)/[\w./-]*$")
CLASS = re.compile(r"^([A-Z][A-Za-z]+)(?:\.(\w+))?$")
DIAGRAMS = re.findall(r"```\n(.*?)```", DOC, flags=re.DOTALL)
DOTTED = re.compile(r"\b[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+\b")
FILES = re.compile(r"\.(jsonl|partial|py|md|toml|db)\b")


def defined_names() -> set[str]:
    """Classes, functions, methods, properties and assigned names of every tierline module."""
    names: set[str] = set()
    for path in (REPO / "tierline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(node.name)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def test_named_paths_exist() -> None:
    paths = [c for c in CODE if PATH.match(c)]
    assert len(paths) > 10, "the page names modules by their paths"
    missing = [p for p in paths if not (REPO / p).exists()]
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_named_classes_exist() -> None:
    names = defined_names()
    named = [m.groups() for c in CODE if (m := CLASS.match(c))]
    assert named, "the page names the types a newcomer meets"
    missing = [".".join(filter(None, g)) for g in named if not set(filter(None, g)) <= names]
    assert not missing, f"docs/architecture.md names things tierline does not define: {missing}"


def test_dotted_names_in_the_diagrams_exist() -> None:
    """`jobs.read_jobs`, `Router.dispatch`, ...: each part is a tierline module or a name
    defined in one, so the path of one job follows the code when it moves."""
    modules = (
        {"tierline"}
        | {p.stem for p in (REPO / "tierline").rglob("*.py")}
        | {p.name for p in (REPO / "tierline").rglob("*") if p.is_dir()}
    )
    known = defined_names() | modules
    dotted = [t for d in DIAGRAMS for t in DOTTED.findall(d) if not FILES.search(t)]
    assert len(dotted) > 5, "the diagrams name the functions a job passes through"
    missing = [t for t in dotted if not set(t.split(".")) <= known]
    assert not missing, f"docs/architecture.md's diagrams name things that do not exist: {missing}"


def test_every_subpackage_and_layer_is_on_the_page() -> None:
    packages = sorted(p.parent.name for p in (REPO / "tierline").glob("*/__init__.py"))
    absent = [p for p in packages if f"tierline/{p}/" not in DOC]
    assert not absent, f"subpackages docs/architecture.md does not place: {absent}"
    layers = [name for name in LAYERS if not re.search(rf"\b{name}\b", DOC)]
    assert not layers, f"layers of tests/test_layers.py missing from the page: {layers}"
