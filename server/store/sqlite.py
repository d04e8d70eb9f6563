"""The SQLite store (stdlib sqlite3, WAL): one transaction per committed batch.

``synchronous=NORMAL`` in WAL mode makes a commit durable against a crash of the arbiter
(kill -9) as soon as it returns; ``sync="full"`` also survives power loss, at an fsync
per commit.

The ledger is locked for one arbiter (``lock.py``), and every write first checks that
the file at the ledger's path is still the one it opened (``identity.py``): a ledger
deleted, replaced or truncated under the arbiter refuses every write from then on. A
write SQLite refuses (a full disk, another writer's lock held past the busy timeout, a
read-only file) raises ``LedgerWriteFailed`` saying which, with nothing applied.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from hwbp.errors import LedgerCorrupt, LedgerWriteFailed
from hwbp.model import BpType, Breakpoint, Reservation, Scope, Target
from hwbp.ptrace import PtraceState
from hwbp.server.store.base import (
    AttachmentRecord,
    Batch,
    EventRecord,
    HostRecord,
    KeyRecord,
    ReservationRecord,
    SessionRecord,
    Snapshot,
    id_order,
)
from hwbp.server.store.identity import FileWatch
from hwbp.server.store.lock import LedgerLock

SCHEMA_VERSION = 2  # 2: the id counter (meta next_id), idempotency keys, detached tasks
BUSY_TIMEOUT = 5.0  # seconds a write waits for another writer's lock (off the event loop)
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hosts (
    name TEXT PRIMARY KEY, ncpus INTEGER NOT NULL, generation INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY, host TEXT NOT NULL, scope TEXT NOT NULL, cpu INTEGER, task INTEGER,
    addr TEXT NOT NULL, len INTEGER NOT NULL, type TEXT NOT NULL, enabled INTEGER NOT NULL,
    kernel INTEGER NOT NULL, owner TEXT NOT NULL, session TEXT, ptrace_index INTEGER,
    idempotency_key TEXT NOT NULL DEFAULT '', tracer_applied INTEGER NOT NULL DEFAULT 0,
    threads TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS attachments (
    host TEXT NOT NULL, task INTEGER NOT NULL, session TEXT NOT NULL, owner TEXT NOT NULL,
    state TEXT NOT NULL, reservations TEXT NOT NULL, attached INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (host, task));
CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, owner TEXT NOT NULL, ttl REAL NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    key TEXT PRIMARY KEY, host TEXT NOT NULL, fingerprint TEXT NOT NULL,
    reservation TEXT NOT NULL, generation INTEGER NOT NULL, applied TEXT NOT NULL,
    pending TEXT NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS keys_by_expiry ON keys (expires);
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
"""


