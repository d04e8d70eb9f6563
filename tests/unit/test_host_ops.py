"""Host's typed operations, each one change through the real pipeline shell.

Without agents a change commits at once, pending on every CPU it touches; with an agent
(a real AgentChannel whose reloads the test answers) a NACK rolls the change back, and the
operation must leave the host as it was: the ledger, and what it did to attachments.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from hwbp.errors import AgentRefused, AlreadyAttached, InvalidArgument, NotAttached, NotOwner
from hwbp.model import BpType, Breakpoint, Reservation, Scope, Target
from hwbp.server.events import ALL_EVENTS, Item
from hwbp.server.fleet import Fleet
from hwbp.server.hosts import Edit, Host
from hwbp.server.links import AckResult, AgentChannel
from hwbp.v1 import types_pb2

T = TypeVar("T")
TASK = 4242
DR7_L0_W4 = 0xD0001  # L0, write, 4 bytes


def host_of(ncpus: int = 2) -> tuple[Fleet, Host]:
    fleet = Fleet(ack_timeout=5.0)
    return fleet, fleet.ensure_host("h", ncpus)


def bp(addr: int = 0x601040) -> Breakpoint:
    return Breakpoint(addr, 8, BpType.WRITE)


def events(fleet: Fleet) -> list[Item]:
    def accept(_: Item) -> bool:
        return True

    sub = fleet.bus.subscribe(accept, ALL_EVENTS)
    return sub.queue._queue  # type: ignore[attr-defined,no-any-return]  # read as it fills


class Agent:
    """One CPU's agent, played by the test: it acknowledges, or refuses, what it is sent."""

    def __init__(self, host: Host, cpu: int) -> None:
        self.host = host
        self.channel = AgentChannel(host.name, cpu, "sim")
        self.channel.deltas = True
        host.connect(self.channel)
        self.refuse = False

    def answer(self) -> int:
        """Answer every reload queued so far; returns how many."""
        n = 0
        while not self.channel.outbox.empty():
            msg = self.channel.outbox.get_nowait()
            if msg is None or msg.WhichOneof("body") != "reload":
                continue
            gen = msg.reload.generation
            ok = not self.refuse
            self.host.answered(self.channel, AckResult(gen, ok, reason="" if ok else "no"))
            n += 1
        return n


async def run(agent: Agent, call: Awaitable[T]) -> T:
    """Await ``call`` while the agent answers what it is sent."""
    task = asyncio.ensure_future(call)
    while not task.done():
        await asyncio.sleep(0)
        agent.answer()
    return await task


async def live(host: Host, cpu: int = 0) -> Agent:
    agent = Agent(host, cpu)
    assert agent.answer() == 1  # its resync
    return agent


# --- reservations ---------------------------------------------------------------------


async def test_reserve_without_agents_commits_pending_on_every_cpu_and_tells_watchers() -> None:
    fleet, host = host_of()
    seen = events(fleet)
    out = await host.reserve("q1", Target(Scope.SYSTEM), bp(), owner="alice")
    res: Reservation = out.result  # typed: no isinstance needed
    assert (res.id, res.owner, res.host) == ("r1", "alice", "h")
    assert (out.applied, out.pending) == ((), (0, 1))
    assert [r.id for r in host.committed()] == ["r1"]
    reserved = [
        e
        for e in seen
        if isinstance(e, types_pb2.Event) and e.kind == types_pb2.EVENT_KIND_RESERVED
    ]
    assert [(e.reservation.id, e.reservation.owner) for e in reserved] == [("r1", "alice")]


async def test_a_keyed_reserve_retried_gets_the_first_reservation() -> None:
    _, host = host_of()
    first = await host.reserve(
        "q1", Target(Scope.CPU, cpu=1), bp(), owner="a", key="a\0k", fingerprint="f"
    )
    again = await host.reserve(
        "q2", Target(Scope.CPU, cpu=1), bp(), owner="a", key="a\0k", fingerprint="f"
    )
    assert again.result == first.result
    assert len(host.committed()) == 1


async def test_release_and_modify_change_the_ledger_and_answer_the_reservation() -> None:
    _, host = host_of()
    made = (await host.reserve("q1", Target(Scope.CPU, cpu=0), bp(), owner="a")).result
    moved = await host.modify("q2", made.id, Edit(addr=0x602000, enabled=False))
    assert (moved.result.bp.addr, moved.result.bp.enabled) == (0x602000, False)
    assert moved.result.bp.type is BpType.WRITE  # what the edit does not name stays
    assert moved.pending == (0,)
    gone = await host.release("q3", made.id)
    assert gone.result.bp.addr == 0x602000
    assert host.committed() == []


