"""The in-memory store: the same semantics as SQLite, gone when the process exits."""

from __future__ import annotations

from collections import OrderedDict

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


class MemoryStore:
    def __init__(self) -> None:
        self.hosts: dict[str, HostRecord] = {}
        self.reservations: dict[str, ReservationRecord] = {}
        self.attachments: dict[tuple[str, int], AttachmentRecord] = {}
        self.sessions: dict[str, SessionRecord] = {}
        self.keys: dict[str, KeyRecord] = {}
        self.next_id = 1
        # In seq order (seqs only grow): the window is trimmed from the front, so a commit
        # costs the events it adds and drops, never the whole window.
        self.events: OrderedDict[int, EventRecord] = OrderedDict()
        self.events_trimmed_through = 0

    def load(self) -> Snapshot:
        return Snapshot(
            hosts=tuple(self.hosts.values()),
            reservations=tuple(
                sorted(self.reservations.values(), key=lambda r: id_order(r.reservation.id))
            ),
            attachments=tuple(self.attachments.values()),
            sessions=tuple(self.sessions.values()),
            keys=tuple(sorted(self.keys.values(), key=lambda k: k.expires)),
            next_id=self.next_id,
            events=tuple(self.events[s] for s in sorted(self.events)),
            events_trimmed_through=self.events_trimmed_through,
        )

    def commit(self, batch: Batch) -> None:
        for h in batch.hosts:
            self.hosts[h.name] = h
        for name in batch.deleted_hosts:
            self.hosts.pop(name, None)
        for rid in batch.deleted_reservations:
            self.reservations.pop(rid, None)
        for r in batch.reservations:
            self.reservations[r.reservation.id] = r
        for key in batch.deleted_attachments:
            self.attachments.pop(key, None)
        for a in batch.attachments:
            self.attachments[(a.host, a.task)] = a
        for sid in batch.deleted_sessions:
            self.sessions.pop(sid, None)
        for s in batch.sessions:
            self.sessions[s.id] = s
        if batch.keys_expired_before is not None:
            before = batch.keys_expired_before
            self.keys = {k: v for k, v in self.keys.items() if v.expires >= before}
        for k in batch.keys:
            self.keys[k.key] = k
        self.next_id = max(self.next_id, batch.next_id)
        for e in batch.events:
            self.events[e.seq] = e
        if batch.events_trimmed_through > self.events_trimmed_through:
            self.events_trimmed_through = batch.events_trimmed_through
            while self.events and next(iter(self.events)) <= self.events_trimmed_through:
                self.events.popitem(last=False)

    def probe(self) -> None:
        """Memory always takes writes."""

    def close(self) -> None:
        """Nothing to flush."""
