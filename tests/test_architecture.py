"""The import layers of the house (docs/interfaces.md, "Import layers"), checked on the source.

The import graph is built with `ast` from every module of the house's packages, counting every
import statement wherever it stands (module level, inside a function, under TYPE_CHECKING): a
lazy import is still an arrow between two concepts. The rules:

- no import cycle between modules;
- the core (`fusionguard`) imports none of the subsystems, nor names one as a "module:attr"
  string to load (subcommands arrive through the `fusionguard.commands` entry points);
- the core, `gate` and `monitor` never reach torch: they import neither torch nor `training`,
  `export` or `recipes` (which need it);
- `export` does not import `training` (a checkpoint is loaded by `fusionguard.recipes.exporting`);
- no library package imports `recipes`, the layer that wires them together;
- nothing imports a subsystem by a bare top-level name (`gate`): the subsystems' folders install
  as `fusionguard.gate` and so on (pyproject's package-dir; tests/packaging/test_namespace.py).
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = "fusionguard"
SUBSYSTEMS = ("gate", "monitor", "export", "training")
RECIPES = "recipes"
PACKAGES = (CORE, *SUBSYSTEMS, RECIPES)
TORCH_FREE = (CORE, "gate", "monitor")


def _module_name(path: Path) -> str:
    """The installed dotted name of a source file: gate/cli.py is fusionguard.gate.cli."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts[0] != CORE:
        parts.insert(0, CORE)
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imported_names(module: str, path: Path) -> Iterable[tuple[str, ...]]:
    """Per imported name, the dotted names that may denote it, most specific first (relative
    imports resolved): `from pkg import mod` is ("pkg.mod", "pkg"), a module if pkg.mod is one."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from ((alias.name,) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield from ((f"{target}.{alias.name}", target) for alias in node.names)


def _house_module(name: str, modules: Mapping[str, Path]) -> str | None:
    """The house module `name` denotes: itself, or the longest module prefix of it (an attribute)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(modules: Mapping[str, Path]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> house modules it imports, module -> outside top-level packages it imports)."""
    inside: dict[str, set[str]] = {}
    outside: dict[str, set[str]] = {}
    for module, path in modules.items():
        inside[module], outside[module] = set(), set()
        for names in _imported_names(module, path):
            target = next((_house_module(n, modules) for n in names if _house_module(n, modules)), None)
            if target is not None:
                if target != module:
                    inside[module].add(target)
            elif names[-1].split(".")[0] != CORE:
                outside[module].add(names[-1].split(".")[0])
    return inside, outside


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), plus self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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
            if len(component) > 1 or v in graph.get(v, ()):
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    return import_graph(_modules())


def _package(module: str) -> str:
    """The folder a module lives in: fusionguard.gate.cli -> gate, fusionguard.scorer -> fusionguard."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PACKAGES[1:] else parts[0]


def _arrows(inside: Mapping[str, set[str]], sources: Iterable[str], targets: Iterable[str]) -> list[str]:
    sources, targets = set(sources), set(targets)
    return sorted(
        f"{m} -> {t}" for m, deps in inside.items() if _package(m) in sources for t in deps if _package(t) in targets
    )


# ----- the checker itself ---------------------------------------------------------------------------

def test_the_cycle_finder_finds_a_real_cycle_and_only_that():
    acyclic = {"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a"}}
    assert find_cycles(acyclic) == []
    looped = {**acyclic, "c": {"d"}, "e": {"e"}, "f": {"a"}}  # a -> b -> c -> d -> a, and e -> e
    assert find_cycles(looped) == [["a", "b", "c", "d"], ["e"]]


def test_the_graph_builder_sees_lazy_relative_and_type_checking_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "gate"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from fusionguard.gate import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\nimport numpy\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    modules = {_module_name(p): p for p in sorted(pkg.rglob("*.py"))}
    inside, outside = import_graph(modules)
    a, b = "fusionguard.gate.a", "fusionguard.gate.b"
    assert inside[a] == {b}  # `from fusionguard.gate import b` is the module gate/b.py
    assert inside[b] == {a} and outside[b] == {"typing", "numpy"}
    assert find_cycles(inside) == [[a, b]]


# ----- the house ------------------------------------------------------------------------------------

def test_every_package_is_read(graph):
    inside, _ = graph
    assert {_package(m) for m in inside} == set(PACKAGES)
    assert len(inside) > 80  # the whole house (about 90 modules), not an empty glob


def test_no_import_cycles(graph):
    inside, _ = graph
    assert find_cycles(inside) == []


def test_the_core_imports_no_subsystem(graph):
    inside, _ = graph
    assert _arrows(inside, [CORE], [*SUBSYSTEMS, RECIPES]) == []


def test_the_core_names_no_subsystem_module_to_load():
    ref = re.compile(rf"^({CORE}\.)?({'|'.join((*SUBSYSTEMS, RECIPES))})(\.\w+)*(:\w+)?$")
    found = []
    for path in sorted((ROOT / CORE).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and ref.match(node.value) and "." in node.value:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert found == []


def test_core_gate_and_monitor_never_reach_torch(graph):
    inside, outside = graph
    assert _arrows(inside, TORCH_FREE, ["training", "export", RECIPES]) == []
    torch_users = sorted(m for m, pkgs in outside.items() if _package(m) in TORCH_FREE and pkgs & {"torch", "torchvision"})
    assert torch_users == []


def test_export_does_not_import_training(graph):
    inside, _ = graph
    assert _arrows(inside, ["export"], ["training", RECIPES]) == []


def test_no_library_imports_the_recipes(graph):
    inside, _ = graph
    assert _arrows(inside, [CORE, *SUBSYSTEMS], [RECIPES]) == []


def test_nothing_imports_a_subsystem_by_its_bare_name(graph):
    _, outside = graph
    bare = sorted(f"{m} -> {pkg}" for m, pkgs in outside.items() for pkg in pkgs if pkg in PACKAGES[1:])
    assert bare == []
