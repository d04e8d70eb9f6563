"""A host whose agents come back with another CPU count, with a real fleet and ledger file.

Before, the arbiter knew a host by the CPU count of its first hello and refused every
later hello that said otherwise (HOST_SHAPE_CONFLICT), for as long as the ledger lived:
a host that gained or lost CPUs (a resized VM, ``--cpus`` changed) was locked out.
Now more CPUs are accepted, and fewer are accepted unless a reservation sits on a CPU
that went away; then the refusal names it, on the agent's log and in the inventory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import ledgers, procs
from tests.integration.stubs import wait_until

pytestmark = pytest.mark.timeout(120)
HOST = "shape"


@pytest.fixture
def arbiter(tmp_path: Path) -> Iterator[tuple[procs.Proc, str, Path]]:
    db = tmp_path / "ledger.db"
    proc, address = ledgers.arbiter(db)
    try:
        yield proc, address, db
    finally:
        proc.stop()


def cpus(address: str) -> list[dict[str, Any]]:
    done = procs.cli(address, "cpus", "--host", HOST)
    assert done.code == 0, done.err
    rows: list[dict[str, Any]] = done.json()
    return rows


def gone(fleet: procs.Proc, address: str) -> None:
    """Stop a fleet and wait until the arbiter has seen each of its agents go."""
    fleet.stop()
    wait_until(lambda: all(r["link"] == "offline" for r in cpus(address)), what="agents gone")


def reserve_on(address: str, cpu: int) -> str:
    done = procs.cli(
        address, "reserve", "--host", HOST, "--cpu", str(cpu), "--addr", "0x601000",
        "--len", "8", "--type", "w", "--owner", "alice", as_json=False,
    )  # fmt: skip
    assert done.code == 0, done.err
    return done.out.strip()


def test_more_cpus_are_accepted_and_kept_across_a_restart(
    arbiter: tuple[procs.Proc, str, Path],
) -> None:
    proc, address, db = arbiter
    fleet = procs.start_fleet(address, HOST, 2)
    r0 = reserve_on(address, 1)
    gone(fleet, address)
    fleet = procs.start_fleet(address, HOST, 4)  # before: never ready, refused forever
    try:
        rows = cpus(address)
        assert [r["cpu"] for r in rows] == [0, 1, 2, 3]
        assert all(r["link"] == "live" for r in rows), rows
        assert r0 in [h["reservation_id"] for h in rows[1]["holders"]]
        r3 = reserve_on(address, 3)
        proc.stop()
        proc, _ = ledgers.arbiter(db, ledgers.port_of(address))
        wait_until(lambda: ledgers.health(address) == ledgers.SERVING, what="serving")
        wait_until(lambda: all(r["link"] == "live" for r in cpus(address)), what="fleet back")
        rows = cpus(address)
        assert len(rows) == 4
        assert r3 in [h["reservation_id"] for h in rows[3]["holders"]]
    finally:
        fleet.stop()
        proc.stop()


def test_fewer_cpus_are_refused_while_a_reservation_sits_on_a_removed_one(
    arbiter: tuple[procs.Proc, str, Path],
) -> None:
    _, address, _ = arbiter
    fleet = procs.start_fleet(address, HOST, 4)
    kept = reserve_on(address, 1)
    blocker = reserve_on(address, 3)
    gone(fleet, address)
    small, _ = procs.start(
        ["hwbp.agent", "--arbiter", address, "--fleet", "--host", HOST, "--cpus", "2"], "fleet 2"
    )
    try:
        small.output()  # read its log in the background
        why = f"{blocker} (alice, cpu 3)"
        wait_until(
            lambda: any(why in line for line in small.lines), timeout=30, what="the agent's log"
        )
        rows = cpus(address)
        assert len(rows) == 4  # still the shape the ledger holds
        assert why in rows[0]["link_reason"], rows[0]
        assert rows[0]["link"] == "offline"
        gone(small, address)
        assert procs.cli(address, "release", blocker).code == 0
        small = procs.start_fleet(address, HOST, 2)
        rows = cpus(address)
        assert [r["cpu"] for r in rows] == [0, 1]
        assert all(r["link"] == "live" for r in rows), rows
        assert kept in [h["reservation_id"] for h in rows[1]["holders"]]
    finally:
        small.stop()


def test_fewer_cpus_are_accepted_when_nothing_sits_on_a_removed_one(
    arbiter: tuple[procs.Proc, str, Path],
) -> None:
    _, address, _ = arbiter
    fleet = procs.start_fleet(address, HOST, 3)
    done = procs.cli(
        address, "reserve", "--host", HOST, "--system", "--addr", "0x601000", "--len", "8",
        "--type", "w", "--owner", "alice", as_json=False,
    )  # fmt: skip
    assert done.code == 0, done.err
    system = done.out.strip()
    gone(fleet, address)
    fleet = procs.start_fleet(address, HOST, 1)
    try:
        rows = cpus(address)
        assert len(rows) == 1 and rows[0]["link"] == "live"
        assert [h["reservation_id"] for h in rows[0]["holders"]] == [system]
        assert rows[0]["used"] == 1
    finally:
        fleet.stop()
