"""What differs between the asyncio client and the synchronous one, and nothing else.

``client/aio.py`` and ``client/aio_handles.py`` are written once against the ``Async*``
names here; scripts/sync_sdk.py turns them into ``client/sdk.py`` and
``client/handles.py`` by renaming each to its ``Sync*`` twin (and dropping async/await).
So each pair below must offer the same methods, one awaitable, one blocking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import TracebackType
from typing import Protocol, TypeVar

import grpc
from tenacity import AsyncRetrying, Retrying

from hwbp.client.retry import NO_RETRY, RetryPolicy

log = logging.getLogger("hwbp.client")
T_co = TypeVar("T_co", covariant=True)

# The channel each client holds.
AsyncChannel = grpc.aio.Channel
SyncChannel = grpc.Channel


class AsyncStream(Protocol[T_co]):
    """A streaming call's answers, as grpc.aio returns them."""

    def __aiter__(self) -> AsyncIterator[T_co]: ...
    def cancel(self) -> bool: ...


class SyncStream(Protocol[T_co]):
    """A streaming call's answers, as grpc's blocking stub returns them."""

    def __iter__(self) -> Iterator[T_co]: ...
    def cancel(self) -> bool: ...


def async_attempts(policy: RetryPolicy, retry: bool) -> AsyncRetrying:
    """Tenacity's attempts for one call: the policy's, or a single one."""
    return (policy if retry else NO_RETRY).aio()


def sync_attempts(policy: RetryPolicy, retry: bool) -> Retrying:
    return (policy if retry else NO_RETRY).sync()


class AsyncEvent:
    """A flag a worker sleeps on: ``await wait(t)`` is True as soon as it is set."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
        return self._event.is_set()


class SyncEvent:
    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)


class AsyncLock:
    """Mutual exclusion between a worker and its owner (trivial on one event loop, but
    the generated thread-based twin needs it, so the source says where it is held)."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> None:
        await self._lock.acquire()

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._lock.release()


class SyncLock:
    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._lock.release()


class AsyncWorker:
    """Runs ``target`` in the background (a task) from construction until it returns."""

    def __init__(self, target: Callable[[], Awaitable[None]], name: str) -> None:
        self._task = asyncio.get_running_loop().create_task(_guarded(target, name), name=name)

    async def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for it to return; cancel it if it has not."""
        await asyncio.wait({self._task}, timeout=timeout)
        if not self._task.done():
            self._task.cancel()
            await asyncio.wait({self._task})


class SyncWorker:
    """Runs ``target`` in the background (a daemon thread) from construction."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self._thread = threading.Thread(target=_guarded_sync(target, name), name=name, daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


async def _guarded(target: Callable[[], Awaitable[None]], name: str) -> None:
    try:
        await target()
    except asyncio.CancelledError:
        pass  # its call was cancelled under it (the owner is closing), or the task itself
    except Exception:
        log.exception("%s stopped on an unexpected error", name)


def _guarded_sync(target: Callable[[], None], name: str) -> Callable[[], None]:
    def run() -> None:
        try:
            target()
        except Exception:
            log.exception("%s stopped on an unexpected error", name)

    return run