class SqliteStore:
    def __init__(self, path: str, *, sync: str = "normal", create_parent: bool = False) -> None:
        self.path = path
        self.lock: LedgerLock | None = None
        self.watch: FileWatch | None = None
        self._broken = ""  # the ledger file is gone or replaced: no write can be durable
        if path != ":memory:":
            ledger_directory(path, create=create_parent)
            self.lock = LedgerLock.acquire(path)  # before SQLite touches anything
        try:
            self.db = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
            self.db.executescript(SCHEMA)
            _add_missing_columns(self.db)
            row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                self.db.execute("INSERT INTO meta VALUES ('next_id', '1')")
            elif row[0] == "1":
                self._migrate_from_1()
            elif row[0] != str(SCHEMA_VERSION):
                raise LedgerCorrupt(
                    f"ledger {path} has schema {row[0]}, expected {SCHEMA_VERSION}", path=path
                )
            # Everything into the ledger file itself, so its size is a floor from now on.
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._next_id = int(
                self.db.execute("SELECT value FROM meta WHERE key='next_id'").fetchone()[0]
            )
        except sqlite3.DatabaseError as err:
            self._abandon()
            raise LedgerCorrupt(
                f"ledger {path} cannot be opened: {_what(err)}", path=path
            ) from None
        except BaseException:
            self._abandon()
            raise
        if path != ":memory:":
            self.watch = FileWatch(path)

    def _migrate_from_1(self) -> None:
        """Schema 1 had no id counter: continue after the highest id still in the ledger
        (what schema 1 arbiters did); from now on the counter only grows. Its attachments
        were all attached."""
        ids = [rid for (rid,) in self.db.execute("SELECT id FROM reservations")]
        highest = max((id_order(r)[0] for r in ids if r[1:].isdigit()), default=0)
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('next_id', ?)", (str(highest + 1),))
        self.db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),))
        self.db.execute("COMMIT")

    def _abandon(self) -> None:
        with contextlib.suppress(Exception):
            self.db.close()
        if self.lock is not None:
            self.lock.release()

    def load(self) -> Snapshot:
        try:
            return self._load()
        except (sqlite3.DatabaseError, ValueError, KeyError, TypeError, IndexError) as err:
            raise LedgerCorrupt(
                f"ledger {self.path} is unreadable: {err}", path=self.path
            ) from None

    def _load(self) -> Snapshot:
        return read_snapshot(self.db, self._next_id)

    # --- writes --------------------------------------------------------------------

    def commit(self, batch: Batch) -> None:
        if not batch:
            return
        self._check()
        try:
            self._write(batch)
        except sqlite3.Error as err:
            raise LedgerWriteFailed(
                f"ledger {self.path}: {_what(err)}; nothing of the change was written",
                path=self.path,
            ) from None
        self._check()  # deleted while we wrote: what we wrote is nowhere durable
        if self.watch is not None:
            self.watch.wrote()

    def probe(self) -> None:
        """Check the files, then write nothing new (it still needs the lock and a block)."""
        self._check()
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute("UPDATE meta SET value = value WHERE key = 'schema'")
                self.db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        except sqlite3.Error as err:
            raise LedgerWriteFailed(f"ledger {self.path}: {_what(err)}", path=self.path) from None

    def _check(self) -> None:
        if not self._broken:
            problems = [] if self.lock is None else [self.lock.problem()]
            if self.watch is not None:
                problems.append(self.watch.problem())
            self._broken = "; ".join(p for p in problems if p)
        if self._broken:
            raise LedgerWriteFailed(
                f"ledger {self.path}: {self._broken}; writes are refused until the arbiter "
                "is restarted on an intact ledger",
                path=self.path,
            )

    def _write(self, batch: Batch) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT OR REPLACE INTO hosts VALUES (?, ?, ?)",
                [(h.name, h.ncpus, h.generation) for h in batch.hosts],
            )
            db.executemany("DELETE FROM hosts WHERE name = ?", [(n,) for n in batch.deleted_hosts])
            db.executemany(
                "DELETE FROM reservations WHERE id = ?", [(r,) for r in batch.deleted_reservations]
            )
            db.executemany(
                "INSERT OR REPLACE INTO reservations (id, host, scope, cpu, task, addr, len, "
                "type, enabled, kernel, owner, session, ptrace_index, idempotency_key, "
                "tracer_applied, threads) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_row(r) for r in batch.reservations],
            )
            db.executemany(
                "DELETE FROM attachments WHERE host = ? AND task = ?", batch.deleted_attachments
            )
            db.executemany(
                "INSERT OR REPLACE INTO attachments "
                "(host, task, session, owner, state, reservations, attached) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        a.host,
                        a.task,
                        a.session,
                        a.owner,
                        json.dumps(_state_json(a.state)),
                        json.dumps(list(a.reservations)),
                        int(a.attached),
                    )
                    for a in batch.attachments
                ],
            )
            db.executemany(
                "DELETE FROM sessions WHERE id = ?", [(s,) for s in batch.deleted_sessions]
            )
            db.executemany(
                "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?)",
                [(s.id, s.owner, s.ttl) for s in batch.sessions],
            )
            if batch.keys_expired_before is not None:
                db.execute("DELETE FROM keys WHERE expires < ?", (batch.keys_expired_before,))
            db.executemany(
                "INSERT OR REPLACE INTO keys VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        k.key,
                        k.host,
                        k.fingerprint,
                        json.dumps(_row(ReservationRecord(k.reservation))),
                        k.generation,
                        json.dumps(list(k.applied)),
                        json.dumps(list(k.pending)),
                        k.expires,
                    )
                    for k in batch.keys
                ],
            )
            if batch.next_id > self._next_id:
                db.execute("UPDATE meta SET value = ? WHERE key = 'next_id'", (str(batch.next_id),))
            _write_events(db, batch)
            db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._next_id = max(self._next_id, batch.next_id)

    def _rollback(self) -> None:
        """SQLite may have rolled back already (SQLITE_FULL does): never mask the cause."""
        if self.db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")

    def close(self) -> None:
        self.db.close()
        if self.lock is not None:
            self.lock.release()


