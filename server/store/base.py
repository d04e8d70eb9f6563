"""What the arbiter persists, and the interface every store implements.

A store sees only whole batches: ``commit(batch)`` must apply a batch atomically (one
SQLite transaction; on a replicated store such as etcd, one txn), and ``load()`` returns
what the last committed batch left. Keys are flat (host, reservation id, session id,
host+task, idempotency key), so a key-value store maps onto it directly.

Besides the ledger itself a store keeps, in the same transaction as the batch:

- ``next_id``, the reservation id counter. It only ever grows (a store keeps the highest
  value it was given), so an id is never issued twice for the life of the ledger, even
  after the reservation that had it was released and the arbiter restarted.
- the change log (``EventRecord``): each change's events, numbered, kept for a bounded
  window so a watcher resumes after a restart or failover; a batch names the seq up to
  which older ones are dropped (``events_trimmed_through``, which only grows).
- idempotency keys of committed reserves (``KeyRecord``), with the fingerprint of the
  request and the caller's scope inside the key, so a reserve retried after a restart
  gets the first answer. They carry a wall-clock expiry; a batch names the time before
  which expired keys are deleted (``keys_expired_before``), and ``load()`` may return
  expired ones (the arbiter drops them).

The arbiter calls a store from one writer thread at a time, never from its event loop,
so a store may block (SQLite's busy wait, an etcd round trip).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from hwbp.model import Reservation
from hwbp.ptrace import PtraceState


@dataclass(frozen=True, slots=True)
class HostRecord:
    name: str
    ncpus: int
    generation: int


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: str
    owner: str
    ttl: float


@dataclass(frozen=True, slots=True)
class AttachmentRecord:
    host: str
    task: int
    session: str
    owner: str
    state: PtraceState
    reservations: tuple[tuple[int, str], ...]  # (ptrace index, reservation id)
    attached: bool = True  # False: detached, its state kept until flushed (PTRACE_DETACH)


@dataclass(frozen=True, slots=True)
class ReservationRecord:
    reservation: Reservation
    idempotency_key: str = ""  # unused since keys are KeyRecords; kept for old ledgers


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A committed reserve's idempotency key and the answer a retry gets."""

    key: str  # scoped to the caller: "<identity>\0<key>" ("" identity without TLS)
    host: str
    fingerprint: str  # of the request body the key was first used with
    reservation: Reservation  # as the first answer gave it (it may be released since)
    generation: int  # the generation that committed it
    applied: tuple[int, ...]  # CPUs whose agents had acknowledged it
    pending: tuple[int, ...]  # CPUs it was pending on
    expires: float  # wall clock, seconds since the epoch


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One change-log event: its seq and its body (a serialized ``hwbp.v1.Event``)."""

    seq: int
    body: bytes


@dataclass
class Batch:
    """Everything one committed change wrote; deletions name keys."""

    hosts: list[HostRecord] = field(default_factory=list)
    deleted_hosts: list[str] = field(default_factory=list)  # retired (``host forget``)
    reservations: list[ReservationRecord] = field(default_factory=list)
    deleted_reservations: list[str] = field(default_factory=list)
    attachments: list[AttachmentRecord] = field(default_factory=list)
    deleted_attachments: list[tuple[str, int]] = field(default_factory=list)
    sessions: list[SessionRecord] = field(default_factory=list)
    deleted_sessions: list[str] = field(default_factory=list)
    keys: list[KeyRecord] = field(default_factory=list)
    keys_expired_before: float | None = None  # delete key records that expire before this
    next_id: int = 0  # the id counter: the store keeps max(what it has, this)
    events: list[EventRecord] = field(default_factory=list)
    events_trimmed_through: int = 0  # drop events with seq <= this (the store keeps the max)

    def __bool__(self) -> bool:
        return any(
            (
                self.hosts,
                self.deleted_hosts,
                self.reservations,
                self.deleted_reservations,
                self.attachments,
                self.deleted_attachments,
                self.sessions,
                self.deleted_sessions,
                self.keys,
                self.keys_expired_before is not None,
                self.next_id,
                self.events,
                self.events_trimmed_through,
            )
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    hosts: tuple[HostRecord, ...]
    reservations: tuple[ReservationRecord, ...]  # in creation order
    attachments: tuple[AttachmentRecord, ...]
    sessions: tuple[SessionRecord, ...]
    keys: tuple[KeyRecord, ...] = ()
    next_id: int = 1  # the next reservation id is r<next_id> or later
    events: tuple[EventRecord, ...] = ()  # the kept change log, oldest first
    events_trimmed_through: int = 0  # events up to this seq may have been dropped


class Store(Protocol):
    """A durable home for the ledger. ``commit`` returns only once the batch is durable.

    ``commit`` and ``probe`` raise ``hwbp.errors.LedgerWriteFailed`` naming the problem
    (a full disk, a lock held by another writer, a ledger file deleted or replaced while
    the arbiter runs); nothing of a failed batch may be left applied.
    """

    def load(self) -> Snapshot: ...
    def commit(self, batch: Batch) -> None: ...

    def probe(self) -> None:
        """Check that writes would succeed now (file identity, a write of nothing new);
        the arbiter calls it while writes fail, to notice by itself when they work again."""
        ...

    def close(self) -> None: ...


def id_order(res_id: str) -> tuple[int, str]:
    """Reservation ids are r<N>, allocated in admission order."""
    digits = res_id[1:]
    return (int(digits), res_id) if digits.isdigit() else (1 << 62, res_id)
