"""The one thread that writes the ledger, so the event loop never waits for the disk.

A store may block: SQLite waits up to its busy timeout for another writer's lock, and
an fsync takes what it takes. Every batch therefore goes to a single writer thread, in
the order the event loop handed them over (one thread: batches never overtake one
another, and each is still one transaction). While the loop waits for a write, it keeps
serving reads, agents and other hosts.

The writer also knows whether the ledger currently takes writes: a refused write sets
``problem`` (listeners hear of it: health goes NOT_SERVING), a later successful write or
probe clears it. ``watch()`` probes the store on its own, so a ledger that works again
is noticed without any client having to write, and one that was deleted is noticed
without any write at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from hwbp.errors import LedgerWriteFailed
from hwbp.server.store.base import Batch, Store
from hwbp.server.store.memory import MemoryStore

log = logging.getLogger("hwbp.server")
PROBE_FAILING = 1.0  # seconds between probes while writes fail
PROBE_HEALTHY = 5.0  # and while they succeed (the file may still be deleted under us)


class LedgerWriter:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.failures = 0  # writes refused since start
        self.problem = ""  # why writes fail now ("" while they succeed)
        self.listeners: list[Callable[[str], None]] = []  # told when ``problem`` changes
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")
        self._posted: set[asyncio.Task[None]] = set()
        # A store that never blocks (memory) is called in place: a thread hop per write
        # would only cost time. Nothing is ever queued on the thread for it, so order holds.
        self._inline = isinstance(store, MemoryStore)

    async def _run(self, fn: Callable[..., None], *args: object) -> None:
        if self._inline:
            fn(*args)
            return
        await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def commit(self, batch: Batch) -> None:
        """Make ``batch`` durable; raise LedgerWriteFailed (nothing written) if it cannot be."""
        try:
            await self._run(self.store.commit, batch)
        except LedgerWriteFailed as err:
            self.failures += 1
            self._set(err.message)
            raise
        except Exception as err:  # a store's own bug: still a refused write, said plainly
            self.failures += 1
            log.exception("ledger write raised")
            failed = LedgerWriteFailed(f"the ledger write failed: {type(err).__name__}: {err}")
            self._set(failed.message)
            raise failed from None
        self._set("")

    def post(self, batch: Batch, what: str) -> None:
        """Write without waiting (what a later batch writes again anyway, e.g. a new host)."""

        async def write() -> None:
            try:
                await self.commit(batch)
            except LedgerWriteFailed as err:
                log.error("%s was not written to the ledger: %s", what, err.message)

        task = asyncio.get_running_loop().create_task(write())
        self._posted.add(task)
        task.add_done_callback(self._posted.discard)

    async def probe(self) -> bool:
        """Whether the ledger takes writes now (and ``problem`` updated accordingly)."""
        try:
            await self._run(self.store.probe)
        except LedgerWriteFailed as err:
            self._set(err.message)
            return False
        except Exception as err:
            log.exception("ledger probe raised")
            self._set(f"the ledger probe failed: {type(err).__name__}: {err}")
            return False
        self._set("")
        return True

    async def watch(self) -> None:
        """Probe forever: often while writes fail (to recover by itself), rarely otherwise."""
        while True:
            await asyncio.sleep(PROBE_FAILING if self.problem else PROBE_HEALTHY)
            await self.probe()

    def _set(self, problem: str) -> None:
        if problem == self.problem:
            return
        if problem:
            log.error("ledger: writes fail: %s", problem)
        else:
            log.warning("ledger: writes succeed again (after: %s)", self.problem)
        self.problem = problem
        for listener in self.listeners:
            try:
                listener(problem)
            except Exception:
                log.exception("ledger health listener failed")

    def close(self) -> None:
        """Finish what was handed over, then close the store."""
        self._pool.shutdown(wait=True)
        self.store.close()
