"""A process-wide breakpoint counts once on every thread, as inherit does in the kernel."""

from __future__ import annotations

import pytest

from hwbp.errors import InvalidScope, InvalidTask, NoFreeSlot, ValueOutOfRange
from hwbp.ledger import HostLedger
from hwbp.model import BpType, Breakpoint, Reservation, Scope, Target
from hwbp.v1 import types_pb2
from hwbp.wire import convert

PID, T2, T3 = 100, 101, 102


def wp(addr: int) -> Breakpoint:
    return Breakpoint(addr, 8, BpType.WRITE)


def process(*threads: int) -> Target:
    return Target(Scope.PROCESS, task=PID, threads=threads)


def test_a_thread_holding_three_has_four_and_the_fifth_is_refused_naming_them() -> None:
    ledger = HostLedger("h", 2)
    mine = [
        Reservation(f"t{i}", "h", Target(Scope.TASK, task=T2), wp(0x1000 + 8 * i)) for i in range(3)
    ]
    for r in mine:
        ledger.reserve(r)
    whole = Reservation("p1", "h", process(PID, T2, T3), wp(0x2000), owner="carol")
    ledger.reserve(whole)
    assert ledger.used(0) == 4  # T2: three of its own and the process's
    with pytest.raises(NoFreeSlot) as refused:
        ledger.reserve(Reservation("p2", "h", process(PID, T2, T3), wp(0x3000)))
    assert refused.value.cpu == 0 and refused.value.used == 4
    assert [h.id for h in refused.value.holders] == ["t0", "t1", "t2", "p1"]
    # A thread on its own still has room: the process's breakpoint is its only one.
    ledger.reserve(Reservation("t3", "h", Target(Scope.TASK, task=T3), wp(0x4000)))
    with pytest.raises(NoFreeSlot) as refused:  # ... but T2 is full for a task one too
        ledger.reserve(Reservation("t4", "h", Target(Scope.TASK, task=T2), wp(0x5000)))
    assert [h.id for h in refused.value.holders] == ["t0", "t1", "t2", "p1"]
    ledger.validate()


def test_threads_created_later_count_every_process_wide_breakpoint() -> None:
    """Two process-wide breakpoints told different threads: each known thread has one,
    but a thread created later inherits both, so a CPU-bound request sees two."""
    ledger = HostLedger("h", 1)
    ledger.reserve(Reservation("a", "h", process(PID), wp(0x1000)))
    ledger.reserve(Reservation("b", "h", process(T2), wp(0x2000)))
    assert ledger.used(0) == 2
    ledger.reserve(Reservation("c", "h", Target(Scope.CPU, cpu=0), wp(0x3000)))
    ledger.reserve(Reservation("d", "h", Target(Scope.CPU, cpu=0), wp(0x4000)))
    with pytest.raises(NoFreeSlot) as refused:
        ledger.reserve(Reservation("e", "h", Target(Scope.SYSTEM), wp(0x5000)))
    assert [h.id for h in refused.value.holders] == ["a", "b", "c", "d"]
    ledger.release("a")
    assert ledger.used(0) == 3
    assert ledger.by_task(PID) == [ledger.get("b")]  # the process exits: its pid's
    ledger.validate()


def test_a_switch_to_any_thread_installs_the_process_breakpoints() -> None:
    ledger = HostLedger("h", 1)
    ledger.reserve(Reservation("p", "h", process(PID, T2), wp(0x1000)))
    assert [a.reservation_id for a in ledger.installable(0, T2)] == ["p"]
    assert [a.reservation_id for a in ledger.installable(0, PID)] == ["p"]
    assert ledger.installable(0, T3) == []
    assert ledger.count(Scope.PROCESS) == 1 and ledger.count(Scope.TASK) == 0


def test_process_target_shape() -> None:
    assert Target(Scope.PROCESS, task=PID).threads == (PID,)  # untold: the main thread
    assert Target(Scope.PROCESS, task=PID, threads=(T3, PID, T3)).threads == (PID, T3)
    with pytest.raises(InvalidScope, match="takes no threads"):
        Target(Scope.TASK, task=PID, threads=(PID,))
    with pytest.raises(InvalidTask, match="thread id must be > 0"):
        Target(Scope.PROCESS, task=PID, threads=(0,))
    with pytest.raises(InvalidScope, match="needs a task"):
        Target(Scope.PROCESS)
    with pytest.raises(InvalidScope, match="takes no cpu"):
        Target(Scope.PROCESS, task=PID, cpu=0)
    assert Target(Scope.PROCESS, task=PID).describe() == f"process {PID}"


def test_a_process_target_crosses_the_wire_with_its_threads() -> None:
    target = process(PID, T2)
    msg = convert.target_to("h", target)
    assert (msg.scope, list(msg.threads)) == (types_pb2.SCOPE_PROCESS, [PID, T2])
    assert convert.target_from(msg) == target
    res = Reservation("r1", "h", target, wp(0x1000))
    into = types_pb2.Reservation()
    convert.reservation_into(into, res)
    assert convert.reservation_to(res) == into and list(into.target.threads) == [PID, T2]
    a = HostLedger("h", 1)
    a.reserve(res)
    (sent,) = a.for_cpu(0)
    assert sent.process and convert.assignment_from(convert.assignment_to(sent)) == sent
    too_many = types_pb2.Target(
        host="h", scope=types_pb2.SCOPE_PROCESS, task=PID, threads=range(1, convert.MAX_THREADS + 2)
    )
    with pytest.raises(ValueOutOfRange, match="at most"):
        convert.target_from(too_many)
    with pytest.raises(ValueOutOfRange, match="thread must be a pid"):
        convert.target_from(types_pb2.Target(scope=types_pb2.SCOPE_PROCESS, task=PID, threads=[0]))
