"""The change log: numbered events of ledger changes, kept for a window and replayed.

Reserved, modified, released, lease_expired and task_exited events describe a change of
the ledger. Each is numbered (``seq``, like etcd's revision) when its batch is handed to
the store and written in the same transaction as the change, so a restarted arbiter (or
the replica that takes over) continues the numbering and can replay what a watcher
missed. Only the last ``keep`` seqs are kept: older events are dropped in the same
transaction, and a watcher asking to resume before the window gets ``SeqCompacted``
naming the oldest kept event rather than a stream that silently skips some.

Seqs only grow but may have gaps: a batch whose write failed took its numbers with it.
Events that are not changes (hits, reloads, agents coming and going) are never kept;
they carry the seq of the last change published before them, so "resume after the last
seq I saw" is right whichever kind that was.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

from hwbp.errors import LedgerCorrupt, SeqCompacted, SeqOutOfRange
from hwbp.server.events import CHANGE_KINDS
from hwbp.server.store.base import EventRecord
from hwbp.v1 import types_pb2

__all__ = ["CHANGE_KINDS", "KEEP", "EventLog"]

KEEP = 10_000  # change events kept for replay (the window a watcher can resume within)


class EventLog:
    """Numbers change events, keeps the last ``keep`` seqs of them, answers replays."""

    def __init__(self, keep: int = KEEP) -> None:
        if keep < 1:
            raise ValueError("the change log keeps at least one event")
        self.keep = keep
        self.last = 0  # the highest seq published (committed)
        self.trimmed_through = 0  # events up to this seq may be gone
        self._issued = 0  # the highest seq handed out (a failed write leaves a gap)
        self._kept: deque[types_pb2.Event] = deque()

    def restore(self, records: Iterable[EventRecord], trimmed_through: int) -> None:
        """What the ledger kept: numbering continues after the highest seq in it."""
        self._kept.clear()
        self.trimmed_through = trimmed_through
        for rec in sorted(records, key=lambda r: r.seq):
            if rec.seq <= trimmed_through:
                continue
            ev = types_pb2.Event()
            try:
                ev.ParseFromString(rec.body)
            except Exception as err:  # protobuf's DecodeError and kin
                raise LedgerCorrupt(f"change-log event {rec.seq} is unreadable: {err}") from None
            ev.seq = rec.seq
            self._kept.append(ev)
        self.last = max(trimmed_through, self._kept[-1].seq if self._kept else 0)
        self._issued = self.last

    def number(self, events: Sequence[types_pb2.Event]) -> tuple[list[EventRecord], int]:
        """Give ``events`` their seqs; return their records and the seq through which
        older events are dropped, both written with the batch (before ``committed``)."""
        records = []
        for ev in events:
            self._issued += 1
            ev.seq = self._issued
            records.append(EventRecord(ev.seq, ev.SerializeToString()))
        return records, max(self.trimmed_through, self._issued - self.keep)

    def committed(self, events: Sequence[types_pb2.Event], trimmed_through: int) -> None:
        """The batch carrying ``events`` is durable: keep them, drop what fell out."""
        for ev in events:
            self._kept.append(ev)
            self.last = max(self.last, ev.seq)
        self.trimmed_through = max(self.trimmed_through, trimmed_through)
        while self._kept and self._kept[0].seq <= self.trimmed_through:
            self._kept.popleft()

    @property
    def oldest(self) -> int:
        """The oldest seq kept (``last + 1`` when none is)."""
        return self._kept[0].seq if self._kept else self.last + 1

    def __len__(self) -> int:
        return len(self._kept)

    def since(self, seq: int) -> list[types_pb2.Event]:
        """The kept events after ``seq``, oldest first; refused when some of them are
        gone (``SeqCompacted``) or ``seq`` was never issued (``SeqOutOfRange``)."""
        if seq > self.last:
            raise SeqOutOfRange(
                f"since {seq} is ahead of this arbiter's last event {self.last}: it was not "
                "issued by this ledger",
                since=seq,
                last=self.last,
            )
        if seq < self.trimmed_through:
            raise SeqCompacted(
                f"events after seq {seq} are no longer kept: the oldest kept is {self.oldest} "
                f"(the arbiter keeps the last {self.keep}); resume from {self.trimmed_through} "
                "or later, or watch without since",
                since=seq,
                oldest=self.oldest,
                trimmed_through=self.trimmed_through,
            )
        return [ev for ev in self._kept if ev.seq > seq]
