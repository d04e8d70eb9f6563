"""The SQLite store (stdlib sqlite3, WAL): one transaction per committed batch.

``synchronous=NORMAL`` in WAL mode makes a commit durable against a crash of the arbiter
(kill -9) as soon as it returns; ``sync="full"`` also survives power loss, at an fsync
per commit.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from hwbp.errors import LedgerCorrupt
from hwbp.model import BpType, Breakpoint, Reservation, Scope, Target
from hwbp.ptrace import PtraceState
from hwbp.server.store.base import (
    AttachmentRecord,
    Batch,
    HostRecord,
    ReservationRecord,
    SessionRecord,
    Snapshot,
    id_order,
)

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hosts (
    name TEXT PRIMARY KEY, ncpus INTEGER NOT NULL, generation INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY, host TEXT NOT NULL, scope TEXT NOT NULL, cpu INTEGER, task INTEGER,
    addr TEXT NOT NULL, len INTEGER NOT NULL, type TEXT NOT NULL, enabled INTEGER NOT NULL,
    kernel INTEGER NOT NULL, owner TEXT NOT NULL, session TEXT, ptrace_index INTEGER,
    idempotency_key TEXT NOT NULL DEFAULT '', tracer_applied INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS attachments (
    host TEXT NOT NULL, task INTEGER NOT NULL, session TEXT NOT NULL, owner TEXT NOT NULL,
    state TEXT NOT NULL, reservations TEXT NOT NULL, PRIMARY KEY (host, task));
CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, owner TEXT NOT NULL, ttl REAL NOT NULL);
"""


class SqliteStore:
    def __init__(self, path: str, *, sync: str = "normal") -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
            self.db.executescript(SCHEMA)
            _add_missing_columns(self.db)
            row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError as err:
            raise LedgerCorrupt(f"ledger {path} cannot be opened: {err}", path=path) from None
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif row[0] != str(SCHEMA_VERSION):
            raise LedgerCorrupt(
                f"ledger {path} has schema {row[0]}, expected {SCHEMA_VERSION}", path=path
            )

    def load(self) -> Snapshot:
        try:
            return self._load()
        except (sqlite3.DatabaseError, ValueError, KeyError, TypeError) as err:
            raise LedgerCorrupt(
                f"ledger {self.path} is unreadable: {err}", path=self.path
            ) from None

    def _load(self) -> Snapshot:
        db = self.db
        hosts = tuple(
            HostRecord(n, c, g)
            for n, c, g in db.execute("SELECT name, ncpus, generation FROM hosts ORDER BY name")
        )
        res = [
            _reservation(row)
            for row in db.execute(
                "SELECT id, host, scope, cpu, task, addr, len, type, enabled, kernel, owner, "
                "session, ptrace_index, idempotency_key, tracer_applied FROM reservations"
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
            )
            for h, t, s, o, st, rs in db.execute(
                "SELECT host, task, session, owner, state, reservations FROM attachments"
            )
        )
        sessions = tuple(
            SessionRecord(i, o, t) for i, o, t in db.execute("SELECT id, owner, ttl FROM sessions")
        )
        return Snapshot(hosts, tuple(res), atts, sessions)

    def commit(self, batch: Batch) -> None:
        if not batch:
            return
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT OR REPLACE INTO hosts VALUES (?, ?, ?)",
                [(h.name, h.ncpus, h.generation) for h in batch.hosts],
            )
            db.executemany(
                "DELETE FROM reservations WHERE id = ?", [(r,) for r in batch.deleted_reservations]
            )
            db.executemany(
                "INSERT OR REPLACE INTO reservations VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_row(r) for r in batch.reservations],
            )
            db.executemany(
                "DELETE FROM attachments WHERE host = ? AND task = ?", batch.deleted_attachments
            )
            db.executemany(
                "INSERT OR REPLACE INTO attachments VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        a.host,
                        a.task,
                        a.session,
                        a.owner,
                        json.dumps(_state_json(a.state)),
                        json.dumps(list(a.reservations)),
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
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Columns added after schema 1 was written: a ledger from before gets them, defaulted."""
    have = {row[1] for row in db.execute("PRAGMA table_info(reservations)")}
    if "tracer_applied" not in have:
        db.execute("ALTER TABLE reservations ADD COLUMN tracer_applied INTEGER NOT NULL DEFAULT 0")


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
    )


def _reservation(row: tuple[object, ...]) -> ReservationRecord:
    (rid, host, scope, cpu, task, addr, length, typ, enabled, kernel, owner, session, pidx, key) = (
        row[:14]
    )
    tracer = bool(row[14])
    res = Reservation(
        id=str(rid),
        host=str(host),
        target=Target(
            Scope(scope),
            cpu=None if cpu is None else int(str(cpu)),
            task=None if task is None else int(str(task)),
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
    )  # type: ignore[attr-defined]
    return PtraceState(
        bps=bps, dr7=int(str(data["dr7"])), virtual_dr6=int(str(data["virtual_dr6"]))
    )
