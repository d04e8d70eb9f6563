"""A --fleet agent outlives its arbiter (issue 13, item 13).

Real processes: an arbiter, a 3-CPU --fleet agent, the arbiter killed (SIGKILL) or
stopped (SIGTERM, which ends every agent stream from its side: where grpc.aio may say
INTERNAL "Failed execute_batch") and restarted on the same port, several times. The
agent's pid must stay the same, every CPU must come back live and acknowledged, and the
agent must never log that it stopped.
"""

from __future__ import annotations

import functools
import signal
from pathlib import Path

import grpc
import pytest

from tests.integration import procs
from tests.integration.stubs import Api, wait_until

pytestmark = pytest.mark.timeout(120)

HOST, CPUS = "hs", 3


def _arbiter(db: Path, port: int = 0) -> tuple[procs.Proc, str]:
    proc, line = procs.start(
        ["hwbp.server", "--listen", f"127.0.0.1:{port}", "--db", str(db)],
        "arbiter",
        wait_for="listening on",
    )
    return proc, line.rsplit(" ", 1)[-1]


def _all_live(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as ch:
            cpus = Api(ch).inventory(HOST)
    except grpc.RpcError:
        return False  # not up yet, or the host is not known again yet
    return len(cpus) == CPUS and all(c.online and c.acked_generation == c.generation for c in cpus)


def _reconnects(fleet: procs.Proc) -> int:
    return sum("reconnecting" in line for line in list(fleet.lines))


def _reconnected(fleet: procs.Proc, want: int) -> bool:
    return _reconnects(fleet) >= want


def test_a_fleet_agent_survives_arbiter_kills_and_restarts(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    arbiter, address = _arbiter(db)
    port = int(address.rsplit(":", 1)[1])
    fleet = procs.start_fleet(address, HOST, CPUS)
    try:
        with grpc.insecure_channel(address) as ch:
            Api(ch).reserve(HOST, scope="system", addr=0x5000)  # something to resync
        for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGKILL, signal.SIGTERM):
            met = _reconnects(fleet)
            arbiter.stop(sig)
            # Every agent meets the dead or draining arbiter (and says it reconnects).
            wait_until(
                functools.partial(_reconnected, fleet, met + CPUS),
                timeout=20,
                what=f"{CPUS} agents to see the arbiter gone after {sig!r}",
            )
            assert fleet.popen.poll() is None, "".join(fleet.lines)
            arbiter, _ = _arbiter(db, port)
            wait_until(
                lambda: _all_live(address), timeout=20, what=f"{CPUS} cpus live after {sig!r}"
            )
        assert fleet.popen.poll() is None
        log = "".join(fleet.lines)
        assert "agent stopped" not in log and "Traceback" not in log, log
    finally:
        fleet.stop()
        arbiter.stop()
