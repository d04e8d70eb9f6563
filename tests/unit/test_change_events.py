"""Change events are drafted by the change, numbered and published only once its batch is
durable: a refused or unwritten change tells watchers nothing, a retried one tells once."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from hwbp.errors import AgentRefused, LedgerWriteFailed
from hwbp.model import Scope, Target
from hwbp.pipeline import Persist
from hwbp.server.fleet import ChangeEvents
from hwbp.server.host_shell import HostShell
from hwbp.server.hosts import Edit
from hwbp.v1 import types_pb2
from tests.unit.test_host_ops import bp, events, host_of, live, run

CHANGES = {
    types_pb2.EVENT_KIND_RESERVED,
    types_pb2.EVENT_KIND_MODIFIED,
    types_pb2.EVENT_KIND_RELEASED,
    types_pb2.EVENT_KIND_LEASE_EXPIRED,
    types_pb2.EVENT_KIND_TASK_EXITED,
}


def changes(seen: Sequence[object]) -> list[types_pb2.Event]:
    return [e for e in seen if isinstance(e, types_pb2.Event) and e.kind in CHANGES]


async def test_each_change_is_numbered_with_its_generation_and_kept_for_replay() -> None:
    fleet, host = host_of()
    seen = events(fleet)
    made = await host.reserve("q1", Target(Scope.CPU, cpu=0), bp(), owner="ann")
    moved = await host.modify("q2", made.result.id, Edit(addr=0x602000))
    gone = await host.release("q3", made.result.id)
    got = changes(seen)
    assert [(e.seq, e.kind) for e in got] == [
        (1, types_pb2.EVENT_KIND_RESERVED),
        (2, types_pb2.EVENT_KIND_MODIFIED),
        (3, types_pb2.EVENT_KIND_RELEASED),
    ]
    assert [e.generation for e in got] == [made.generation, moved.generation, gone.generation]
    assert [e.reservation.generation for e in got] == [e.generation for e in got]
    assert got[2].owner == "ann" and list(got[2].reservation_ids) == [made.result.id]
    assert [e.seq for e in fleet.changes.since(1)] == [2, 3]
    assert fleet.bus.change_seq == 3


async def test_a_refused_change_publishes_nothing_and_takes_no_number() -> None:
    fleet, host = host_of(1)
    seen = events(fleet)
    agent = await live(host)
    agent.refuse = True
    with pytest.raises(AgentRefused):
        await run(agent, host.reserve("q1", Target(Scope.CPU, cpu=0), bp(), owner="a"))
    assert changes(seen) == [] and fleet.changes.last == 0
    agent.refuse = False
    made = await run(agent, host.reserve("q2", Target(Scope.CPU, cpu=0), bp(), owner="a"))
    got = changes(seen)
    assert [(e.seq, e.request_id, e.generation) for e in got] == [(1, "q2", made.generation)]


async def test_a_keyed_reserve_retried_tells_watchers_once() -> None:
    fleet, host = host_of()
    seen = events(fleet)
    for request in ("q1", "q2"):
        await host.reserve(
            request, Target(Scope.CPU, cpu=1), bp(), owner="a", key="a\0k", fingerprint="f"
        )
    assert [e.request_id for e in changes(seen)] == ["q1"]


async def test_a_change_the_ledger_refused_publishes_nothing() -> None:
    fleet, host = host_of()
    seen = events(fleet)
    written: list[ChangeEvents] = []
    fail = True

    async def write(shell: HostShell, ins: Persist, change: ChangeEvents) -> None:
        if fail:
            raise LedgerWriteFailed("disk full")
        written.append(change)

    fleet.on_commit = write
    with pytest.raises(LedgerWriteFailed):
        await host.reserve("q1", Target(Scope.CPU, cpu=0), bp(), owner="a")
    assert changes(seen) == [] and fleet.changes.last == 0
    fail = False
    await host.reserve("q2", Target(Scope.CPU, cpu=0), bp(), owner="a")
    # Written with the batch, in the same call: the number the failed write took is a gap.
    assert [r.seq for w in written for r in w.records] == [2]
    assert [e.seq for e in changes(seen)] == [2]


async def test_a_session_end_and_a_task_exit_name_every_reservation_they_released() -> None:
    fleet, host = host_of()
    seen = events(fleet)
    mine = await host.reserve("q1", Target(Scope.CPU, cpu=0), bp(), owner="a", session="s-1")
    await host.attach("q2", 4242, "s-1", "a")
    await host.poke("q3", 4242, "s-1", 0, 0x601040, owner="a")
    traced = [r.id for r in host.committed() if r.ptrace_index is not None]
    await host.release_session("s-1", "lease expired", "a@lab")
    task = (await host.reserve("q4", Target(Scope.TASK, task=77), bp(), owner="b")).result
    await host.exit_task("exit:77", 77)
    expired, exited = changes(seen)[-3], changes(seen)[-1]
    assert expired.kind == types_pb2.EVENT_KIND_LEASE_EXPIRED
    assert (expired.session, expired.owner) == ("s-1", "a@lab")
    assert list(expired.reservation_ids) == [mine.result.id, *traced] and len(traced) == 1
    assert exited.kind == types_pb2.EVENT_KIND_TASK_EXITED and exited.task == 77
    assert list(exited.reservation_ids) == [task.id]
