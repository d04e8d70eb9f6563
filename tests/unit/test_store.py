"""One suite, run against every store implementation (in-memory and SQLite)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hwbp.errors import LedgerCorrupt
from hwbp.model import BpType, Breakpoint, Reservation, Scope, Target
from hwbp.ptrace import PtraceState
from hwbp.server.store import Batch, MemoryStore, SqliteStore, Store
from hwbp.server.store.base import AttachmentRecord, HostRecord, ReservationRecord, SessionRecord

Reopen = Callable[[], Store]


@pytest.fixture(params=["memory", "sqlite"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, Reopen]]:
    """(store, reopen): reopen gives what a restarted arbiter would see."""
    if request.param == "memory":
        mem = MemoryStore()
        yield mem, lambda: mem
        return
    path = str(tmp_path / "ledger.db")
    opened: list[SqliteStore] = [SqliteStore(path)]

    def reopen() -> Store:
        opened[-1].close()
        opened.append(SqliteStore(path))
        return opened[-1]

    yield opened[0], reopen
    opened[-1].close()


def res(rid: str, **kw: object) -> Reservation:
    base: dict[str, object] = {
        "id": rid,
        "host": "h1",
        "target": Target(Scope.TASK_CPU, cpu=1, task=42),
        "bp": Breakpoint(0x7FFF_FFFF_E000, 8, BpType.RW, enabled=False),
        "owner": "alice",
        "session": "s-1",
        "ptrace_index": None,
    }
    base.update(kw)
    return Reservation(**base)  # type: ignore[arg-type]


def test_empty_store_loads_nothing(stores: tuple[Store, Reopen]) -> None:
    snap = stores[1]().load()
    assert snap.hosts == () and snap.reservations == () and snap.sessions == ()


def test_a_batch_round_trips_exactly(stores: tuple[Store, Reopen]) -> None:
    store, reopen = stores
    state = PtraceState(
        bps=(Breakpoint(0x1000, 1, BpType.WRITE, False), None, None, None), dr7=0x401, virtual_dr6=3
    )
    kernel = res(
        "r2",
        target=Target(Scope.SYSTEM),
        owner="root",
        session=None,
        bp=Breakpoint(0xFFFF_8000_0000_1000, 8, BpType.EXEC, True, kernel=True),
    )
    store.commit(
        Batch(
            hosts=[HostRecord("h1", 4, 17)],
            reservations=[ReservationRecord(res("r10"), "key-a"), ReservationRecord(kernel)],
            attachments=[AttachmentRecord("h1", 42, "s-1", "alice", state, ((0, "r10"),))],
            sessions=[SessionRecord("s-1", "alice", 2.5)],
        )
    )
    snap = reopen().load()
    assert snap.hosts == (HostRecord("h1", 4, 17),)
    # Creation order (r2 before r10), every field kept, the key with its reservation.
    assert [r.reservation for r in snap.reservations] == [kernel, res("r10")]
    assert snap.reservations[1].idempotency_key == "key-a"
    assert snap.attachments[0].state == state and snap.attachments[0].reservations == ((0, "r10"),)
    assert snap.sessions == (SessionRecord("s-1", "alice", 2.5),)


def test_deletes_and_updates(stores: tuple[Store, Reopen]) -> None:
    store, reopen = stores
    store.commit(
        Batch(
            hosts=[HostRecord("h1", 2, 1)],
            reservations=[ReservationRecord(res("r1")), ReservationRecord(res("r2"))],
            sessions=[SessionRecord("s-1", "a", 1.0)],
            attachments=[AttachmentRecord("h1", 9, "", "x", PtraceState(), ())],
        )
    )
    moved = res("r2", bp=Breakpoint(0x2000, 4, BpType.WRITE))
    store.commit(
        Batch(
            hosts=[HostRecord("h1", 2, 2)],
            deleted_reservations=["r1"],
            reservations=[ReservationRecord(moved)],
            deleted_sessions=["s-1"],
            deleted_attachments=[("h1", 9)],
        )
    )
    snap = reopen().load()
    assert [r.reservation for r in snap.reservations] == [moved]
    assert snap.hosts[0].generation == 2 and snap.sessions == () and snap.attachments == ()


def test_a_tracer_applied_reservation_keeps_its_flag(stores: tuple[Store, Reopen]) -> None:
    """Lost on a restart, the flag would make the agents arm a watchpoint its tracer
    already armed: two kernel slots for one reservation."""
    store, reopen = stores
    traced = res("r3", bp=Breakpoint(0x601040, 4, BpType.WRITE, tracer_applied=True))
    store.commit(Batch(hosts=[HostRecord("h1", 2, 1)], reservations=[ReservationRecord(traced)]))
    assert [r.reservation for r in reopen().load().reservations] == [traced]


def test_sqlite_opens_a_ledger_written_before_tracer_applied(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '1');
        CREATE TABLE hosts (name TEXT PRIMARY KEY, ncpus INTEGER NOT NULL,
            generation INTEGER NOT NULL);
        INSERT INTO hosts VALUES ('h1', 2, 5);
        CREATE TABLE reservations (
            id TEXT PRIMARY KEY, host TEXT NOT NULL, scope TEXT NOT NULL, cpu INTEGER,
            task INTEGER, addr TEXT NOT NULL, len INTEGER NOT NULL, type TEXT NOT NULL,
            enabled INTEGER NOT NULL, kernel INTEGER NOT NULL, owner TEXT NOT NULL,
            session TEXT, ptrace_index INTEGER, idempotency_key TEXT NOT NULL DEFAULT '');
        INSERT INTO reservations VALUES
            ('r1', 'h1', 'task', NULL, 42, '4096', 8, 'w', 1, 0, 'alice', NULL, NULL, '');
        """
    )
    db.close()
    store = SqliteStore(str(path))
    try:
        (old,) = store.load().reservations
        assert old.reservation.bp == Breakpoint(4096, 8, BpType.WRITE)
        traced = res("r2", bp=Breakpoint(0x2000, 8, BpType.WRITE, tracer_applied=True))
        store.commit(Batch(reservations=[ReservationRecord(traced)]))
        assert store.load().reservations[1].reservation == traced
    finally:
        store.close()


