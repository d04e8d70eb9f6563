"""Between the live arbiter and its store: restore at start, write each committed change.

A change is written in the same step that commits it, before any caller hears success;
if the write fails, the change is rolled back like a refused reload. Each host batch
also carries the reservation id counter and the idempotency keys its reserves bound, so
neither an id nor a key's answer is lost by a restart. Writes go through the
``LedgerWriter`` thread, never on the event loop.

On start the whole ledger is re-admitted through the core (admission and validation)
and checked with its invariant check: an inconsistent ledger is refused with a clear
message, never half-loaded. Idempotency keys come back with their fingerprint, their
caller's scope (inside the key) and what is left of their lifetime.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from hwbp.errors import HwbpError, LedgerCorrupt
from hwbp.model import Reservation
from hwbp.pipeline import Outcome, Persist
from hwbp.server.fleet import ChangeEvents, Fleet
from hwbp.server.host_shell import HostShell
from hwbp.server.hosts import Attachment, Host
from hwbp.server.sessions import Session, SessionTable
from hwbp.server.store import Batch
from hwbp.server.store.base import (
    AttachmentRecord,
    HostRecord,
    KeyRecord,
    ReservationRecord,
    SessionRecord,
    Snapshot,
    id_order,
)
from hwbp.server.store.writer import LedgerWriter

log = logging.getLogger("hwbp.server")
PRUNE_EVERY = 60.0  # seconds between deletions of expired keys from the ledger


@dataclass(frozen=True)
class Restored:
    hosts: int
    reservations: int
    attachments: int
    sessions: int
    keys: int


class Persistence:
    def __init__(
        self,
        writer: LedgerWriter,
        fleet: Fleet,
        sessions: SessionTable,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.writer = writer
        self.fleet = fleet
        self.sessions = sessions
        self.wall = wall  # key expiry outlives the process: wall-clock time
        self._pruned = 0.0

    # --- start-up ----------------------------------------------------------------

    def restore(self, now: float) -> Restored:
        """Load the ledger into the fleet; ``now`` is the event loop's clock."""
        snap = self.writer.store.load()
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
            highest = max(highest, id_order(res.id)[0] if res.id[1:].isdigit() else 0)
        fleet.reseed_ids(max(snap.next_id, highest + 1))
        fleet.changes.restore(snap.events, snap.events_trimmed_through)
        fleet.bus.change_seq = fleet.changes.last
        for a in snap.attachments:
            traced = fleet.hosts.get(a.host)
            if traced is None or any(rid not in traced.ledger for _, rid in a.reservations):
                raise LedgerCorrupt(
                    f"ptrace attachment of task {a.task} on {a.host} names "
                    "reservations that do not exist"
                )
            traced.attachments[a.task] = Attachment(
                a.session, a.owner, a.state, dict(a.reservations), attached=a.attached
            )
        clock = self.sessions.clock()
        for s in snap.sessions:
            # A fresh grace period: live clients get a full TTL to reconnect.
            self.sessions.sessions[s.id] = Session(s.id, s.owner, s.ttl, clock + s.ttl)
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
            for task, att in host.attachments.items():
                if att.session and att.session not in self.sessions.sessions:
                    raise LedgerCorrupt(
                        f"ptrace attachment of task {task} on {host.name} belongs to "
                        f"unknown session {att.session}"
                    )
        keys = self._restore_keys(snap, now)
        return Restored(
            len(snap.hosts),
            len(snap.reservations),
            len(snap.attachments),
            len(snap.sessions),
            keys,
        )

    def _restore_keys(self, snap: Snapshot, now: float) -> int:
        """Committed keys still within their lifetime, oldest first (the table's order)."""
        table, wall, kept = self.fleet.keys, self.wall(), 0
        for k in snap.keys:
            left = k.expires - wall
            if left <= 0:
                continue
            outcome = Outcome(k.reservation, k.generation, k.applied, k.pending)
            # remember() sets expiry to now + keep; what is left of it is what we want.
            table.remember(
                k.key, k.host, k.fingerprint, outcome, now + min(left, table.keep) - table.keep
            )
            kept += 1
        return kept

    # --- writes ------------------------------------------------------------------

    async def host_committed(
        self, host: HostShell, ins: Persist, changes: ChangeEvents | None = None
    ) -> None:
        """The pipeline's Persist: the batch, its keys, the id counter and the change
        events that describe it, in one write."""
        batch = Batch(
            hosts=[HostRecord(host.name, host.ncpus, host.generation)],
            next_id=self.fleet.next_id,
        )
        if changes is not None:
            batch.events = list(changes.records)
            batch.events_trimmed_through = changes.trimmed_through
        for rid in ins.touched:
            if rid in host.ledger:
                batch.reservations.append(ReservationRecord(host.ledger.get(rid)))
            else:
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
                        att.attached,
                    )
                )
        host.dirty_tasks.clear()  # before the write: the next batch starts after it anyway
        wall = self.wall()
        for key, fingerprint, outcome in ins.keys:
            if isinstance(outcome.result, Reservation):
                batch.keys.append(
                    KeyRecord(
                        key,
                        host.name,
                        fingerprint,
                        outcome.result,
                        outcome.generation,
                        outcome.applied,
                        outcome.pending,
                        wall + self.fleet.keys.keep,
                    )
                )
        if batch.keys and wall - self._pruned >= PRUNE_EVERY:
            batch.keys_expired_before = wall
            self._pruned = wall
        await self.writer.commit(batch)

    def host_created(self, host: Host) -> None:
        """A new host: written in the background (its first committed batch writes it too)."""
        record = HostRecord(host.name, host.ncpus, host.generation)
        self.writer.post(Batch(hosts=[record]), f"host {host.name}")

    async def host_forgotten(self, host: Host) -> None:
        """A retired host leaves the ledger; it raises if that was not made durable."""
        await self.writer.commit(Batch(deleted_hosts=[host.name]))

    async def session_opened(self, session: Session) -> None:
        await self.writer.commit(
            Batch(sessions=[SessionRecord(session.id, session.owner, session.ttl)])
        )

    async def session_ended(self, sid: str) -> None:
        await self.writer.commit(Batch(deleted_sessions=[sid]))