async def test_a_modify_that_names_nothing_is_refused_and_changes_nothing() -> None:
    _, host = host_of()
    made = (await host.reserve("q1", Target(Scope.CPU, cpu=0), bp(), owner="a")).result
    generation = host.generation
    with pytest.raises(InvalidArgument, match="names no field"):
        await host.modify("q2", made.id, Edit())
    assert host.generation == generation
    assert host.committed() == [made]


async def test_a_refused_modify_leaves_the_reservation_as_it_was() -> None:
    _, host = host_of(1)
    agent = await live(host)
    made = (await run(agent, host.reserve("q1", Target(Scope.CPU, cpu=0), bp(), owner="a"))).result
    agent.refuse = True
    with pytest.raises(AgentRefused):
        await run(agent, host.modify("q2", made.id, Edit(addr=0x700000)))
    assert host.committed() == [made]


# --- ptrace ---------------------------------------------------------------------------


async def test_attach_poke_peek_detach_flush() -> None:
    _, host = host_of()
    assert await host.attach("q1", TASK, "s-1", "gdb") is False
    assert await host.attach("q2", TASK, "s-1", "gdb") is True  # already, by this session
    with pytest.raises(AlreadyAttached):
        await host.attach("q3", TASK, "s-2", "other")
    with pytest.raises(NotOwner, match="session s-1"):
        host.peek(TASK, "s-2", 0)
    await host.poke("q4", TASK, "s-1", 0, 0x601040, owner="gdb")
    generation = await host.poke("q5", TASK, "s-1", 7, DR7_L0_W4, owner="gdb")
    assert generation == host.generation
    assert host.peek(TASK, "s-1", 7) == DR7_L0_W4
    assert [(r.ptrace_index, r.owner, r.bp.enabled) for r in host.committed()] == [(0, "gdb", True)]
    assert await host.detach("q6", TASK, "s-1") == 1  # kept, as the kernel keeps it
    with pytest.raises(NotAttached):
        host.peek(TASK, "s-1", 7)
    assert await host.flush("q7", TASK, "") == 1
    assert host.committed() == [] and TASK not in host.attachments


async def test_a_refused_poke_of_a_task_it_attached_drops_the_attachment() -> None:
    _, host = host_of(1)
    agent = await live(host)
    agent.refuse = True
    with pytest.raises(AgentRefused):
        await run(agent, host.poke("q1", TASK, "", 0, 0x601040, owner="cli"))
    assert TASK not in host.attachments and host.committed() == []


async def test_a_refused_flush_keeps_the_trace_and_its_breakpoints() -> None:
    _, host = host_of(1)
    agent = await live(host)
    await run(agent, host.attach("q1", TASK, "", "cli"))
    await run(agent, host.poke("q2", TASK, "", 0, 0x601040, owner="cli"))
    att = host.attachments[TASK]
    agent.refuse = True
    with pytest.raises(AgentRefused):
        await run(agent, host.flush("q3", TASK, ""))
    assert host.attachments[TASK] is att
    assert [r.ptrace_index for r in host.committed()] == [0]


# --- what ends --------------------------------------------------------------------------


async def test_a_task_exit_releases_its_breakpoints_and_its_trace() -> None:
    fleet, host = host_of()
    seen = events(fleet)
    await host.reserve("q1", Target(Scope.TASK, task=TASK), bp(), owner="perf")
    kept = (await host.reserve("q2", Target(Scope.TASK, task=7), bp(), owner="perf")).result
    await host.poke("q3", TASK, "", 0, 0x601040, owner="gdb")
    assert await host.exit_task("exit:4242", TASK) == 2
    assert host.committed() == [kept] and TASK not in host.attachments
    exits = [e for e in seen if isinstance(e, types_pb2.Event) and e.task == TASK]
    assert [(e.kind, e.reason) for e in exits][-1] == (
        types_pb2.EVENT_KIND_TASK_EXITED,
        "2 released",
    )


async def test_a_session_end_releases_what_it_holds_and_flushes_what_it_traced() -> None:
    fleet, host = host_of()
    seen = events(fleet)
    await host.reserve("q1", Target(Scope.CPU, cpu=0), bp(), owner="a", session="s-1")
    other = (await host.reserve("q2", Target(Scope.CPU, cpu=1), bp(), owner="b")).result
    await host.attach("q3", TASK, "s-1", "a")
    await host.poke("q4", TASK, "s-1", 0, 0x601040, owner="a")
    assert host.holds_session("s-1") and not host.holds_session("s-2")
    assert await host.release_session("s-1", "lease expired") == 2
    assert host.committed() == [other] and not host.holds_session("s-1")
    expired = [
        e
        for e in seen
        if isinstance(e, types_pb2.Event) and e.kind == types_pb2.EVENT_KIND_LEASE_EXPIRED
    ]
    assert [(e.request_id, e.reason) for e in expired] == [("session:s-1", "lease expired")]