def _write_events(db: sqlite3.Connection, batch: Batch) -> None:
    """The batch's change-log events, and the window's new lower end (it only grows)."""
    db.executemany(
        "INSERT OR REPLACE INTO events VALUES (?, ?)", [(e.seq, e.body) for e in batch.events]
    )
    through = batch.events_trimmed_through
    if through:
        db.execute("DELETE FROM events WHERE seq <= ?", (through,))
        db.execute(
            "INSERT INTO meta VALUES ('events_trimmed', ?) ON CONFLICT(key) DO UPDATE SET "
            "value = excluded.value WHERE CAST(excluded.value AS INTEGER) > CAST(value AS INTEGER)",
            (str(through),),
        )


def read_snapshot(db: sqlite3.Connection, next_id: int | None = None) -> Snapshot:
    """Everything a ledger holds, from an open connection (``next_id``: the counter as
    known, else read from its meta table). Raises what SQLite or a bad row raises."""
    if next_id is None:
        row = db.execute("SELECT value FROM meta WHERE key='next_id'").fetchone()
        next_id = 1 if row is None else int(row[0])
    hosts = tuple(
        HostRecord(n, c, g)
        for n, c, g in db.execute("SELECT name, ncpus, generation FROM hosts ORDER BY name")
    )
    res = [
        _reservation(row)
        for row in db.execute(
            "SELECT id, host, scope, cpu, task, addr, len, type, enabled, kernel, owner, "
            "session, ptrace_index, idempotency_key, tracer_applied, threads FROM reservations"
        )
    ]
    res.sort(key=lambda r: id_order(r.reservation.id))
    atts = tuple(
        AttachmentRecord(
            h,
            t,
            s,
            o,
            _state(json.loads(st)),
            tuple((int(i), str(r)) for i, r in json.loads(rs)),
            bool(at),
        )
        for h, t, s, o, st, rs, at in db.execute(
            "SELECT host, task, session, owner, state, reservations, attached FROM attachments"
        )
    )
    sessions = tuple(
        SessionRecord(i, o, t) for i, o, t in db.execute("SELECT id, owner, ttl FROM sessions")
    )
    keys = tuple(
        KeyRecord(
            str(k),
            str(h),
            str(f),
            _key_reservation(json.loads(r)),
            int(g),
            tuple(int(c) for c in json.loads(a)),
            tuple(int(c) for c in json.loads(p)),
            float(e),
        )
        for k, h, f, r, g, a, p, e in db.execute(
            "SELECT key, host, fingerprint, reservation, generation, applied, pending, "
            "expires FROM keys ORDER BY expires"
        )
    )
    events = tuple(
        EventRecord(int(q), bytes(b))
        for q, b in db.execute("SELECT seq, body FROM events ORDER BY seq")
    )
    row = db.execute("SELECT value FROM meta WHERE key='events_trimmed'").fetchone()
    trimmed = 0 if row is None else int(row[0])
    return Snapshot(hosts, tuple(res), atts, sessions, keys, next_id, events, trimmed)


def ledger_directory(path: str, *, create: bool = False) -> Path:
    """The directory a ledger file lives in, which must exist: a ``--db`` with a typo
    must not start a fresh, empty ledger where nobody looks. ``create``: make it (the
    arbiter's own default, ``var/``, on a first run)."""
    parent = Path(path).parent
    if create:
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise LedgerWriteFailed(
                f"ledger {path}: cannot create its directory {parent}: {err.strerror}", path=path
            ) from None
    if not parent.is_dir():
        why = "is not a directory" if parent.exists() else "does not exist"
        raise LedgerWriteFailed(
            f"ledger {path}: its directory {parent} {why}; create it first, or pass another "
            "--db (':memory:' keeps nothing)",
            path=path,
        )
    return parent


