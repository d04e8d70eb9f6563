"""Child processes (arbiter, agents, fleets, hwbpctl) started on loopback and stopped by pid.

The one process helper: the load generator, the benchmarks and the integration tests
(``tests/integration/procs.py`` re-exports it) all start their children here, so none
of them depends on the test tree. Output is read by a thread, never by a ``readline()``
in the caller: a child that prints nothing cannot block the caller past its timeout.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
MAX_LINES = 20_000  # output kept per child; past it the oldest half goes


def child_env() -> dict[str, str]:
    """Our environment, less whatever would point a child at another arbiter or identity."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("HWBP_ARBITER", None)
    for name in ("HWBP_TLS_CERT", "HWBP_TLS_KEY", "HWBP_TLS_CA"):
        env.pop(name, None)  # a developer's own certificate must not leak into a child
    return env


@dataclass
class Child:
    """A process we own. Once a line was waited for, its output is pumped into ``lines``
    in the background so a full pipe never blocks it; ``stop()`` is idempotent."""

    popen: subprocess.Popen[str]
    name: str
    lines: list[str] = field(default_factory=list)
    pump: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10.0) -> int:
        """``sig`` (SIGINT by default), a bounded wait, then SIGKILL; the exit status."""
        if self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, sig)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        if self.pump is not None:
            self.pump.join(timeout)
        if self.popen.stdout is not None and (self.pump is None or not self.pump.is_alive()):
            self.popen.stdout.close()
        return self.popen.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.stop(signal.SIGKILL)

    def rss_mb(self) -> float:
        """Resident memory (VmRSS) in MiB, read from /proc."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def output(self) -> list[str]:
        """Every line read so far (starting the pump if nobody waited for a line)."""
        if self.pump is None:
            pump(self)
        return list(self.lines)


def pump(child: Child, wait_for: str | None = None) -> threading.Event:
    """Read the child's output into ``child.lines`` on a thread; the event is set at the
    first line containing ``wait_for`` (and at end of output, whatever it said)."""
    seen = threading.Event()
    stdout = child.popen.stdout
    assert stdout is not None, "the child's output is not a pipe"

    def run() -> None:
        for line in stdout:
            child.lines.append(line)
            if len(child.lines) > MAX_LINES:
                del child.lines[: MAX_LINES // 2]
            if wait_for is not None and wait_for in line:
                seen.set()
        seen.set()

    child.pump = threading.Thread(target=run, daemon=True, name=f"pump {child.name}")
    child.pump.start()
    return seen


def start(
    argv: Sequence[str],
    name: str,
    *,
    wait_for: str | None = None,
    timeout: float = 60.0,
    python: bool = True,
) -> tuple[Child, str]:
    """Start ``python ARGV`` (or ARGV itself with ``python=False``) in the repository.

    With ``wait_for``, return once a line containing it was printed (and that line);
    a child that exits first, or stays silent past ``timeout``, is stopped and named in
    the RuntimeError. Without, the caller owns the output pipe.
    """
    cmd = [PY, *argv] if python else list(argv)
    popen = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    child = Child(popen, name)
    if wait_for is None:
        return child, ""
    seen = pump(child, wait_for)
    seen.wait(timeout)
    found = next((line.strip() for line in list(child.lines) if wait_for in line), None)
    if found is None:
        # Set without the line: its output closed, so it is exiting.
        code = _exit_status(child.popen) if seen.is_set() else None
        child.stop()
        tail = "".join(child.lines[-20:])
        if code is not None:
            why = f"exited ({code}) before printing {wait_for!r}"
        else:
            why = f"did not print {wait_for!r} within {timeout:g}s"
        raise RuntimeError(f"{name} {why}:\n{tail}")
    return child, found


def _exit_status(popen: subprocess.Popen[str]) -> int | None:
    """The status of a child whose output just closed (it is exiting), if it ends soon."""
    try:
        return popen.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return None


@functools.cache
def arbiter_has_db() -> bool:
    """Whether this arbiter persists its ledger (``--db``); asked once, from its --help."""
    done = subprocess.run(
        [PY, "-m", "hwbp.server", "--help"],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return "--db" in done.stdout


def start_arbiter(
    *extra: str, listen: str = "127.0.0.1:0", profile: str = "", db: str = ":memory:"
) -> tuple[Child, str]:
    """A quiet arbiter on loopback (port picked by the kernel unless given); (child, addr).

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
    """K simulated CPU agents in one quiet process; returns once every CPU is live."""
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
