"""Child processes (arbiter, simulated fleets) started on loopback and stopped by pid.

Shared by the load generator and the benchmarks, so neither depends on the test tree.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("HWBP_ARBITER", None)
    return env


@dataclass
class Child:
    """A process we own; output is pumped in the background so a full pipe never blocks it."""

    popen: subprocess.Popen[str]
    name: str
    lines: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10.0) -> int | None:
        """SIGINT (or ``sig``), a bounded wait, then SIGKILL; idempotent."""
        if self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, sig)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        return self.popen.returncode

    def rss_mb(self) -> float:
        """Resident memory (VmRSS) in MiB, read from /proc."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")


def start(
    argv: Sequence[str], name: str, *, wait_for: str, timeout: float = 60.0, python: bool = True
) -> tuple[Child, str]:
    """Start ``python ARGV`` and wait for a stdout line containing ``wait_for``."""
    cmd = [sys.executable, *argv] if python else list(argv)
    popen = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    child = Child(popen, name)
    found: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            if len(child.lines) < 2000:
                child.lines.append(line)
            if not found and wait_for in line:
                found.append(line.strip())
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True, name=f"pump {name}").start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            break
    if not found:
        child.stop()
        tail = "".join(child.lines[-20:])
        raise RuntimeError(f"{name} did not print {wait_for!r} within {timeout:g}s:\n{tail}")
    return child, found[0]


@functools.cache
def arbiter_has_db() -> bool:
    """Whether this arbiter persists its ledger (``--db``); asked once, from its --help."""
    done = subprocess.run(
        [sys.executable, "-m", "hwbp.server", "--help"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return "--db" in done.stdout


def start_arbiter(
    *extra: str, listen: str = "127.0.0.1:0", profile: str = "", db: str = ":memory:"
) -> tuple[Child, str]:
    """An arbiter on loopback (port picked by the kernel unless given); returns (child, addr).

    ``db`` is passed as ``--db`` when the arbiter has persistence: the default keeps
    nothing, so a run never inherits (or leaves) state in the arbiter's default ledger
    file. With ``profile`` set, the arbiter runs under cProfile and writes stats there.
    """
    pre = ["-m", "cProfile", "-o", profile] if profile else []
    store = ["--db", db] if arbiter_has_db() else []
    child, line = start(
        [*pre, "-m", "hwbp.server", "--listen", listen, "--log-level", "WARNING", *store, *extra],
        "arbiter",
        wait_for="listening on",
    )
    return child, line.rsplit(" ", 1)[-1]


def start_fleet(arbiter: str, host: str, cpus: int, *extra: str, timeout: float = 120.0) -> Child:
    """K simulated CPU agents in one process; returns once every CPU is live."""
    child, _ = start(
        [
            "-m",
            "hwbp.agent",
            "--arbiter",
            arbiter,
            "--fleet",
            "--host",
            host,
            "--cpus",
            str(cpus),
            "--log-level",
            "WARNING",
            *extra,
        ],
        f"fleet {host}",
        wait_for="fleet ready",
        timeout=timeout,
    )
    return child


def stop_all(children: Sequence[Child]) -> None:
    """Stop in reverse start order (fleets before their arbiter)."""
    for child in reversed(children):
        with contextlib.suppress(Exception):
            child.stop()