def _what(err: sqlite3.Error) -> str:
    """SQLite's refusal in words, with its code: a full disk says so."""
    name = str(getattr(err, "sqlite_errorname", "") or "")
    if name.startswith("SQLITE_FULL"):
        return f"disk full ({name}: {err})"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return (
            f"locked by another writer for more than {BUSY_TIMEOUT:g}s ({name}: {err}); "
            "is another process writing to the ledger?"
        )
    if name.startswith("SQLITE_READONLY") or name == "SQLITE_CANTOPEN":
        return f"read-only or cannot be opened for writing ({name}: {err})"
    return f"{name}: {err}" if name else str(err)


# Columns added after schema 1 was written: (table, column, its definition with the
# default an older ledger's rows take). A schema 1 ledger's attachments were all attached.
ADDED_COLUMNS = (
    ("reservations", "tracer_applied", "INTEGER NOT NULL DEFAULT 0"),
    ("reservations", "threads", "TEXT NOT NULL DEFAULT ''"),  # a process's, space-separated
    ("attachments", "attached", "INTEGER NOT NULL DEFAULT 1"),
)


def bring_up_to_date(db: sqlite3.Connection) -> None:
    """Give a copy of an older ledger today's tables and columns (for reading it)."""
    db.executescript(SCHEMA)
    _add_missing_columns(db)


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """A ledger from before a column was added gets it, defaulted (whichever tables the
    older ledger had: one that lacked a table gets it whole from SCHEMA)."""
    for table, column, definition in ADDED_COLUMNS:
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")


def _key_reservation(row: list[object]) -> Reservation:
    """A key's reservation, stored as a row; an older ledger's rows are shorter (without
    ``tracer_applied`` or ``threads``): the missing columns take their defaults."""
    return _reservation((*row, *[""] * (ROW_WIDTH - len(row)))).reservation


ROW_WIDTH = 16  # the columns of a reservation row, as _row writes them


def _row(rec: ReservationRecord) -> tuple[object, ...]:
    r = rec.reservation
    return (
        r.id,
        r.host,
        r.target.scope.value,
        r.target.cpu,
        r.target.task,
        str(r.bp.addr),
        r.bp.length,
        r.bp.type.value,
        int(r.bp.enabled),
        int(r.bp.kernel),
        r.owner,
        r.session,
        r.ptrace_index,
        rec.idempotency_key,
        int(r.bp.tracer_applied),
        " ".join(map(str, r.target.threads)),
    )


def _reservation(row: tuple[object, ...]) -> ReservationRecord:
    (rid, host, scope, cpu, task, addr, length, typ, enabled, kernel, owner, session, pidx, key) = (
        row[:14]
    )
    tracer = bool(row[14])
    threads = tuple(int(t) for t in str(row[15] or "").split())
    res = Reservation(
        id=str(rid),
        host=str(host),
        target=Target(
            Scope(scope),
            cpu=None if cpu is None else int(str(cpu)),
            task=None if task is None else int(str(task)),
            threads=threads,
        ),
        bp=Breakpoint(
            int(str(addr)), int(str(length)), BpType(typ), bool(enabled), bool(kernel), tracer
        ),
        owner=str(owner),
        session=None if session is None else str(session),
        ptrace_index=None if pidx is None else int(str(pidx)),
    )
    return ReservationRecord(res, str(key))


def _state_json(state: PtraceState) -> dict[str, object]:
    return {
        "bps": [
            None if b is None else [str(b.addr), b.length, b.type.value, b.enabled]
            for b in state.bps
        ],
        "dr7": str(state.dr7),
        "virtual_dr6": str(state.virtual_dr6),
    }


def _state(data: dict[str, Any]) -> PtraceState:
    bps = tuple(
        None if b is None else Breakpoint(int(b[0]), int(b[1]), BpType(b[2]), bool(b[3]))
        for b in data["bps"]
    )
    return PtraceState(
        bps=bps, dr7=int(str(data["dr7"])), virtual_dr6=int(str(data["virtual_dr6"]))
    )
