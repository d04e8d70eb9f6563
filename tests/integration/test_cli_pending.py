"""hwbpctl when a CPU's agent is gone: the change commits, and the CLI says where it is
still pending. A real arbiter, two single-CPU agents of host hp, one of them killed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration import procs
from tests.integration.procs import CliResult

pytestmark = pytest.mark.timeout(60)

HOST = "hp"


@pytest.fixture(scope="module")
def addr() -> Iterator[str]:
    """cpu 0's agent is live; cpu 1's was SIGKILLed and its CPU shows offline."""
    arbiter, address = procs.start_arbiter("--ack-timeout", "1.0")
    agents = []
    try:
        agents = [procs.start_agent(address, HOST, c, "--cpus", "2") for c in range(2)]
        agents[1].kill()
        deadline = time.monotonic() + 20
        while not _offline(address, 1):
            assert time.monotonic() < deadline, "cpu 1 never showed offline"
            time.sleep(0.1)
        yield address
    finally:
        for a in agents:
            a.stop()
        arbiter.stop()


def _offline(address: str, cpu: int) -> bool:
    res = procs.cli(address, "cpus", "--host", HOST)
    return res.code == 0 and any(c["cpu"] == cpu and not c["online"] for c in res.json())


def run(addr: str, command: str, *, as_json: bool = True) -> CliResult:
    return procs.cli(addr, *command.split(), as_json=as_json)


def reserve(addr: str, args: str) -> tuple[dict[str, Any], str]:
    res = run(addr, f"reserve --host {HOST} {args}")
    assert res.code == 0, res.err
    doc: dict[str, Any] = res.json()
    return doc, res.err


def test_an_offline_cpu_shows_link_offline(addr: str) -> None:
    cpus = {c["cpu"]: c for c in run(addr, f"cpus --host {HOST}").json()}
    assert (cpus[0]["link"], cpus[1]["link"]) == ("live", "offline")
    header, *rows = run(addr, f"cpus --host {HOST}", as_json=False).out.strip().splitlines()
    col = header.split().index("LINK")
    assert [r.split()[col] for r in rows] == ["live", "offline"]


def test_a_change_pending_on_an_offline_cpu_is_committed_with_a_warning(addr: str) -> None:
    doc, err = reserve(addr, "--system --addr 0x6000 --len 8 --type w --owner ann")
    assert (doc["applied_cpus"], doc["pending_cpus"]) == ([0], [1])
    assert err.strip() == (
        f"hwbpctl: warning: {doc['id']} is committed but pending on {HOST} cpu 1 (agent "
        "offline or fenced): it is applied when the agent resyncs"
    )
    human = run(addr, f"modify {doc['id']} --disable", as_json=False)
    assert human.code == 0 and f"the change to {doc['id']} is committed" in human.err
    gone = run(addr, f"release {doc['id']}")
    assert gone.code == 0 and gone.json()["pending_cpus"] == [1]
    assert f"the release of {doc['id']} is committed but pending on {HOST} cpu 1" in gone.err


def test_expect_owner_refuses_someone_elses_reservation(addr: str) -> None:
    doc, _ = reserve(addr, "--cpu 0 --addr 0x7000 --len 8 --type w --owner ann")
    try:
        for command in (f"release {doc['id']}", f"modify {doc['id']} --disable"):
            refused = run(addr, f"{command} --expect-owner bob")
            assert refused.code == 2, (command, refused.code, refused.err)
            (line,) = refused.err.strip().splitlines()
            assert line.startswith("hwbpctl: ") and "bob" in line
        (still,) = [r for r in run(addr, "ls").json() if r["id"] == doc["id"]]
        assert still["enabled"] is True
    finally:
        run(addr, f"release {doc['id']}")
