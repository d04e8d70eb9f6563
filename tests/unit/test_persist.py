"""Restoring the arbiter from its store, and what each committed batch writes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hwbp.errors import LedgerCorrupt
from hwbp.keys import Done
from hwbp.model import BpType, Breakpoint, Reservation, Scope, Target
from hwbp.pipeline import Outcome, Persist
from hwbp.ptrace import PtraceState
from hwbp.server.attachments import Attachment
from hwbp.server.fleet import Fleet
from hwbp.server.persist import Persistence
from hwbp.server.sessions import SessionTable
from hwbp.server.store import Batch, MemoryStore
from hwbp.server.store.base import AttachmentRecord, HostRecord, KeyRecord, ReservationRecord
from hwbp.server.store.writer import LedgerWriter

WALL = 1_000_000.0  # the wall clock the tests pretend it is
LOOP = 50.0  # and the event loop's clock


def res(rid: str, cpu: int = 0, addr: int = 0x1000, session: str | None = None) -> Reservation:
    return Reservation(
        rid, "h1", Target(Scope.CPU, cpu=cpu), Breakpoint(addr, 8, BpType.WRITE), "ann", session
    )


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def restored(store: MemoryStore) -> Iterator[tuple[Persistence, Fleet]]:
    fleet, table = Fleet(ack_timeout=1.0), SessionTable(clock=lambda: 100.0)
    writer = LedgerWriter(store)
    yield Persistence(writer, fleet, table, wall=lambda: WALL), fleet
    writer.close()


def test_restore_readmits_through_the_core_and_continues_the_id_counter(
    store: MemoryStore, restored: tuple[Persistence, Fleet]
) -> None:
    store.commit(
        Batch(
            hosts=[HostRecord("h1", 2, 9)],
            reservations=[ReservationRecord(res(f"r{i}", addr=0x1000 * i)) for i in (3, 7)],
            next_id=12,  # r8..r11 were issued and released before the restart
        )
    )
    persistence, fleet = restored
    got = persistence.restore(LOOP)
    assert (got.hosts, got.reservations) == (1, 2)
    host = fleet.hosts["h1"]
    assert host.generation == 9 and host.ledger.used(0) == 2
    assert fleet.new_id() == "r12"


def test_a_ledger_without_a_counter_continues_after_its_highest_id(
    store: MemoryStore, restored: tuple[Persistence, Fleet]
) -> None:
    store.commit(Batch(hosts=[HostRecord("h1", 2, 1)], reservations=[ReservationRecord(res("r5"))]))
    persistence, fleet = restored
    persistence.restore(LOOP)
    assert fleet.new_id() == "r6"


def test_keys_come_back_with_their_scope_fingerprint_and_remaining_lifetime(
    store: MemoryStore, restored: tuple[Persistence, Fleet]
) -> None:
    first = res("r1")
    store.commit(
        Batch(
            hosts=[HostRecord("h1", 2, 1)],
            keys=[
                KeyRecord("debugger:bob\0k", "h1", "fp", first, 4, (0,), (1,), WALL + 30.0),
                KeyRecord("admin:alice\0k", "h1", "fp2", res("r2"), 5, (0,), (), WALL - 1.0),
            ],
        )
    )
    persistence, fleet = restored
    assert persistence.restore(LOOP).keys == 1  # the expired one is dropped
    found = fleet.keys.lookup("debugger:bob\0k", "fp", LOOP)
    assert isinstance(found, Done)
    assert found.outcome == Outcome(first, 4, (0,), (1,))  # even though r1 is not held
    assert found.expires == pytest.approx(LOOP + 30.0)
    assert fleet.keys.lookup("admin:alice\0k", "fp2", LOOP) is None
    assert fleet.keys.lookup("debugger:bob\0k", "fp", LOOP + 31.0) is None


def test_restore_refuses_an_over_budget_ledger(
    store: MemoryStore, restored: tuple[Persistence, Fleet]
) -> None:
    store.commit(
        Batch(
            hosts=[HostRecord("h1", 2, 1)],
            reservations=[ReservationRecord(res(f"r{i}", addr=0x1000 + 8 * i)) for i in range(5)],
        )
    )
    with pytest.raises(LedgerCorrupt) as exc:
        restored[0].restore(LOOP)
    assert "r4" in str(exc.value) and "cannot be re-admitted" in str(exc.value)


def test_restore_refuses_reservations_or_attachments_of_an_unknown_session(
    store: MemoryStore, restored: tuple[Persistence, Fleet]
) -> None:
    store.commit(
        Batch(
            hosts=[HostRecord("h1", 2, 1)],
            attachments=[AttachmentRecord("h1", 7, "s-gone", "ann", PtraceState(), ())],
        )
    )
    with pytest.raises(LedgerCorrupt) as exc:
        restored[0].restore(LOOP)
    assert "s-gone" in str(exc.value) and "task 7" in str(exc.value)


async def test_a_committed_batch_writes_the_counter_its_keys_and_attachments(
    store: MemoryStore, restored: tuple[Persistence, Fleet]
) -> None:
    persistence, fleet = restored
    host = fleet.ensure_host("h1", 2)
    made = res(fleet.new_id())
    host.ledger.reserve(made)
    host.attachments[42] = Attachment("", "ann")
    host.dirty_tasks.add(42)
    outcome = Outcome(made, 1, (0,), ())
    await persistence.host_committed(
        host, Persist(1, frozenset({made.id}), (("\0k", "fp", outcome),))
    )
    assert not host.dirty_tasks
    snap = store.load()
    assert [r.reservation for r in snap.reservations] == [made]
    assert snap.next_id == 2
    assert snap.attachments[0].task == 42
    (k,) = snap.keys
    assert (k.key, k.fingerprint, k.reservation, k.expires) == (
        "\0k",
        "fp",
        made,
        WALL + fleet.keys.keep,
    )
