"""How hits reach a traced task's DR6: one debug exception is one DR6 update."""

from __future__ import annotations

from hwbp import ptrace
from hwbp.server.attachments import Attachment, LedgerRegistrar
from hwbp.server.events import TRAPS_ONLY
from hwbp.server.fleet import Fleet, by_exception
from hwbp.server.hosts import Host
from hwbp.v1 import ptrace_pb2, types_pb2

TASK = 4242
A = 0x601040


def traced(*pokes: tuple[int, int]) -> tuple[Fleet, Host, Attachment]:
    fleet = Fleet(ack_timeout=1.0)
    host = fleet.ensure_host("h", 2)
    att = host.attachments[TASK] = Attachment(session="", owner="t")
    registrar = LedgerRegistrar(fleet.new_id, host, TASK, att)
    for reg, value in pokes:
        att.state = ptrace.poke(att.state, reg, value, registrar)
    return fleet, host, att


def hit(att: Attachment, index: int, exception: int = 0) -> types_pb2.Hit:
    return types_pb2.Hit(
        reservation_id=att.reservations[index],
        task=TASK,
        physical_index=index,
        access_addr=A,
        dr6=0xFFFF0FF0 | 1 << index,
        exception=exception,
    )


def traps(fleet: Fleet) -> list[ptrace_pb2.Trap]:
    sub = fleet.bus.subscribe(lambda _: True, TRAPS_ONLY)
    return sub.queue._queue  # type: ignore[attr-defined,no-any-return]  # read as it fills


def test_one_access_hitting_two_breakpoints_sets_both_dr6_bits() -> None:
    """exc_debug_user() resets virtual_dr6 once per debug exception, then
    ptrace_triggered() ORs in the bit of every ptrace breakpoint that fired: DR0 and DR1
    both watching a byte that one store hits read back DR6 = 0xffff0ff3 (observed on this
    machine), and each trap of that exception reports it."""
    fleet, host, att = traced((0, A), (1, A), (7, 0x110005))
    got = traps(fleet)
    out = fleet.publish_hits(host, 0, [hit(att, 0), hit(att, 1)])
    assert [h.ptrace_index for h in out] == [0, 1]
    assert ptrace.peek(att.state, 6) == 0xFFFF0FF3
    assert [(t.ptrace_index, t.dr6) for t in got] == [(0, 0xFFFF0FF3), (1, 0xFFFF0FF3)]


def test_two_exceptions_restart_dr6() -> None:
    """Each new exception starts virtual_dr6 afresh: a later hit on DR1 alone reads 0x2."""
    fleet, host, att = traced((0, A), (1, A), (7, 0x110005))
    fleet.publish_hits(host, 0, [hit(att, 0), hit(att, 1)])
    fleet.publish_hit(host, 0, hit(att, 1))
    assert ptrace.peek(att.state, 6) == 0xFFFF0FF2


def test_agent_reports_are_split_by_exception() -> None:
    """An agent's report may carry many exceptions: hits sharing a nonzero exception id
    are one; a hit with none stands alone."""
    fleet, host, att = traced((0, A), (1, A), (7, 0x110005))
    report = [hit(att, 0, 5), hit(att, 1, 5), hit(att, 1, 0), hit(att, 0, 6), hit(att, 1, 6)]
    groups = by_exception(report)
    assert [[h.physical_index for h in g] for g in groups] == [[0, 1], [1], [0, 1]]
    for g in groups[:2]:
        fleet.publish_hits(host, 0, g)
    assert ptrace.peek(att.state, 6) == 0xFFFF0FF2
    fleet.publish_hits(host, 0, groups[2])
    assert ptrace.peek(att.state, 6) == 0xFFFF0FF3


def test_a_hit_on_a_breakpoint_disabled_since_is_published_without_touching_dr6() -> None:
    """A hit drained after a reload disabled its breakpoint still reaches watchers; it
    cannot have fired under the task's current DR7, so DR6 is left as it was."""
    fleet, host, att = traced((0, A), (7, 0x10001))
    late = hit(att, 0)
    att.state = ptrace.poke(att.state, 7, 0, LedgerRegistrar(fleet.new_id, host, TASK, att))
    (out,) = fleet.publish_hits(host, 0, [late])
    assert out.ptrace_index == 0
    assert ptrace.peek(att.state, 6) == 0xFFFF0FF0
