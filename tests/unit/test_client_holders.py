"""A NO_FREE_SLOT refusal carries its holders as data: built by the arbiter's error table
(server/errors.py), read back by the SDK (client/errors.py) as SlotHolder values."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from hwbp import errors as core
from hwbp.client.errors import NoFreeSlot, from_status, holders_from_text
from hwbp.client.values import Scope, SlotHolder
from hwbp.model import BpType, Breakpoint, Reservation, Target
from hwbp.server.errors import to_status

NOW = 1_700_000_000.0


@dataclass
class Lease:
    expires_at: float


@dataclass
class Leases:
    """What the arbiter's session table offers: sessions by id, and its clock."""

    sessions: dict[str, Lease] = field(default_factory=dict)
    clock: Callable[[], float] = lambda: 100.0


def res(rid: str, target: Target, **kw: object) -> Reservation:
    return Reservation(rid, "h1", target, Breakpoint(0x1000, 8, BpType.WRITE), **kw)  # type: ignore[arg-type]


HELD = [
    res("r1", Target(Scope.CPU, cpu=1), owner="gdb-alice", session="s-a", reserved_at=NOW - 12),
    res("r2", Target(Scope.TASK, task=42), owner="bob", reserved_at=NOW - 300),
    res("r3", Target(Scope.TASK_CPU, cpu=1, task=43)),  # restored from a ledger: no age
    res("r4", Target(Scope.SYSTEM), owner="carol", session="s-gone"),  # its lease ended
]


def error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in status.details)
    return info


def refused(leases: Leases | None) -> NoFreeSlot:
    err = core.NoFreeSlot(host="h1", cpu=1, slot_class="shared", used=4, slots=4, holders=HELD)
    status = to_status(err, "req-1", leases, now=NOW)
    decoded = from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, status.message, status)
    assert isinstance(decoded, NoFreeSlot)
    return decoded


def test_each_holder_arrives_as_a_typed_value() -> None:
    err = refused(Leases({"s-a": Lease(expires_at=108.5)}))
    assert (err.host, err.cpu, err.slot_class, err.used, err.slots) == ("h1", 1, "shared", 4, 4)
    assert err.holders == (
        SlotHolder("r1", "gdb-alice", "s-a", Scope.CPU, 1, None, age=12.0, lease_left=8.5),
        SlotHolder("r2", "bob", "", Scope.TASK, None, 42, age=300.0),
        SlotHolder("r3", "", "", Scope.TASK_CPU, 1, 43),
        SlotHolder("r4", "carol", "s-gone", Scope.SYSTEM, None, None),
    )
    assert [str(h) for h in err.holders] == [
        "r1 (gdb-alice, cpu 1, session s-a, held 12s, lease 8.5s left)",
        "r2 (bob, task 42, held 5m)",
        "r3 (anonymous, task 43 on cpu 1)",
        "r4 (carol, system, session s-gone)",
    ]
    with pytest.raises(AttributeError):
        err.holders[0].owner = "mallory"  # type: ignore[misc]


def test_the_errorinfo_text_stays_for_older_clients() -> None:
    err = core.NoFreeSlot(host="h1", cpu=1, slot_class="shared", used=4, slots=4, holders=HELD)
    info = error_info(to_status(err, "req-1", None, now=NOW))
    assert info.reason == "NO_FREE_SLOT"
    assert info.metadata["holders"] == ";".join(h.describe() for h in HELD)
    # ...and what such a client (or this one, talking to an older arbiter) reads from it:
    assert holders_from_text(info.metadata["holders"]) == (
        SlotHolder("r1", "gdb-alice", "", Scope.CPU, 1, None),
        SlotHolder("r2", "bob", "", Scope.TASK, None, 42),
        SlotHolder("r3", "", "", Scope.TASK_CPU, 1, 43),
        SlotHolder("r4", "carol", "", Scope.SYSTEM, None, None),
    )


def test_without_a_session_table_there_is_no_lease() -> None:
    assert [h.lease_left for h in refused(None).holders] == [None] * 4


def test_text_that_does_not_parse_is_kept_as_the_id() -> None:
    assert holders_from_text("weird;r9 (x, y)") == (
        SlotHolder("weird", "", "", Scope.SYSTEM, None, None),
        SlotHolder("r9 (x, y)", "", "", Scope.SYSTEM, None, None),
    )


def test_hwbpctl_renders_the_holders_for_people_and_as_objects() -> None:
    from hwbp.client import cli_render as render

    err = refused(Leases({"s-a": Lease(expires_at=108.5)}))
    assert render.no_free_slot_line(err) == (
        "no free debug register on host h1 cpu 1: 4 of 4 in use, held by "
        "r1 (gdb-alice, cpu 1, session s-a, held 12s, lease 8.5s left), "
        "r2 (bob, task 42, held 5m), r3 (anonymous, task 43 on cpu 1), "
        "r4 (carol, system, session s-gone)"
    )
    doc = render.no_free_slot_json(err)
    assert (doc["error"], doc["used"], len(doc["holders"])) == ("NO_FREE_SLOT", 4, 4)
    assert doc["holders"][0] == {
        "reservation_id": "r1",
        "owner": "gdb-alice",
        "session_id": "s-a",
        "scope": "cpu",
        "cpu": 1,
        "task": None,
        "age": 12.0,
        "lease_left": 8.5,
    }
