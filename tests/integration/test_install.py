"""The project installs as one ``hwbp`` namespace a user's script can use and type-check.

The script lives in an otherwise empty directory beside its own ``client.py`` and
``server.py`` (the names that used to shadow the SDK when it was installed at the top
level), runs against a real arbiter, and passes ``mypy --strict`` with the types the
installed package ships (``py.typed``).

What is installed, and how: a wheel built from this checkout (a copy, so the build
leaves nothing in the tree), installed by pip into a new venv in a temporary directory.
By default its dependencies (grpcio, protobuf, ...) are the ones of the venv running the
tests, made visible to the new venv by a .pth line, because fetching and unpacking them
from the registry takes longer than a test may (about 40 s here); the test checks that
``hwbp`` itself is imported from the new venv, never from the checkout or the
development install. HWBP_FULL_INSTALL=1 installs them from the registry instead, as a
user's ``pip install`` would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from hwbp.load import procs as load_procs
from tests.integration import procs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FULL = os.environ.get("HWBP_FULL_INSTALL") == "1"
HOST = "hi"
SKIP = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    "var",
    "node_modules",
)

USER_SCRIPT = '''
"""A user's script: reserve until the CPU is full and report who holds it."""

import sys

import client as own_client  # the user's own client.py, beside this script
from hwbp.client import Client, NoFreeSlot, SlotHolder


def holders(endpoint: str, host: str) -> tuple[SlotHolder, ...]:
    with Client(endpoint) as c, c.session(ttl=10, owner="script") as s:
        for i in range(5):
            try:
                s.reserve(host, cpu=0, addr=0x1000 + 8 * i, len=8, type="w")
            except NoFreeSlot as refused:
                return refused.holders
    return ()


if __name__ == "__main__":
    found = holders(sys.argv[1], sys.argv[2])
    owners = {h.owner for h in found}
    print(own_client.NAME, len(found), ",".join(sorted(owners)), found[0].session_id != "")
'''


def run(argv: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """A command with a user's environment: no PYTHONPATH pointing into the checkout."""
    env = {k: v for k, v in load_procs.child_env().items() if k != "PYTHONPATH"}
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{argv[:3]} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with the project installed from a wheel built from this checkout."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "checkout"
    shutil.copytree(procs.ROOT, source, symlinks=True, ignore=SKIP)
    dist = tmp / "dist"
    # --no-build-isolation: build with the setuptools we have, not a fresh download.
    wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    run([*wheel, "-w", str(dist), str(source)], tmp)
    (built,) = dist.glob("hwbp_arbiter-*.whl")
    env_dir = tmp / "venv"
    python = env_dir / "bin" / "python"
    run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], tmp)
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    if FULL:
        run([*pip, str(built)], tmp)
    else:
        run([*pip, "--no-deps", str(built)], tmp)
        site = run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp
        )
        deps = sysconfig.get_path("purelib")  # ours; .pth lines add it, never its .pth files
        Path(site.stdout.strip(), "_dependencies.pth").write_text(deps + "\n")
    return env_dir


@pytest.fixture(scope="module")
def arbiter() -> Iterator[str]:
    proc, address = procs.start_arbiter()
    try:
        fleet = procs.start_fleet(address, HOST, 1)
        try:
            yield address
        finally:
            fleet.stop()
    finally:
        proc.stop()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An otherwise empty directory: the script, and a client.py and server.py of its own."""
    (tmp_path / "client.py").write_text('"""The user\'s own client module."""\n\nNAME = "mine"\n')
    (tmp_path / "server.py").write_text('"""The user\'s own server module."""\n\nNAME = "mine"\n')
    (tmp_path / "script.py").write_text(textwrap.dedent(USER_SCRIPT).lstrip())
    return tmp_path


def test_the_wheel_installs_one_namespace_with_its_types(venv: Path) -> None:
    python = str(venv / "bin" / "python")
    probe = (
        "import importlib.metadata as m, hwbp, hwbp.client;"
        "files = m.distribution('hwbp-arbiter').files;"
        "print(hwbp.__file__);"
        "print(sorted({f.parts[0] for f in files if f.parts[0] != '..'}));"
        "print(any(str(f) == 'hwbp/py.typed' for f in files))"
    )
    where, tops, typed = run([python, "-c", probe], venv).stdout.splitlines()
    assert Path(where).is_relative_to(venv), f"hwbp was imported from {where}"
    assert tops == "['hwbp', 'hwbp_arbiter-0.1.0.dist-info']"  # nothing else at the top
    assert typed == "True"
    for script in ("hwbp-arbiter", "hwbp-agent", "hwbpctl", "hwbp-load"):
        assert (venv / "bin" / script).exists(), script


def test_a_script_beside_its_own_client_and_server_uses_the_sdk(
    venv: Path, workdir: Path, arbiter: str
) -> None:
    python = str(venv / "bin" / "python")
    out = run([python, "script.py", arbiter, HOST], workdir).stdout.split()
    assert out == ["mine", "4", "script", "True"]
    # The installed CLI, from the same directory, sees what the script left: nothing.
    listed = run([str(venv / "bin" / "hwbpctl"), "--arbiter", arbiter, "--json", "ls"], workdir)
    assert listed.stdout.strip() == "[]"


def test_mypy_strict_passes_on_the_script_with_the_sdks_types(venv: Path, workdir: Path) -> None:
    python = str(venv / "bin" / "python")
    mypy = [sys.executable, "-m", "mypy", "--strict", "--python-executable", python]
    cache = ["--cache-dir", str(workdir / ".mypy_cache")]
    done = run([*mypy, *cache, "script.py"], workdir)
    assert "Success: no issues found in 1 source file" in done.stdout
    # The types are really read from the installed package: a misuse is caught.
    (workdir / "wrong.py").write_text(
        "from hwbp.client import Client\n\nClient('x').reserve('h', cpu='0', addr=1, type='w')\n"
    )
    wrong = subprocess.run(
        [*mypy, *cache, "wrong.py"], cwd=workdir, capture_output=True, text=True, timeout=240
    )
    assert wrong.returncode == 1 and 'incompatible type "str"; expected "int | None"' in (
        wrong.stdout
    ), wrong.stdout
