"""Start real arbiter, agent and CLI processes on loopback ports chosen at run time.

Every process is stopped by pid: SIGINT, a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("HWBP_ARBITER", None)
    for name in ("HWBP_TLS_CERT", "HWBP_TLS_KEY", "HWBP_TLS_CA"):
        env.pop(name, None)  # a developer's own certificate must not leak into the tests
    return env


@dataclass
class Proc:
    """A child process we own; ``stop()`` is idempotent."""

    popen: subprocess.Popen[str]
    name: str
    lines: list[str] = field(default_factory=list)
    pump: Any = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, sig: int = signal.SIGINT, timeout: float = 5.0) -> int:
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
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.stop(signal.SIGKILL)


def start(
    args: Sequence[str], name: str, *, wait_for: str | None = None, timeout: float = 20.0
) -> tuple[Proc, str]:
    """Start ``python -m ARGS`` and, if asked, wait for a stdout line containing ``wait_for``."""
    popen = subprocess.Popen(
        [PY, "-m", *args],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    proc = Proc(popen, name)
    if wait_for is None:
        return proc, ""
    deadline = time.monotonic() + timeout
    assert popen.stdout is not None
    while time.monotonic() < deadline:
        line = popen.stdout.readline()
        if not line:
            proc.stop()
            raise RuntimeError(f"{name} exited before '{wait_for}': {''.join(proc.lines)}")
        proc.lines.append(line)
        if wait_for in line:
            _drain_in_background(proc)
            return proc, line.strip()
    proc.stop()
    raise RuntimeError(f"{name} did not print '{wait_for}' within {timeout}s")


def _drain_in_background(proc: Proc) -> None:
    """Keep reading the child's output so a full pipe never blocks it."""
    import threading

    def pump() -> None:
        assert proc.popen.stdout is not None
        for line in proc.popen.stdout:
            proc.lines.append(line)

    proc.pump = threading.Thread(target=pump, daemon=True)
    proc.pump.start()


def start_arbiter(*extra: str) -> tuple[Proc, str]:
    """Start an arbiter on 127.0.0.1 with a port picked by the kernel; return (proc, address)."""
    db = [] if "--db" in extra else ["--db", ":memory:"]  # tests share no ledger file
    proc, line = start(
        ["hwbp.server", "--listen", "127.0.0.1:0", *db, *extra], "arbiter", wait_for="listening on"
    )
    return proc, line.rsplit(" ", 1)[-1]


def start_fleet(arbiter: str, host: str, cpus: int, *extra: str) -> Proc:
    """K simulated CPU agents in one process; returns once every CPU said hello."""
    proc, _ = start(
        [
            "hwbp.agent",
            "--arbiter",
            arbiter,
            "--fleet",
            "--host",
            host,
            "--cpus",
            str(cpus),
            *extra,
        ],
        f"fleet {host}",
        wait_for="fleet ready",
    )
    return proc


def start_agent(arbiter: str, host: str, cpu: int, *extra: str) -> Proc:
    proc, _ = start(
        ["hwbp.agent", "--arbiter", arbiter, "--host", host, "--cpu", str(cpu), *extra],
        f"agent {host}/{cpu}",
        wait_for="agent ready",
    )
    return proc


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def cli(arbiter: str, *args: str, as_json: bool = True, timeout: float = 30.0) -> CliResult:
    """Run hwbpctl as its own process, the way a person would."""
    argv = [PY, "-m", "hwbp.client", "--arbiter", arbiter]
    if as_json:
        argv.append("--json")
    done = subprocess.run(
        [*argv, *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)
