"""Between the live arbiter and its store: restore at start, write each committed change.

A change is written in the same step that commits it, before any caller hears success;
if the write fails, the change is rolled back like a refused reload. On start the whole
ledger is re-admitted through the core (admission and validation) and checked with its
invariant check: an inconsistent ledger is refused with a clear message, never
half-loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from hwbp.errors import HwbpError, LedgerCorrupt
from hwbp.server.fleet import Fleet
from hwbp.server.hosts import Attachment, Host
from hwbp.server.sessions import Session, SessionTable
from hwbp.server.store import Batch, Store
from hwbp.server.store.base import (
    AttachmentRecord,
    HostRecord,
    ReservationRecord,
    SessionRecord,
    id_order,
)

log = logging.getLogger("hwbp.server")


@dataclass(frozen=True)
class Restored:
    hosts: int
    reservations: int
    attachments: int
    sessions: int


class Persistence:
    def __init__(self, store: Store, fleet: Fleet, sessions: SessionTable) -> None:
        self.store = store
        self.fleet = fleet
        self.sessions = sessions

    # --- start-up ----------------------------------------------------------------

    def restore(self) -> Restored:
        snap = self.store.load()
        fleet = self.fleet
        for h in snap.hosts:
            host = fleet.ensure_host(h.name, h.ncpus)
            host.generation = h.generation
        highest = 0
        for rec in snap.reservations:
            res = rec.reservation
            owner = fleet.hosts.get(res.host)
            if owner is None:
                raise LedgerCorrupt(f"reservation {res.id} names unknown host {res.host!r}")
            try:
                owner.ledger.reserve(res)
            except HwbpError as err:
                raise LedgerCorrupt(
                    f"reservation {res.id} on {res.host} cannot be re-admitted: {err}",
                    reservation=res.id,
                ) from None
            fleet.remember(rec.idempotency_key, res.host, res.id)
            highest = max(highest, id_order(res.id)[0] if res.id[1:].isdigit() else 0)
        fleet.reseed_ids(max(highest + 1, snap.next_id))
        for a in snap.attachments:
            traced = fleet.hosts.get(a.host)
            if traced is None or any(rid not in traced.ledger for _, rid in a.reservations):
                raise LedgerCorrupt(
                    f"ptrace attachment of task {a.task} on {a.host} names "
                    "reservations that do not exist"
                )
            traced.attachments[a.task] = Attachment(
                a.session, a.owner, a.state, dict(a.reservations)
            )
        now = self.sessions.clock()
        for s in snap.sessions:
            # A fresh grace period: live clients get a full TTL to reconnect.
            self.sessions.sessions[s.id] = Session(s.id, s.owner, s.ttl, now + s.ttl)
        for host in fleet.hosts.values():
            try:
                host.ledger.validate()
            except HwbpError as err:
                raise LedgerCorrupt(f"ledger of host {host.name} is inconsistent: {err}") from None
            for res in host.ledger:
                if res.session and res.session not in self.sessions.sessions:
                    raise LedgerCorrupt(
                        f"reservation {res.id} belongs to unknown session {res.session}"
                    )
        return Restored(
            len(snap.hosts), len(snap.reservations), len(snap.attachments), len(snap.sessions)
        )

    # --- writes ------------------------------------------------------------------

    def host_committed(self, host: Host, touched: set[str]) -> None:
        batch = Batch(hosts=[HostRecord(host.name, host.ncpus, host.generation)])
        for rid in touched:
            if rid in host.ledger:
                key = self.fleet.pending_keys.pop(rid, "")
                batch.reservations.append(ReservationRecord(host.ledger.get(rid), key))
            else:
                self.fleet.pending_keys.pop(rid, None)
                batch.deleted_reservations.append(rid)
        for task in host.dirty_tasks:
            att = host.attachments.get(task)
            if att is None:
                batch.deleted_attachments.append((host.name, task))
            else:
                batch.attachments.append(
                    AttachmentRecord(
                        host.name,
                        task,
                        att.session,
                        att.owner,
                        att.state,
                        tuple(sorted(att.reservations.items())),
                    )
                )
        self.store.commit(batch)
        host.dirty_tasks.clear()

    def host_created(self, host: Host) -> None:
        self.store.commit(Batch(hosts=[HostRecord(host.name, host.ncpus, host.generation)]))

    def session_opened(self, session: Session) -> None:
        self.store.commit(Batch(sessions=[SessionRecord(session.id, session.owner, session.ttl)]))

    def session_ended(self, sid: str) -> None:
        self.store.commit(Batch(deleted_sessions=[sid]))
