"""What the arbiter persists, and the interface every store implements.

A store sees only whole batches: ``commit(batch)`` must apply a batch atomically (one
SQLite transaction; on a replicated store such as etcd, one txn), and ``load()`` returns
what the last committed batch left. Keys are flat (host, reservation id, session id,
host+task), so a key-value store maps onto it directly.
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


@dataclass(frozen=True, slots=True)
class ReservationRecord:
    reservation: Reservation
    idempotency_key: str = ""


@dataclass
class Batch:
    """Everything one committed change wrote; deletions name keys."""

    hosts: list[HostRecord] = field(default_factory=list)
    reservations: list[ReservationRecord] = field(default_factory=list)
    deleted_reservations: list[str] = field(default_factory=list)
    attachments: list[AttachmentRecord] = field(default_factory=list)
    deleted_attachments: list[tuple[str, int]] = field(default_factory=list)
    sessions: list[SessionRecord] = field(default_factory=list)
    deleted_sessions: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(
            (
                self.hosts,
                self.reservations,
                self.deleted_reservations,
                self.attachments,
                self.deleted_attachments,
                self.sessions,
                self.deleted_sessions,
            )
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    hosts: tuple[HostRecord, ...]
    reservations: tuple[ReservationRecord, ...]  # in creation order
    attachments: tuple[AttachmentRecord, ...]
    sessions: tuple[SessionRecord, ...]
    # The id counter, where the store keeps one (0: continue after the highest id).
    next_id: int = 0


class Store(Protocol):
    """A durable home for the ledger. ``commit`` returns only once the batch is durable."""

    def load(self) -> Snapshot: ...
    def commit(self, batch: Batch) -> None: ...
    def close(self) -> None: ...


def id_order(res_id: str) -> tuple[int, str]:
    """Reservation ids are r<N>, allocated in admission order."""
    digits = res_id[1:]
    return (int(digits), res_id) if digits.isdigit() else (1 << 62, res_id)
