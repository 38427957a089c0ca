"""The layering rule of docs/architecture.md, read from the code with ``ast``.

Every import counts: module level, inside functions, relative ones, and the dynamic ones a registry
names as a string (``"editors.methods.ft_llm:FTLLM"``, ``kebench_hf.cli.COMMAND_MODULES``).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: our top-level packages; any other import is a third-party or standard-library one
PACKAGES = ("kebench_hf", "editors", "metric", "dataset_script")
#: the kebench_hf modules that hold data, the generated world and the hub: they never reach the editors
DATA_SIDE = ("kebench_hf.builder", "kebench_hf.release", "kebench_hf.schema", "kebench_hf.export",
             "kebench_hf.data_commands", "kebench_hf.hub", "kebench_hf.paths", "kebench_hf.constants",
             "kebench_hf.errors", "kebench_hf.world", "kebench_hf.construct", "kebench_hf.testing")


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int

    def __str__(self) -> str:
        return f"{module_path(self.source)}:{self.line} imports {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of our packages: dotted name -> file."""
    return {module_name(path): path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))
            if ".ipynb_checkpoints" not in path.parts}


def module_path(name: str) -> str:
    return str(modules()[name].relative_to(REPO))


def _ours(dotted: str) -> str | None:
    """The most specific of our modules that ``dotted`` names (``a.b.C`` -> ``a.b``), or None."""
    parts = dotted.split(".")
    while parts:
        if ".".join(parts) in modules():
            return ".".join(parts)
        parts.pop()
    return None


def _resolve_from(node: ast.ImportFrom, source: str) -> list[str]:
    if node.level:
        package = source if modules()[source].name == "__init__.py" else source.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    # ``from pkg import sub`` imports the submodule pkg.sub where there is one, else names of pkg
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules() else base for alias in node.names]


@cache
def imports() -> tuple[Import, ...]:
    found = []
    for source, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = _resolve_from(node, source)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.count(" ") == 0 \
                    and any(mark in node.value for mark in ".:"):
                # a registry entry: "package.module" or "module:Attribute" naming one of our modules exactly
                # (a bare "editors" is a folder name, e.g. the trained editors' cache directory)
                names = [node.value.partition(":")[0]] if node.value.partition(":")[0] in modules() else []
            else:
                continue
            for name in names:
                target = _ours(name)
                if target is not None and target != source:
                    found.append(Import(source, target, node.lineno))
    return tuple(found)


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in modules()}
    for edge in imports():
        edges[edge.source].add(edge.target)
    return edges


def in_package(name: str, *packages: str) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in edges[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_reader_sees_every_kind_of_import():
    """The rules below are only as good as the reader: check it on imports we know are there."""
    edges = {(edge.source, edge.target) for edge in imports()}
    assert ("kebench_hf.export", "dataset_script") in edges                      # module level
    assert ("editors.commands", "editors.pretrain") in edges                     # inside a function
    assert ("kebench_hf.cli", "editors.commands") in edges                       # COMMAND_MODULES string
    assert ("editors.methods", "editors.methods.ft_llm") in edges                # METHODS registry string
    assert ("editors.methods", "editors.methods.base") in edges                  # under TYPE_CHECKING
    assert ("kebench_hf.world.build", "kebench_hf.construct.pipeline") in edges  # from ..construct.pipeline
    assert ("kebench_hf.world", "kebench_hf.world.build") in edges               # from .build, in __init__


def test_metric_imports_nothing_of_ours():
    """metric/ is pushed to the hub as a Space on its own: it may import only itself."""
    bad = [str(edge) for edge in imports() if in_package(edge.source, "metric") and not in_package(edge.target, "metric")]
    assert bad == []


def test_the_data_side_never_reaches_the_editors():
    """Data, world, hub and construction modules do not import editors, not even through another module."""
    edges, bad = graph(), []
    for start in (name for name in modules() if in_package(name, *DATA_SIDE)):
        seen, todo = {start}, [start]
        while todo:
            for successor in edges[todo.pop()] - seen:
                seen.add(successor)
                todo.append(successor)
        bad += [f"{module_path(start)} reaches {name}" for name in sorted(seen) if in_package(name, "editors")]
    assert bad == []


def test_only_the_cli_reaches_the_editors():
    """In kebench_hf, kebench_hf.cli is the one module importing editors (through COMMAND_MODULES)."""
    bad = [str(edge) for edge in imports() if in_package(edge.source, "kebench_hf")
           and edge.source != "kebench_hf.cli" and in_package(edge.target, "editors")]
    assert bad == []


def test_no_import_cycles():
    found = cycles(graph())
    within = [str(edge) for edge in imports() if any({edge.source, edge.target} <= set(cycle) for cycle in found)]
    assert found == [], within


def test_a_cycle_is_found():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(edges) == [["a", "b", "c"]]


@pytest.mark.parametrize("rule", ["metric", "cli"])
def test_the_rules_can_fail(rule, monkeypatch):
    """A violation planted in the import list is caught (the rules are not vacuous)."""
    planted = {"metric": Import("metric.kebench", "kebench_hf.schema", 1),
               "cli": Import("kebench_hf.hub", "editors.run", 1)}[rule]
    real = imports()
    monkeypatch.setitem(globals(), "imports", lambda: (*real, planted))
    check = {"metric": test_metric_imports_nothing_of_ours, "cli": test_only_the_cli_reaches_the_editors}[rule]
    with pytest.raises(AssertionError, match=planted.target):
        check()
