"""The core package stays pure: no gRPC, no event loop, no clock, no OS access.

The core is every module of ``hwbp`` outside its shells (the server, agent, client,
wire, load and bench subpackages and the generated ``hwbp.v1``, which are the folders of
the same names at the top of the repository). Two checks: a fresh interpreter imports
every core module and must not
have pulled in a forbidden module (catches indirect imports), and each module's own
import statements are scanned (catches ``time``/``os``, which the interpreter always
loads at startup and so cannot be seen in ``sys.modules``).
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import hwbp

# Never loaded by a bare interpreter, so their presence after importing hwbp is a leak.
LOADED_FORBIDDEN = ("grpc", "asyncio", "socket", "subprocess", "selectors", "threading")
# Forbidden as direct imports in hwbp/ source (no I/O, no clock, no shells above us).
IMPORT_FORBIDDEN = frozenset(
    {
        *LOADED_FORBIDDEN,
        "os",
        "time",
        "signal",
        "ctypes",
        "google",
        "grpc_status",
    }
)
# The shells around the core: the core never imports them.
SHELLS = frozenset({"server", "agent", "client", "wire", "load", "bench", "gdbserver", "v1"})

PROBE = """
import importlib, json, sys
before = set(sys.modules)
leaks = {}
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
    new = [m for m in sys.modules if m not in before and m in json.loads(sys.argv[2])]
    if new:
        leaks[name] = sorted(new)
    before = set(sys.modules)
print(json.dumps(leaks))
"""


def _is_shell(name: str) -> bool:
    parts = name.split(".")
    return len(parts) > 1 and parts[0] == "hwbp" and parts[1] in SHELLS


def core_modules() -> list[str]:
    found = pkgutil.iter_modules(hwbp.__path__, prefix="hwbp.")
    return ["hwbp", *sorted(m.name for m in found if not _is_shell(m.name))]


def core_files() -> list[Path]:
    here = Path(hwbp.__path__[0])
    return [
        *sorted(here / f"{name.rpartition('.')[2]}.py" for name in core_modules()[1:]),
        here / "__init__.py",
    ]


def test_every_core_module_is_found() -> None:
    names = core_modules()
    assert {"hwbp.model", "hwbp.errors", "hwbp.arch", "hwbp.ledger", "hwbp.validate"} <= set(names)
    assert not any(_is_shell(n) for n in names)
    assert all(p.is_file() for p in core_files())


def test_importing_the_core_pulls_in_no_io_modules() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE,
            json.dumps(core_modules()),
            json.dumps(LOADED_FORBIDDEN),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    leaks = json.loads(out.stdout)
    assert leaks == {}, "core modules import forbidden modules: " + ", ".join(
        f"{mod} -> {' '.join(new)}" for mod, new in leaks.items()
    )


def test_core_sources_import_nothing_impure() -> None:
    offenders: list[str] = []
    for path in core_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [
                f"{path.name}:{node.lineno} imports {name}"
                for name in names
                if name.split(".")[0] in IMPORT_FORBIDDEN or _is_shell(name)
            ]
    assert offenders == [], "impure imports in hwbp/: " + "; ".join(offenders)
