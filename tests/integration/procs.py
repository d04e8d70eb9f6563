"""Start real arbiter, agent and CLI processes on loopback ports chosen at run time.

A thin layer over the one process helper, ``hwbp.load.procs``: ``start`` here takes the
arguments of ``python -m`` and its arbiter and agents log at their default level (tests
read their lines); every process is stopped by pid: SIGINT, a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hwbp.load import procs as _procs
from hwbp.load.procs import PY, ROOT, Child, child_env, stop_all

__all__ = [
    "PY",
    "ROOT",
    "CliResult",
    "Proc",
    "arbiter_with_fleet",
    "cli",
    "perf_agents",
    "start",
    "start_agent",
    "start_arbiter",
    "start_fleet",
    "stop_all",
]

Proc = Child
_env = child_env  # the name older tests import


def start(
    args: Sequence[str], name: str, *, wait_for: str | None = None, timeout: float = 20.0
) -> tuple[Proc, str]:
    """Start ``python -m ARGS`` and, if asked, wait for a stdout line containing ``wait_for``
    (RuntimeError if the child exits first or stays silent for ``timeout`` seconds)."""
    return _procs.start(["-m", *args], name, wait_for=wait_for, timeout=timeout)


def _drain_in_background(proc: Proc) -> None:
    """Keep reading the child's output into ``proc.lines`` so a full pipe never blocks it."""
    if proc.pump is None:
        _procs.pump(proc)


def start_arbiter(*extra: str) -> tuple[Proc, str]:
    """Start an arbiter on 127.0.0.1 with a port picked by the kernel; return (proc, address)."""
    db = [] if "--db" in extra else ["--db", ":memory:"]  # tests share no ledger file
    proc, line = start(
        ["hwbp.server", "--listen", "127.0.0.1:0", *db, *extra], "arbiter", wait_for="listening on"
    )
    return proc, line.rsplit(" ", 1)[-1]


@contextmanager
def arbiter_with_fleet(host: str, cpus: int, *extra: str) -> Iterator[str]:
    """An arbiter (``extra``: its flags) and a simulated ``cpus``-CPU fleet for ``host``;
    yields the arbiter's address, stops both by pid on the way out."""
    arbiter, address = start_arbiter(*extra)
    try:
        fleet = start_fleet(address, host, cpus)
        try:
            yield address
        finally:
            fleet.stop()
    finally:
        arbiter.stop()


@contextmanager
def perf_agents(arbiter: str, host: str, cpus: int) -> Iterator[str]:
    """One real-register (perf) agent per CPU of ``host``; yields the host's name, stops
    them by pid on the way out."""
    agents = [
        start_agent(arbiter, host, c, "--cpus", str(cpus), "--backend", "perf") for c in range(cpus)
    ]
    try:
        yield host
    finally:
        for p in agents:
            p.stop()


def start_fleet(arbiter: str, host: str, cpus: int, *extra: str) -> Proc:
    """K simulated CPU agents in one process; returns once every CPU said hello."""
    args = ["hwbp.agent", "--arbiter", arbiter, "--fleet", "--host", host, "--cpus", str(cpus)]
    proc, _ = start([*args, *extra], f"fleet {host}", wait_for="fleet ready")
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
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)
