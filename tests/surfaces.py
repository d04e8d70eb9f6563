"""Run one SDK test against both surfaces: ``AsyncClient``, and ``Client`` made to look
like it.

A test is written once, against the asyncio API (``await c.reserve(...)``, ``async with
await c.session() as s``, ``async for e in c.watch()``). For the sync surface it gets
``Awaited(Client(...))``, which forwards every call to the real sync object, blocking as
the sync SDK does, and gives back what the async API would: awaitables where the async
twin's method is a coroutine, async iterators for iterators, async context managers for
sessions, handles and tracers. Which method is which is read from the async classes, so
a method the sync surface lacks fails the test instead of being skipped.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator
from typing import Any

from hwbp.client import (
    AsyncClient,
    AsyncReservationHandle,
    AsyncSession,
    AsyncTracer,
    Client,
    ReservationHandle,
    Session,
    Tracer,
)

TWIN: dict[type, type] = {
    Client: AsyncClient,
    Session: AsyncSession,
    ReservationHandle: AsyncReservationHandle,
    Tracer: AsyncTracer,
}
SURFACES = ("async", "sync")


def _wrap(value: Any) -> Any:
    if type(value) in TWIN:
        return Awaited(value)
    if isinstance(value, Iterator):
        return _aiter(value)
    return value


async def _aiter(items: Iterator[Any]) -> AsyncIterator[Any]:
    """Each blocking ``next()`` runs on a worker thread, so a test can act while it waits."""
    done = object()
    try:
        while (item := await asyncio.to_thread(next, items, done)) is not done:
            yield _wrap(item)
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


class Awaited:
    """A sync SDK object seen through its async twin's API."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self._twin = TWIN[type(target)]

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.target, name)
        if not callable(value) or isinstance(value, type):
            return _wrap(value)  # an attribute or property: the same on both surfaces
        spec = getattr(self._twin, name, None)
        if spec is None and not name.startswith("_"):
            raise AssertionError(f"{type(self.target).__name__}.{name} has no async twin")
        if inspect.iscoroutinefunction(spec):

            async def awaited(*args: Any, **kwargs: Any) -> Any:
                return _wrap(value(*args, **kwargs))

            return awaited
        return lambda *args, **kwargs: _wrap(value(*args, **kwargs))

    async def __aenter__(self) -> Awaited:
        self.target.__enter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.target.__exit__(*exc)


def make_client(surface: str, *args: Any, **kwargs: Any) -> Any:
    """A client of ``surface`` ("async" or "sync") with the async API."""
    if surface == "async":
        return AsyncClient(*args, **kwargs)
    return Awaited(Client(*args, **kwargs))
