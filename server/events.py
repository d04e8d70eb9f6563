"""Fan-out of events (hits, reloads, NACKs, releases) to watchers and ptrace trap streams.

Each subscriber has a bounded queue: a watcher that cannot keep up is cut off with a
clear message rather than slowing the arbiter or growing without bound.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

QUEUE_LIMIT = 10_000  # events buffered per watcher before it is declared too slow


class WatcherTooSlow(Exception):
    pass


@dataclass(eq=False)
class Subscription:
    accept: Callable[[Any], bool]
    kinds: frozenset[int] | None = None  # event kinds it may accept; None: any (and traps)
    queue: asyncio.Queue[Any] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    overflowed: bool = False

    async def get(self) -> Any:
        item = await self.queue.get()
        if item is _OVERFLOW:
            raise WatcherTooSlow(f"watcher fell {QUEUE_LIMIT} events behind and was cut off")
        return item


_OVERFLOW = object()


class EventBus:
    """Publish never blocks; subscribers filter with a predicate."""

    def __init__(self) -> None:
        self._subs: set[Subscription] = set()
        self._seq = itertools.count(1)

    def next_seq(self) -> int:
        return next(self._seq)

    def subscribe(
        self, accept: Callable[[Any], bool], kinds: frozenset[int] | None = None
    ) -> Subscription:
        sub = Subscription(accept, kinds)
        self._subs.add(sub)
        return sub

    def wants(self, kind: int) -> bool:
        """Whether anyone may take an event of ``kind``: the hot path builds none if not."""
        return any(sub.kinds is None or kind in sub.kinds for sub in self._subs)

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def publish(self, item: Any) -> None:
        for sub in list(self._subs):
            if sub.overflowed or not sub.accept(item):
                continue
            try:
                sub.queue.put_nowait(item)
            except asyncio.QueueFull:
                sub.overflowed = True
                sub.queue.get_nowait()
                sub.queue.put_nowait(_OVERFLOW)
