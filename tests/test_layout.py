"""The module graph: no import circles inside lancedb_baai, and every module imports on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import lancedb_baai

PACKAGE = Path(lancedb_baai.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The lancedb_baai modules ``path`` imports, lazy imports inside functions included."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from . import _hub` names a module; `from .x import y` a name in x
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in MODULES and m != name}


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, found by depth-first search (each reported once per entry point)."""
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_the_graph_is_read_from_the_code():
    graph = {name: _imports(path) for name, path in MODULES.items()}
    assert "lancedb_baai.functions.inputs" in graph["lancedb_baai.functions.embeddings"]
    assert "lancedb_baai.engines.kinds" in graph["lancedb_baai.engines.factory"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_circles_among_package_modules():
    graph = {name: _imports(path) for name, path in MODULES.items()}
    assert _cycles(graph) == []


LAYERS = ("_version", "models", "runtimes", "engines", "functions", "tables", "lifecycle", "testing", "ray",
          "serve", "", "cli", "__main__")
"""The package's layers, bottom up: a module may import its own layer and those below, never one above."""


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    return LAYERS.index(part)


def test_every_module_has_a_layer():
    assert all(_layer(name) >= 0 for name in MODULES)


def test_no_module_imports_one_above_it():
    """Imports inside functions included: the runtimes never reach the engines, the engines never the functions."""
    graph = {name: _imports(path) for name, path in MODULES.items()}
    upward = sorted(f"{name} -> {target}" for name, targets in graph.items() for target in targets
                    if _layer(target) > _layer(name))
    assert upward == []


def test_every_module_imports_on_its_own():
    code = (
        "import importlib, sys\n"
        f"names = {sorted(n for n in MODULES if not n.endswith('__main__'))!r}\n"
        "failed = []\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m == 'lancedb_baai' or m.startswith('lancedb_baai.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {exc!r}')\n"
        "print(len(names)); print('\\n'.join(failed))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    count, *failed = out.stdout.strip().split("\n")
    assert int(count) >= 15 and failed == []
