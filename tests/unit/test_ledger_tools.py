"""The ledger check: every reason the arbiter would refuse a ledger, from a snapshot."""

from __future__ import annotations

from hwbp.model import BpType, Breakpoint, Reservation, Scope, Target
from hwbp.ptrace import PtraceState
from hwbp.server.ledger_tools import conflicts, next_id
from hwbp.server.store.base import (
    AttachmentRecord,
    HostRecord,
    ReservationRecord,
    SessionRecord,
    Snapshot,
)

H = "h"


def rec(rid: str, target: Target, host: str = H, session: str | None = None) -> ReservationRecord:
    bp = Breakpoint(0x1000 + 8 * int(rid[1:]), 8, BpType.WRITE)
    return ReservationRecord(Reservation(rid, host, target, bp, "alice", session=session))


def snap(*reservations: ReservationRecord, **kw: object) -> Snapshot:
    return Snapshot(
        hosts=(HostRecord(H, 2, 7),),
        reservations=reservations,
        attachments=kw.get("attachments", ()),  # type: ignore[arg-type]
        sessions=(SessionRecord("s1", "alice", 10.0),),
        next_id=int(kw.get("next_id", 1)),  # type: ignore[call-overload]
    )


def test_a_ledger_the_arbiter_accepts_has_no_conflict() -> None:
    ok = snap(*(rec(f"r{i}", Target(Scope.CPU, cpu=0)) for i in range(1, 5)))
    assert conflicts(ok) == []


def test_every_conflict_is_named_not_only_the_first() -> None:
    four = [rec(f"r{i}", Target(Scope.CPU, cpu=0)) for i in range(1, 5)]
    bad = snap(
        *four,
        rec("r5", Target(Scope.SYSTEM)),  # cpu 0 is full
        rec("r6", Target(Scope.CPU, cpu=1), host="ghost"),
        rec("r7", Target(Scope.CPU, cpu=5)),  # no such cpu
        rec("r8", Target(Scope.CPU, cpu=1), session="s-gone"),
        attachments=(AttachmentRecord(H, 42, "s1", "alice", PtraceState(), ((0, "r99"),)),),
    )
    found = conflicts(bad)
    assert len(found) == 5, found
    assert found[0].startswith("r5 (alice, system) on h does not fit: no free debug register")
    assert "held by r1 (alice, cpu 0)" in found[0]
    assert "'ghost'" in found[1]
    assert found[2].startswith("r7 (alice, cpu 5)") and "does not exist" in found[2]
    assert "s-gone" in found[3]
    assert "task 42" in found[4] and "r99" in found[4]


def test_the_counter_is_never_below_an_id_in_the_ledger() -> None:
    assert next_id(snap(rec("r9", Target(Scope.CPU, cpu=0)), next_id=3)) == 10
    assert next_id(snap(rec("r9", Target(Scope.CPU, cpu=0)), next_id=30)) == 30
