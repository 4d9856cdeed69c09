"""The code's shape (issue 18): one-way imports among corun's modules, short functions, argparse only in
the CLI package, a shared-helpers module that imports no model code."""
from __future__ import annotations

import ast
import functools
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "corun"
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.lru_cache(maxsize=1)
def _sources() -> dict[str, tuple[Path, ast.Module]]:
    return {_module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, tree: ast.Module, modules: set[str]) -> set[str]:
    """corun modules imported anywhere in ``tree`` (module level or inside functions): ``from . import x``
    counts as importing ``x`` when ``x`` is a module, else the package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            subs = {f"{base}.{a.name}" for a in node.names} & modules
            out |= subs if len(subs) == len(node.names) else ({base} & modules) | subs
    return out - {name}


@functools.lru_cache(maxsize=1)
def _graph() -> dict[str, frozenset[str]]:
    sources = _sources()
    modules = set(sources)
    return {name: frozenset(_imports(name, path, tree, modules))
            for name, (path, tree) in sources.items() if not name.endswith("__main__")}


def import_graph() -> dict[str, set[str]]:
    """Module → the corun modules it imports. Entry points (``__main__``) are left out: nothing imports them."""
    return {name: set(deps) for name, deps in _graph().items()}


def test_no_import_cycle_among_corun_modules():
    graph = import_graph()
    assert len(graph) > 30 and "corun.model" in graph["corun.checkpoint"]  # the walk sees imports
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")
    assert order.index("corun.utils") < order.index("corun.model") < order.index("corun.cli")


def test_a_cycle_is_found_when_there_is_one(monkeypatch):
    graph = import_graph()
    graph["corun.utils"] = graph["corun.utils"] | {"corun.cli"}   # what the test above must catch
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(graph).static_order())


def test_utils_imports_nothing_of_corun():
    assert import_graph()["corun.utils"] == set()


def test_no_function_longer_than_80_lines():
    long = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})"
            for _, (path, tree) in _sources().items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


def test_argparse_only_in_the_cli_package():
    users = sorted(name for name, (path, tree) in _sources().items()
                   if any(isinstance(n, ast.Import) and any(a.name == "argparse" for a in n.names)
                          or isinstance(n, ast.ImportFrom) and n.module == "argparse" for n in ast.walk(tree)))
    assert users and all(u == "corun.cli" or u.startswith("corun.cli.") for u in users), users