def test_an_empty_batch_writes_nothing(stores: tuple[Store, Reopen]) -> None:
    store, reopen = stores
    store.commit(Batch())
    assert not Batch() and reopen().load().hosts == ()


def test_sqlite_refuses_a_file_that_is_not_a_ledger(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LedgerCorrupt) as exc:
        SqliteStore(str(bad)).load()
    assert str(bad) in str(exc.value)


def test_sqlite_refuses_unreadable_rows(tmp_path: Path) -> None:
    path = str(tmp_path / "l.db")
    store = SqliteStore(path)
    store.commit(Batch(reservations=[ReservationRecord(res("r1"))]))
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE reservations SET type = 'bogus'")
    with pytest.raises(LedgerCorrupt):
        SqliteStore(path).load()


def _persistence(store: Store) -> tuple[object, object]:
    from hwbp.server.fleet import Fleet
    from hwbp.server.persist import Persistence
    from hwbp.server.sessions import SessionTable

    fleet, table = Fleet(ack_timeout=1.0), SessionTable(clock=lambda: 100.0)
    return Persistence(store, fleet, table), fleet


def test_restore_readmits_through_the_core_and_continues_ids() -> None:
    store = MemoryStore()
    store.commit(
        Batch(
            hosts=[HostRecord("h1", 2, 9)],
            reservations=[
                ReservationRecord(
                    res(f"r{i}", target=Target(Scope.CPU, cpu=0), session=None), f"k{i}"
                )
                for i in (3, 7)
            ],
        )
    )
    persistence, fleet = _persistence(store)
    restored = persistence.restore()  # type: ignore[attr-defined]
    assert (restored.hosts, restored.reservations) == (1, 2)
    host = fleet.hosts["h1"]  # type: ignore[attr-defined]
    assert host.generation == 9 and host.ledger.used(0) == 2
    assert fleet.new_id() == "r8"  # type: ignore[attr-defined]
    assert fleet.recall("k7").id == "r7"  # type: ignore[attr-defined]


def test_restore_refuses_an_over_budget_ledger() -> None:
    store = MemoryStore()
    store.commit(
        Batch(
            hosts=[HostRecord("h1", 2, 1)],
            reservations=[
                ReservationRecord(
                    res(
                        f"r{i}",
                        target=Target(Scope.CPU, cpu=0),
                        session=None,
                        bp=Breakpoint(0x1000 + 8 * i, 8, BpType.WRITE),
                    )
                )
                for i in range(5)
            ],
        )
    )
    persistence, _ = _persistence(store)
    with pytest.raises(LedgerCorrupt) as exc:
        persistence.restore()  # type: ignore[attr-defined]
    assert "r4" in str(exc.value) and "cannot be re-admitted" in str(exc.value)


def test_restore_refuses_reservations_of_an_unknown_session() -> None:
    store = MemoryStore()
    store.commit(
        Batch(
            hosts=[HostRecord("h1", 2, 1)],
            reservations=[ReservationRecord(res("r1", session="s-gone"))],
        )
    )
    persistence, _ = _persistence(store)
    with pytest.raises(LedgerCorrupt) as exc:
        persistence.restore()  # type: ignore[attr-defined]
    assert "s-gone" in str(exc.value)
