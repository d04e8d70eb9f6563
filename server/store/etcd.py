"""The etcd store: the ledger in a replicated key-value store, one txn per committed batch.

Key layout under the prefix P (``--store-prefix``, default ``/hwbp``); names inside keys
are percent-encoded, values are JSON (UTF-8) unless said otherwise:

    P/schema                      "1": the layout version
    P/leader                      the leader's advertised HOST:PORT (plain text), attached
                                  to its lease; its create revision is the fencing token
    P/members/HOST:PORT           a replica, attached to its lease: {"address", "pid"}
    P/ids                         the id counter: the next reservation number (plain text)
    P/hosts/NAME                  {"name", "ncpus", "generation"}
    P/reservations/ID             the reservation (target, breakpoint, owner, session...)
    P/attachments/HOST/TASK       a ptrace attachment: session, owner, state, registers
    P/sessions/ID                 {"id", "owner", "ttl"}
    P/keys/KEY                    an idempotency key (scoped to its caller) and the answer
                                  a retried reserve gets, with its wall-clock expiry
    P/keyexp/EXPIRES/KEY          (empty) the keys by expiry, so expired ones are found
                                  with one range read
    P/events/SEQ                  a change-log event (a serialized hwbp.v1.Event, binary),
                                  SEQ zero-padded to 20 digits so keys sort by seq
    P/eventtrim                   events up to this seq may have been dropped (plain text)

A commit is one etcd transaction: every put and delete of the batch, plus the id
counter when it grew (it never goes back). While the store is *fenced* (a leader
holds ``P/leader`` created at revision R), the transaction also compares the leader
key's create revision with R: a replica whose key expired (it was paused, or cut off)
can never commit, whatever it believes. A write whose outcome is unknown (etcd did not
answer in time) also ends the fence: the replica must reload what etcd holds before it
writes again, or its memory could differ from the ledger.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aetcd

from hwbp.errors import LeadershipLost, LedgerCorrupt, LedgerWriteFailed
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
from hwbp.server.store.etcd_io import EtcdConfig, EtcdLoop

log = logging.getLogger("hwbp.server")
SCHEMA_VERSION = "1"
# etcd refuses a txn with more operations than its --max-txn-ops (default 128).
TXN_HINT = "start etcd with a larger --max-txn-ops (make run-ha uses 10000)"


class EtcdStore:
    def __init__(self, config: EtcdConfig, *, io: EtcdLoop | None = None) -> None:
        self.config = config
        self.prefix = config.prefix
        self.io = io or EtcdLoop(config)
        self._own_io = io is None
        self.fence_revision: int | None = None  # set while this replica leads
        self.refused = ""  # why writes are refused until the next fence
        self.on_lost: Callable[[int, str], None] | None = None  # (revision, why)
        self.on_txn: Callable[[float, str], None] | None = None  # (seconds, result)
        self._next_id = 1  # what P/ids holds
        self._trimmed = 0  # what P/eventtrim holds
        self._check_schema()
        self._next_id = self._read_next_id()
        got = self.io.call(self.io.client.get(self.key("eventtrim")))
        self._trimmed = 0 if got is None else int(got.value)

    # --- keys --------------------------------------------------------------------

    def key(self, *parts: object) -> bytes:
        return "/".join([self.prefix, *(quote(str(p), safe=":") for p in parts)]).encode()

    @property
    def leader_key(self) -> bytes:
        return self.key("leader")

    # --- fencing -----------------------------------------------------------------

    def fence(self, revision: int) -> None:
        """Every commit from now on requires the leader key created at ``revision``."""
        self.fence_revision = revision
        self.refused = ""

    def unfence(self, reason: str) -> None:
        self.fence_revision = None
        self.refused = reason

    # --- the Store interface -----------------------------------------------------

    def load(self) -> Snapshot:
        try:
            rows = self.io.call(self._get_prefix())
        except Exception as err:
            raise LedgerWriteFailed(f"etcd {self.config.describe()} unreachable: {err}") from None
        try:
            return self._decode(rows)
        except (ValueError, KeyError, TypeError) as err:
            raise LedgerCorrupt(
                f"ledger in etcd {self.config.describe()} is unreadable: {err}"
            ) from None

    def probe(self) -> None:
        """Whether etcd answers (a linearizable read). A follower's store refuses writes
        by design; that is not a problem of the ledger, so it is not checked here."""
        try:
            self.io.call(self.io.client.get(self.key("schema")))
        except Exception as err:
            raise LedgerWriteFailed(
                f"etcd {self.config.describe()} is unreachable: {_explain(err)}",
                store=self.config.describe(),
            ) from None

    def commit(self, batch: Batch) -> None:
        """Apply ``batch`` in one transaction; returns once etcd committed it."""
        if not batch:
            return
        fence = self.fence_revision
        if self.refused:
            raise LeadershipLost(f"not written: {self.refused}", revision=fence or 0)
        start = time.perf_counter()
        try:
            expired = self._expired(batch)
            ops, next_id = self._ops(batch, expired)
            ok = self.io.call(self._txn(ops, fence))
        except Exception as err:
            self._observe(start, "error")
            why = _explain(err)
            if fence is not None:
                # Unknown outcome: our memory may now differ from etcd. Reload first.
                self._lose(fence, f"etcd did not confirm a write ({why})")
            raise LedgerWriteFailed(
                f"the change could not be written to etcd {self.config.describe()} ({why}); "
                "it was rolled back",
                store=self.config.describe(),
            ) from None
        if not ok:
            self._observe(start, "fenced")
            assert fence is not None  # an unfenced txn compares nothing
            self._lose(fence, "the leader key is no longer this replica's")
            raise LeadershipLost(
                "this arbiter is no longer the leader: its write was refused by etcd and "
                "nothing was stored; retry on the leader",
                revision=fence,
            )
        self._observe(start, "ok")
        self._next_id = max(self._next_id, next_id)
        self._trimmed = max(self._trimmed, batch.events_trimmed_through)

    async def commit_async(self, batch: Batch) -> None:
        """``commit`` for an asyncio caller: the wait happens off its loop."""
        await asyncio.get_running_loop().run_in_executor(None, self.commit, batch)

    def close(self) -> None:
        if self._own_io:
            self.io.close()

    # --- etcd calls (run on the etcd thread) --------------------------------------

    async def _get_prefix(self) -> list[tuple[bytes, bytes]]:
        got = await self.io.client.get_prefix(self.prefix.encode() + b"/")
        return [(kv.key, kv.value) for kv in got]

    def _read_next_id(self) -> int:
        got = self.io.call(self.io.client.get(self.key("ids")))
        return 1 if got is None else int(got.value)

    def _expired(self, batch: Batch) -> list[tuple[bytes, bytes]]:
        """(index key, record key) of key records that expire before the batch's
        ``keys_expired_before`` (one range read of the index, then each record, since
        a key written again since has a newer expiry and stays)."""
        before = batch.keys_expired_before
        if before is None:
            return []

        async def find() -> list[tuple[bytes, bytes]]:
            client = self.io.client
            start = self.key("keyexp") + b"/"
            end = self.key("keyexp", _stamp(before))
            out = []
            for kv in await client.get_range(start, end):
                quoted = kv.key[len(start) :].split(b"/", 1)[1]
                record = self.prefix.encode() + b"/keys/" + quoted
                got = await client.get(record)
                stale = got is None or float(json.loads(got.value)["expires"]) < before
                out.append((kv.key, record if stale else b""))
            return out

        return self.io.call(find())

    async def _txn(self, ops: list[object], fence: int | None) -> bool:
        client = self.io.client
        compare = []
        if fence is not None:
            compare.append(client.transactions.create(self.leader_key) == fence)
        ok, _ = await client.transaction(compare=compare, success=ops, failure=[])
        return bool(ok)

    def _check_schema(self) -> None:
        async def check() -> bytes:
            client = self.io.client
            key = self.key("schema")
            _, got = await client.transaction(
                compare=[client.transactions.version(key) == 0],
                success=[client.transactions.put(key, SCHEMA_VERSION.encode())],
                failure=[client.transactions.get(key)],
            )
            return got[0][0][0] if got and isinstance(got[0], list) else SCHEMA_VERSION.encode()

        try:
            found = self.io.call(check())
        except Exception as err:
            if self._own_io:
                self.io.close()
            raise LedgerCorrupt(
                f"etcd {self.config.describe()} is unreachable: {_explain(err)}"
            ) from None
        if found.decode(errors="replace") != SCHEMA_VERSION:
            raise LedgerCorrupt(
                f"ledger in etcd {self.config.describe()} has schema {found!r}, "
                f"expected {SCHEMA_VERSION}"
            )

    # --- encoding ----------------------------------------------------------------

    def _ops(self, batch: Batch, expired: list[tuple[bytes, bytes]]) -> tuple[list[object], int]:
        t = aetcd.Transactions()
        ops: list[object] = []
        rewritten = {self.key("keys", k.key) for k in batch.keys}
        for index, record in expired:
            ops.append(t.delete(index))
            if record and record not in rewritten:
                ops.append(t.delete(record))
        for k in batch.keys:
            ops.append(t.put(self.key("keys", k.key), _dump(_key(k))))
            ops.append(t.put(self.key("keyexp", _stamp(k.expires), k.key), b""))
        for h in batch.hosts:
            ops.append(t.put(self.key("hosts", h.name), _dump(_host(h))))
        for name in batch.deleted_hosts:
            ops.append(t.delete(self.key("hosts", name)))
        for rid in batch.deleted_reservations:
            ops.append(t.delete(self.key("reservations", rid)))
        next_id = max(self._next_id, batch.next_id)
        for rec in batch.reservations:
            rid = rec.reservation.id
            ops.append(t.put(self.key("reservations", rid), _dump(_reservation(rec))))
            number = id_order(rid)[0]
            if rid[1:].isdigit() and number >= next_id:
                next_id = number + 1
        if next_id > self._next_id:
            ops.append(t.put(self.key("ids"), str(next_id).encode()))
        for host, task in batch.deleted_attachments:
            ops.append(t.delete(self.key("attachments", host, task)))
        for a in batch.attachments:
            ops.append(t.put(self.key("attachments", a.host, a.task), _dump(_attachment(a))))
        for sid in batch.deleted_sessions:
            ops.append(t.delete(self.key("sessions", sid)))
        for s in batch.sessions:
            doc = {"id": s.id, "owner": s.owner, "ttl": s.ttl}
            ops.append(t.put(self.key("sessions", s.id), _dump(doc)))
        for e in batch.events:
            ops.append(t.put(self.key("events", _seq(e.seq)), e.body))
        if batch.events_trimmed_through > self._trimmed:  # the window only moves forward
            through = batch.events_trimmed_through
            start = self.key("events") + b"/"
            ops.append(t.delete(start, range_end=self.key("events", _seq(through + 1))))
            ops.append(t.put(self.key("eventtrim"), str(through).encode()))
        return ops, next_id

    def _decode(self, rows: list[tuple[bytes, bytes]]) -> Snapshot:
        base = len(self.prefix) + 1
        hosts, res, atts, sessions, keys = [], [], [], [], []
        events: list[EventRecord] = []
        next_id, trimmed = 1, 0
        for raw_key, value in rows:
            kind = raw_key.decode()[base:].split("/", 1)[0]
            if kind == "hosts":
                d = json.loads(value)
                hosts.append(HostRecord(str(d["name"]), int(d["ncpus"]), int(d["generation"])))
            elif kind == "reservations":
                res.append(_reservation_from(json.loads(value)))
            elif kind == "attachments":
                atts.append(_attachment_from(json.loads(value)))
            elif kind == "sessions":
                d = json.loads(value)
                sessions.append(SessionRecord(str(d["id"]), str(d["owner"]), float(d["ttl"])))
            elif kind == "keys":
                keys.append(_key_from(json.loads(value)))
            elif kind == "ids":
                next_id = int(value)
            elif kind == "events":
                events.append(EventRecord(int(raw_key.decode().rsplit("/", 1)[1]), value))
            elif kind == "eventtrim":
                trimmed = int(value)
        res.sort(key=lambda r: id_order(r.reservation.id))
        numbered = [id_order(r.reservation.id)[0] for r in res if r.reservation.id[1:].isdigit()]
        self._next_id = next_id
        self._trimmed = trimmed
        next_id = max(next_id, max(numbered, default=0) + 1)
        hosts.sort(key=lambda h: h.name)
        keys.sort(key=lambda k: k.expires)
        return Snapshot(
            tuple(hosts),
            tuple(res),
            tuple(atts),
            tuple(sessions),
            keys=tuple(keys),
            next_id=next_id,
            events=tuple(sorted((e for e in events if e.seq > trimmed), key=lambda e: e.seq)),
            events_trimmed_through=trimmed,
        )

    # --- helpers -----------------------------------------------------------------

    def _lose(self, fence: int, reason: str) -> None:
        self.unfence(reason)
        log.error("etcd store: writes refused until this replica leads again: %s", reason)
        if self.on_lost is not None:
            self.on_lost(fence, reason)

    def _observe(self, start: float, result: str) -> None:
        if self.on_txn is not None:
            self.on_txn(time.perf_counter() - start, result)


def _explain(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if "too many operations" in text:
        return f"{text}: {TXN_HINT}"
    return text


def _seq(seq: int) -> str:
    return f"{seq:020d}"


def _dump(doc: dict[str, object]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def _host(h: HostRecord) -> dict[str, object]:
    return {"name": h.name, "ncpus": h.ncpus, "generation": h.generation}


def _reservation(rec: ReservationRecord) -> dict[str, object]:
    r = rec.reservation
    return {
        "id": r.id,
        "host": r.host,
        "scope": r.target.scope.value,
        "cpu": r.target.cpu,
        "task": r.target.task,
        "threads": list(r.target.threads),
        "addr": r.bp.addr,
        "len": r.bp.length,
        "type": r.bp.type.value,
        "enabled": r.bp.enabled,
        "kernel": r.bp.kernel,
        "tracer_applied": r.bp.tracer_applied,
        "owner": r.owner,
        "session": r.session,
        "ptrace_index": r.ptrace_index,
        "key": rec.idempotency_key,
    }


def _reservation_from(d: dict[str, Any]) -> ReservationRecord:
    return ReservationRecord(_res_from(d), str(d.get("key", "")))


def _res_from(d: dict[str, Any]) -> Reservation:
    cpu, task, pidx = d["cpu"], d["task"], d["ptrace_index"]
    res = Reservation(
        id=str(d["id"]),
        host=str(d["host"]),
        target=Target(
            Scope(d["scope"]),
            cpu=None if cpu is None else int(cpu),
            task=None if task is None else int(task),
            threads=tuple(int(t) for t in d.get("threads", ())),
        ),
        bp=Breakpoint(
            int(d["addr"]),
            int(d["len"]),
            BpType(d["type"]),
            bool(d["enabled"]),
            bool(d["kernel"]),
            bool(d.get("tracer_applied", False)),
        ),
        owner=str(d["owner"]),
        session=None if d["session"] is None else str(d["session"]),
        ptrace_index=None if pidx is None else int(pidx),
    )
    return res


def _attachment(a: AttachmentRecord) -> dict[str, object]:
    return {
        "host": a.host,
        "task": a.task,
        "session": a.session,
        "owner": a.owner,
        "bps": [
            None if b is None else [b.addr, b.length, b.type.value, b.enabled] for b in a.state.bps
        ],
        "dr7": a.state.dr7,
        "virtual_dr6": a.state.virtual_dr6,
        "reservations": [list(pair) for pair in a.reservations],
        "attached": a.attached,
    }


def _attachment_from(d: dict[str, Any]) -> AttachmentRecord:
    bps = tuple(
        None if b is None else Breakpoint(int(b[0]), int(b[1]), BpType(b[2]), bool(b[3]))
        for b in d["bps"]
    )
    state = PtraceState(bps=bps, dr7=int(d["dr7"]), virtual_dr6=int(d["virtual_dr6"]))
    pairs = tuple((int(i), str(r)) for i, r in d["reservations"])
    return AttachmentRecord(
        str(d["host"]),
        int(d["task"]),
        str(d["session"]),
        str(d["owner"]),
        state,
        pairs,
        bool(d.get("attached", True)),
    )


def _stamp(expires: float) -> str:
    """An expiry that sorts as text: zero-padded milliseconds since the epoch."""
    return f"{max(0, round(expires * 1000)):016d}"


def _key(k: KeyRecord) -> dict[str, object]:
    return {
        "key": k.key,
        "host": k.host,
        "fingerprint": k.fingerprint,
        "reservation": _reservation(ReservationRecord(k.reservation)),
        "generation": k.generation,
        "applied": list(k.applied),
        "pending": list(k.pending),
        "expires": k.expires,
    }


def _key_from(d: dict[str, Any]) -> KeyRecord:
    return KeyRecord(
        str(d["key"]),
        str(d["host"]),
        str(d["fingerprint"]),
        _res_from(d["reservation"]),
        int(d["generation"]),
        tuple(int(c) for c in d["applied"]),
        tuple(int(c) for c in d["pending"]),
        float(d["expires"]),
    )
