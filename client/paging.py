"""Follow ``next_page_token`` until it is empty, for the sync and the async client.

The arbiter pages List and Inventory so no answer outgrows gRPC's message limit; reading
one page would silently show part of the fleet. An arbiter that does not page answers
with an empty token: one call, as before. An item seen on two pages (the ledger changed
between them) is kept once, at its first place, with its latest value.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

from hwbp.errors import HwbpError

T = TypeVar("T")
Page = tuple[Sequence[T], str]  # (items, next_page_token)

# Below the arbiter's maxima (10,000 and 4,096) and at its defaults: big enough that a
# normal fleet is one or two round trips, small enough to stay far from 16 MiB.
LIST_PAGE_SIZE = 1000
INVENTORY_PAGE_SIZE = 256


class _Pager(Generic[T]):
    """The bookkeeping shared by both loops: tokens seen, items merged by key."""

    def __init__(self, key: Callable[[T], Hashable]) -> None:
        self.key = key
        self.items: dict[Hashable, T] = {}
        self.seen: set[str] = set()

    def add(self, page: Page[T]) -> str:
        """Merge one page; the token to ask for next ("" when done)."""
        items, token = page
        for item in items:
            self.items[self.key(item)] = item
        if token and token in self.seen:
            raise HwbpError(
                f"the arbiter returned page token {token[:40]!r} twice; its paging is broken"
            )
        self.seen.add(token)
        return token


def collect(fetch: Callable[[str], Page[T]], *, key: Callable[[T], Hashable]) -> list[T]:
    """Every item of every page; ``fetch(token)`` asks for one page ("" is the first)."""
    pager: _Pager[T] = _Pager(key)
    token = pager.add(fetch(""))
    while token:
        token = pager.add(fetch(token))
    return list(pager.items.values())


async def collect_aio(
    fetch: Callable[[str], Awaitable[Page[T]]], *, key: Callable[[T], Hashable]
) -> list[T]:
    """``collect`` for ``grpc.aio``."""
    pager: _Pager[T] = _Pager(key)
    token = pager.add(await fetch(""))
    while token:
        token = pager.add(await fetch(token))
    return list(pager.items.values())
