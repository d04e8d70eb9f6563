"""Fleet.forget: what keeps a host, in words, and a ledger that cannot drop it keeps it."""

from __future__ import annotations

import asyncio

import pytest

from hwbp.errors import HostBusy, HostNotFound, LedgerWriteFailed
from hwbp.model import BpType, Breakpoint, Reservation, Scope, Target
from hwbp.server.attachments import Attachment
from hwbp.server.fleet import Fleet
from hwbp.server.hosts import Host
from hwbp.server.links import AgentChannel


def test_everything_left_on_a_host_is_named() -> None:
    async def run() -> None:
        fleet = Fleet(ack_timeout=1.0)
        host = fleet.ensure_host("h", 2)
        bp = Breakpoint(0x1000, 8, BpType.WRITE)
        host.ledger.reserve(Reservation("r1", "h", Target(Scope.CPU, cpu=1), bp, "alice"))
        host.attachments[42] = Attachment("s-1", "bob")
        host.connect(AgentChannel("h", 0, "sim"))
        with pytest.raises(HostBusy) as busy:
            await fleet.forget("h")
        message = busy.value.message
        assert "it holds r1 (alice, cpu 1); release them first" in message
        assert "task 42 (session s-1, bob)" in message
        assert "cpu 0 still has an agent" in message
        assert busy.value.metadata["reservations"] == "r1"
        assert "h" in fleet.hosts

    asyncio.run(run())


def test_a_host_the_ledger_cannot_drop_stays() -> None:
    async def run() -> None:
        fleet = Fleet(ack_timeout=1.0)
        fleet.ensure_host("h", 2)
        dropped: list[str] = []

        async def refuse(host: Host) -> None:
            raise LedgerWriteFailed("disk full")

        async def write(host: Host) -> None:
            dropped.append(host.name)

        fleet.on_host_forgotten = refuse
        with pytest.raises(LedgerWriteFailed):
            await fleet.forget("h")
        assert "h" in fleet.hosts
        fleet.on_host_forgotten = write
        gone = await fleet.forget("h")
        assert gone.ncpus == 2 and dropped == ["h"] and "h" not in fleet.hosts
        with pytest.raises(HostNotFound):
            await fleet.forget("h")
        assert fleet.ensure_host("h", 3).ncpus == 3  # a later agent: a new host

    asyncio.run(run())
