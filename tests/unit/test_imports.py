"""The arbiter's modules import each other without a cycle (runtime imports only)."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import hwbp

PACKAGE = Path(hwbp.__path__[0])  # its shells (server/, agent/, ...) are linked inside


def _files() -> list[Path]:
    out = []
    for folder, dirs, files in os.walk(PACKAGE, followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        out += [Path(folder, f) for f in files if f.endswith(".py")]
    return out


def _module(path: Path) -> str:
    parts = ("hwbp", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path) -> set[str]:
    """Top-level and function-level imports, leaving out ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for b in node.body for n in ast.walk(b)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def test_no_import_cycles() -> None:
    modules = {_module(p): p for p in _files()}
    assert {"hwbp.ledger", "hwbp.server.hosts", "hwbp.agent.link", "hwbp.client.sdk"} <= set(
        modules
    )
    # A module inside a package reaches its siblings through the package: not a cycle.
    graph = {
        m: {i for i in _runtime_imports(p) if i in modules and i != m and not m.startswith(i + ".")}
        for m, p in modules.items()
    }
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str], done: set[str]) -> None:
        if node in stack:
            cycles.append([*stack[stack.index(node) :], node])
            return
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, [*stack, node], done)
        done.add(node)

    done: set[str] = set()
    for m in sorted(graph):
        visit(m, [], done)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])
