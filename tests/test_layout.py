"""The package layout holds: the import graph (read with `ast`, nothing imported), pyproject's package list, ruff, mypy.

Rules of the import graph (module-level imports; `if TYPE_CHECKING:` blocks are not imports at run time):
- herd.api has no import cycle.
- herd.workers never imports herd.api, not even inside a function.
- The package root (everything in the shared/ folder) imports neither side, not even inside a function, except the
  entry points (ENTRY_POINTS: the CLI and its client verbs, `python -m herd`, the supervisor), which compose the two.
- The wire types (herd.api.wire.*) are imported only by the modules at the HTTP edge (WIRE_USERS).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PACKAGE_DIRS: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]  # herd -> shared, herd.api -> api, ...

ENTRY_POINTS = {
    "herd.__main__",
    "herd.cli",
    "herd.supervisor",
    # `herd create -f` reads the Modelfile with the server's parser (models.modelfile); `herd run URL` names the model
    # as a pull stores it (models.pull)
    "herd.client.transfer",
}

# Who may import herd.api.wire.*: a module name, or a package followed by ".*" for everything in it.
WIRE_USERS = {
    "herd.api.translate.*": "wire types in, internal types out, and back",
    "herd.api.routes.*": "controllers decode requests and return replies",
    "herd.api.batches.*": "the batch runner reads and writes request and reply lines",
    "herd.api.models.*": "model management speaks the Ollama and OpenAI model-list shapes",
    "herd.api.errors": "the error table renders OpenAI and Ollama error bodies",
    "herd.api.wire.*": "the wire types themselves",
    # Present offenders, kept so the list tells the truth (each is a candidate to tighten):
    "herd.api.error_handlers": "renders Litestar's own exceptions as OpenAI / Ollama error bodies",
    "herd.api.edge.origins": "refuses a foreign Origin with an OpenAI / Ollama error body",
    "herd.api.openapi": "publishes the wire types as the OpenAPI document's schemas",
    "herd.api.files.records": "stores Batch and FileObject records as their wire shape",
}


@dataclass(frozen=True, slots=True)
class Import:
    source: str
    target: str
    line: int
    lazy: bool  # inside a function body: runs when called, not when the module is imported

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} (line {self.line}{', in a function' if self.lazy else ''})"


def module_files() -> dict[str, Path]:
    """Every module of the installed package `herd`, by its import name, from pyproject's package-dir: the .py files
    of each folder that has an __init__.py, walking down through such folders only (a folder without one, such as a
    web page's sources with a build script in it, is not part of the package)."""
    modules: dict[str, Path] = {}

    def walk(package: str, folder: Path) -> None:
        for path in sorted(folder.iterdir()):
            if path.is_dir() and (path / "__init__.py").is_file():
                walk(f"{package}.{path.name}", path)
            elif path.suffix == ".py":
                modules[package if path.name == "__init__.py" else f"{package}.{path.stem}"] = path

    for package, folder in PACKAGE_DIRS.items():
        walk(package, REPO / folder)
    return modules


MODULES = module_files()


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str) -> list[Import]:
    """The herd.* modules `name` imports (`from pkg import module` counts as importing the module)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def add(node: ast.Import | ast.ImportFrom, lazy: bool) -> None:
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([node.module] if node.module else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        found.extend(Import(name, t, node.lineno, lazy) for t in targets if t == "herd" or t.startswith("herd."))

    def visit(body: list[ast.stmt], lazy: bool) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                add(node, lazy)
            elif isinstance(node, ast.If) and _type_checking(node):
                visit(node.orelse, lazy)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(node.body, True)
            else:
                for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                    for child in getattr(node, field, None) or []:
                        visit(child.body if isinstance(child, ast.ExceptHandler | ast.match_case) else [child], lazy)

    visit(ast.parse(path.read_text(), str(path)).body, lazy=False)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def _inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _wire_user(name: str) -> bool:
    return any(_inside(name, key[:-2]) if key.endswith(".*") else name == key for key in WIRE_USERS)


def find_cycle(edges: dict[str, list[Import]]) -> list[Import] | None:
    """One import cycle among `edges` (depth-first search), as the imports that close it; None when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[Import] = []

    def walk(node: str) -> list[Import] | None:
        state[node] = 1
        for edge in edges.get(node, []):
            if state.get(edge.target) == 1:
                start = next((i for i, e in enumerate(path) if e.source == edge.target), len(path))
                return [*path[start:], edge]
            if edge.target not in state:
                path.append(edge)
                cycle = walk(edge.target)
                if cycle is not None:
                    return cycle
                path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := walk(start)) is not None:
            return cycle
    return None


