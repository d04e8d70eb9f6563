"""Fan-out of events (hits, reloads, NACKs, releases) to watchers and ptrace trap streams.

Subscriptions are indexed by (host, kind), so a publish looks only at the buckets an item
can match and ``wants`` is a counter lookup: with thousands of idle watchers of other
hosts or kinds, a reserve costs what it costs with none. (2,000 idle Watch streams once
pushed reserve+release p50 from 5 ms to 1 s when every publish asked every subscriber.)
The predicate still decides what the keys cannot express (a task, say).

Each subscriber has a bounded queue: a watcher that cannot keep up is cut off with a
clear message rather than slowing the arbiter or growing without bound. Streams opened
for callers are capped per identity and in total; the arbiter's own subscribers
(``identity=None``) are not counted.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeAlias

from hwbp.errors import HwbpError, TooManyWatchers, WatcherTooSlow
from hwbp.v1 import ptrace_pb2, types_pb2

__all__ = [
    "ALL_EVENTS",
    "CHANGE_KINDS",
    "MAX_WATCHERS_PER_IDENTITY",
    "MAX_WATCHERS_TOTAL",
    "QUEUE_LIMIT",
    "TRAP",
    "TRAPS_ONLY",
    "EventBus",
    "Item",
    "Subscription",
    "WatcherTooSlow",
]

log = logging.getLogger("hwbp.server")
QUEUE_LIMIT = 10_000  # events buffered per watcher before it is declared too slow
MAX_WATCHERS_TOTAL = 4096  # Watch and Traps streams of all callers together
MAX_WATCHERS_PER_IDENTITY = 256  # ... of one identity ("" is every caller without TLS)
TRAP = -1  # the kind key of ptrace traps, which are not Events
TRAPS_ONLY = frozenset({TRAP})
# Every real event kind: a Watch without a kind filter, which never wants traps.
ALL_EVENTS = frozenset(v for v in types_pb2.EventKind.values() if v)
# The kinds the change log numbers and keeps (``event_log.py``).
CHANGE_KINDS = frozenset(
    {
        types_pb2.EVENT_KIND_RESERVED,
        types_pb2.EVENT_KIND_MODIFIED,
        types_pb2.EVENT_KIND_RELEASED,
        types_pb2.EVENT_KIND_LEASE_EXPIRED,
        types_pb2.EVENT_KIND_TASK_EXITED,
    }
)

Item: TypeAlias = types_pb2.Event | ptrace_pb2.Trap  # what is published
Key = tuple[str | None, int | None]  # (host, kind); None: any host, any kind and traps


@dataclass(eq=False)
class Subscription:
    accept: Callable[[Item], bool]
    kinds: frozenset[int] | None = None  # event kinds it may accept; None: any (and traps)
    host: str | None = None  # the only host it may accept; None: any
    identity: str | None = None  # whose stream it is, for the caps; None: the arbiter's own
    queue: asyncio.Queue[Item | _CutOff] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    overflowed: bool = False  # cut off: nothing more is offered to it
    active: bool = True  # still subscribed (counted against the caps)

    async def get(self) -> Item:
        item = await self.queue.get()
        if isinstance(item, _CutOff):
            raise item.error
        return item

    def index_keys(self) -> list[Key]:
        kinds: Iterable[int | None] = [None] if self.kinds is None else sorted(self.kinds)
        return [(self.host, k) for k in kinds]


@dataclass(frozen=True)
class _CutOff:
    """Queued last for a subscriber that was cut off: its reader raises ``error``."""

    error: HwbpError


class EventBus:
    """Publish never blocks and never raises; subscribers are found by (host, kind)."""

    def __init__(
        self,
        *,
        max_total: int = MAX_WATCHERS_TOTAL,
        max_per_identity: int = MAX_WATCHERS_PER_IDENTITY,
    ) -> None:
        self.max_total = max_total
        self.max_per_identity = max_per_identity
        self._index: dict[Key, set[Subscription]] = {}
        self._by_kind: Counter[int | None] = Counter()  # subscriptions per kind key, any host
        self._per_identity: Counter[str] = Counter()
        self._total = 0  # subscriptions with an identity
        self._seq = itertools.count(1)
        # The seq of the last change event published (the change log's numbering): what
        # every other event carries, so a watcher resumes after the last seq it saw.
        self.change_seq = 0

    def next_seq(self) -> int:
        """A hit's or a trap's own number, unique while this arbiter runs."""
        return next(self._seq)

    def subscribe(
        self,
        accept: Callable[[Item], bool],
        kinds: frozenset[int] | None = None,
        *,
        host: str | None = None,
        identity: str | None = None,
    ) -> Subscription:
        """Offer ``accept`` the items of ``host`` (None: any) whose kind is in ``kinds``.

        ``kinds``: None takes every event kind and traps; ``TRAPS_ONLY`` (or the empty
        set) only ptrace traps; ``ALL_EVENTS`` every event and no trap. ``identity``: the
        caller's, counted against the caps (TooManyWatchers when over); None for the
        arbiter's own subscribers, which are never refused.
        """
        if identity is not None:
            self._admit(identity)
        wanted = None if kinds is None else (kinds or TRAPS_ONLY)
        sub = Subscription(accept, wanted, host or None, identity)
        for key in sub.index_keys():
            self._index.setdefault(key, set()).add(sub)
            self._by_kind[key[1]] += 1
        if identity is not None:
            self._per_identity[identity] += 1
            self._total += 1
        return sub

    def _admit(self, identity: str) -> None:
        if self._total >= self.max_total:
            raise TooManyWatchers(
                f"the arbiter already serves {self._total} watch and trap streams, its "
                f"limit of {self.max_total}; try again when some have ended",
                limit=self.max_total,
            )
        held = self._per_identity[identity]
        if held >= self.max_per_identity:
            who = identity or "the anonymous caller (no TLS)"
            raise TooManyWatchers(
                f"{who} already has {held} watch and trap streams open, the limit of "
                f"{self.max_per_identity} per identity; close some first",
                identity=identity,
                limit=self.max_per_identity,
            )

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget ``sub``; calling it again does nothing."""
        if not sub.active:
            return
        sub.active = False
        self._unindex(sub)
        if sub.identity is not None:
            self._per_identity[sub.identity] -= 1
            if self._per_identity[sub.identity] <= 0:
                del self._per_identity[sub.identity]
            self._total -= 1

    def _unindex(self, sub: Subscription) -> None:
        for key in sub.index_keys():
            bucket = self._index.get(key)
            if bucket is None or sub not in bucket:
                continue
            bucket.discard(sub)
            if not bucket:
                del self._index[key]
            self._by_kind[key[1]] -= 1
            if self._by_kind[key[1]] <= 0:
                del self._by_kind[key[1]]

    def count(self, identity: str | None = None) -> int:
        """Streams held by callers: all of them, or those of ``identity``."""
        return self._total if identity is None else self._per_identity.get(identity, 0)

    def wants(self, kind: int, host: str | None = None) -> bool:
        """Whether anyone may take an event of ``kind`` (of ``host``, when given): the hot
        path builds no event if not. Counter and dict lookups only, whatever the load."""
        if host is None:
            return self._by_kind.get(kind, 0) > 0 or self._by_kind.get(None, 0) > 0
        return any(key in self._index for key in _candidates(host, kind))

    def publish(self, item: Item) -> None:
        """Offer ``item`` to the subscribers its (host, kind) can match."""
        if isinstance(item, types_pb2.Event):
            kind: int | None = item.kind
            if item.seq > self.change_seq and item.kind in CHANGE_KINDS:
                self.change_seq = item.seq
        elif isinstance(item, ptrace_pb2.Trap):
            kind = TRAP
        else:
            kind = None
        host = item.host or None
        for key in _candidates(host, kind):
            bucket = self._index.get(key)
            if bucket:
                for sub in tuple(bucket):
                    self._offer(sub, item)

    def _offer(self, sub: Subscription, item: Item) -> None:
        if sub.overflowed:
            return
        try:
            if not sub.accept(item):
                return
        except Exception:
            log.exception("a watcher's filter failed; the watcher is cut off")
            self._cut(sub, HwbpError("watch stream ended: its filter failed (see the arbiter log)"))
            return
        try:
            sub.queue.put_nowait(item)
        except asyncio.QueueFull:
            self._cut(
                sub, WatcherTooSlow(f"watcher fell {QUEUE_LIMIT} events behind and was cut off")
            )

    def cut_watchers(self, error: HwbpError) -> int:
        """End every caller's stream (not the arbiter's own subscribers) with ``error``:
        a replica that stops leading has nothing more to tell them."""
        subs = {s for bucket in self._index.values() for s in bucket if s.identity is not None}
        for sub in subs:
            self._cut(sub, error)
        return len(subs)

    def _cut(self, sub: Subscription, error: HwbpError) -> None:
        """Stop offering ``sub`` anything; its reader gets what was queued, then ``error``.
        It stays counted against the caps until its stream unsubscribes."""
        sub.overflowed = True
        self._unindex(sub)
        if sub.queue.full():
            sub.queue.get_nowait()
        sub.queue.put_nowait(_CutOff(error))


def _candidates(host: str | None, kind: int | None) -> list[Key]:
    """The buckets an item of ``host`` and ``kind`` can match, each once."""
    hosts: list[str | None] = [host, None] if host is not None else [None]
    kinds: list[int | None] = [kind, None] if kind is not None else [None]
    return [(h, k) for h in hosts for k in kinds]
