"""The package's layout: mmcore's modules import each other without a cycle, and what moved stays moved.

A cycle means two modules are really one, and which of them imports first decides whether the other
sees a half-initialised module; a function-level import only hides it until that function runs, so
both kinds count. Imports under `if TYPE_CHECKING:` never run and are left out.
"""
from __future__ import annotations

import ast
from pathlib import Path

from mmcore.bench import BENCHMARKS
from tests.conftest import ROOT

PACKAGE = ROOT / "mmcore"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def typing_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at module level or in a function, but not under `if TYPE_CHECKING:`."""
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and typing_only(node):
            todo.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return found


def imported(path: Path, modules: set[str]) -> set[str]:
    """The mmcore modules one file imports: `from a.b import c` names a.b.c when that is a module, else a.b."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    out = set()
    for node in import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
            continue
        base = node.module or ""
        if node.level:
            base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1], *filter(None, [base])])
        out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return out & modules


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imported(path, set(files)) - {name} for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while not part or part[-1] != v:
                part.append(stack.pop())
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_mmcore_has_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 50 and graph["mmcore.stages.train"], "the graph was not built"
    found = cycles(graph)
    assert not found, "import cycles (move what both need down into a module both import):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_generator_and_the_benchmarks_live_in_their_packages() -> None:
    left = sorted(str(p.relative_to(ROOT)) for p in [*PACKAGE.glob("bench*.py"), *PACKAGE.glob("synth*.py"),
                                                     *(PACKAGE / "data").glob("synth*.py"),
                                                     *(PACKAGE / "data").glob("bench*.py")])
    assert not left, f"modules at their old places (now mmcore/bench/, mmcore/synth/): {left}"
    assert all((PACKAGE / "bench" / f"{name}.py").is_file() for name in BENCHMARKS)
    assert (PACKAGE / "synth" / "__main__.py").is_file() and (PACKAGE / "bench" / "__main__.py").is_file()