def test_the_graph_is_read() -> None:
    # The checks below are only as good as the graph: it must see the imports we know are there.
    assert {"herd", "herd.api.gateway", "herd.workers.batcher", "herd.api.wire.openai"} <= MODULES.keys()
    targets = {i.target for i in GRAPH["herd.workers.batcher"]}
    assert {"herd.inference", "herd.workers.slots"} <= targets
    assert any(i.target.startswith("herd.api.wire") for i in GRAPH["herd.api.translate.openai_requests"])


def test_no_import_cycle_in_api() -> None:
    api = {
        name: [i for i in imports if not i.lazy and _inside(i.target, "herd.api")]
        for name, imports in GRAPH.items()
        if _inside(name, "herd.api")
    }
    cycle = find_cycle(api)
    assert cycle is None, "import cycle in herd.api:\n  " + "\n  ".join(map(str, cycle or []))


def test_find_cycle_reports_a_cycle() -> None:
    edges = {"a": [Import("a", "b", 1, False)], "b": [Import("b", "c", 2, False)], "c": [Import("c", "a", 3, False)]}
    cycle = find_cycle(edges)
    assert cycle is not None and [e.source for e in cycle] == ["a", "b", "c"] and cycle[-1].target == "a"
    assert find_cycle({"a": [Import("a", "b", 1, False)], "b": []}) is None


def test_workers_never_import_the_api() -> None:
    bad = [i for name, imports in GRAPH.items() if _inside(name, "herd.workers") for i in imports]
    bad = [i for i in bad if _inside(i.target, "herd.api")]
    assert not bad, "herd.workers imports herd.api:\n  " + "\n  ".join(map(str, bad))


def test_root_imports_neither_side_outside_the_entry_points() -> None:
    root = [name for name, path in MODULES.items() if path.is_relative_to(REPO / PACKAGE_DIRS["herd"])]
    assert "herd.config" in root and "herd.api" not in root
    bad = [
        i
        for name in root
        if name not in ENTRY_POINTS
        for i in GRAPH[name]
        if _inside(i.target, "herd.api") or _inside(i.target, "herd.workers")
    ]
    assert not bad, "the package root imports a side:\n  " + "\n  ".join(map(str, bad))
    assert MODULES.keys() >= ENTRY_POINTS, f"entry points gone: {ENTRY_POINTS - MODULES.keys()}; update ENTRY_POINTS"


def test_wire_types_are_imported_only_at_the_edge() -> None:
    bad = [
        i
        for name, imports in GRAPH.items()
        if not _wire_user(name)
        for i in imports
        if _inside(i.target, "herd.api.wire")
    ]
    assert not bad, "wire types imported outside WIRE_USERS:\n  " + "\n  ".join(map(str, bad))
    unused = [
        key
        for key in WIRE_USERS
        if not key.endswith(".*") and not any(_inside(i.target, "herd.api.wire") for i in GRAPH.get(key, []))
    ]
    assert not unused, f"WIRE_USERS names modules that no longer import wire types (remove them): {unused}"


def test_every_package_is_listed_in_pyproject() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert found - listed == set(), f"packages missing from pyproject.toml's packages: {sorted(found - listed)}"
    assert listed - found == set(), f"pyproject.toml lists packages that do not exist: {sorted(listed - found)}"


def _tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def test_ruff_check() -> None:
    done = subprocess.run([_tool("ruff"), "check", "."], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format() -> None:
    done = subprocess.run(
        [_tool("ruff"), "format", "--check", "."], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_mypy_strict() -> None:
    """mypy --strict over the package herd (.ci/typecheck; ~30-60 s with a cold cache, seconds after)."""
    done = subprocess.run(
        ["bash", str(REPO / ".ci" / "typecheck")], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout
