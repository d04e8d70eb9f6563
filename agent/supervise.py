"""Keep every CPU's link of an agent process running, each on its own.

In ``--fleet`` mode one process serves many CPUs; one link's failure (an exception the
link did not expect, a refusal) must never take the others down. Each link runs under
``supervise``, which logs whatever escapes it and starts it again after a backoff; only
a stop, or the arbiter refusing the link for good, ends it. The process ends on a
signal, or when no link is left.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from hwbp.agent.failures import LinkRefused

log = logging.getLogger("hwbp.agent")
RESTART_MAX = 30.0  # seconds between restarts of a link that keeps failing


class Link(Protocol):
    host: str
    cpu: int

    async def run(self) -> None: ...


async def supervise(
    link: Link, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
) -> LinkRefused | None:
    """Run ``link`` until it stops (None) or is refused for good (the refusal)."""
    failures = 0
    while True:
        try:
            await link.run()
            return None
        except LinkRefused as err:
            log.error("%s; this CPU's link gives up", err)
            return err
        except Exception:  # a bug: never silent, never the end of the other links
            failures += 1
            delay = min(RESTART_MAX, 0.5 * 2 ** min(failures, 6))
            log.exception(
                "agent %s/%d: the link failed unexpectedly; restarting it in %.1f s",
                link.host,
                link.cpu,
                delay,
            )
            await sleep(delay)


async def run_all(
    links: Sequence[Link],
    stop: asyncio.Event,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> int:
    """Supervise every link until ``stop`` is set (0) or every link gave up (1)."""
    tasks = [
        asyncio.create_task(supervise(link, sleep=sleep), name=f"link {link.host}/{link.cpu}")
        for link in links
    ]
    stopper = asyncio.create_task(stop.wait(), name="stop")
    try:
        pending: set[asyncio.Task[object]] = {stopper, *tasks}
        while not stopper.done() and not all(t.done() for t in tasks):
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if stopper.done():
            return 0
        log.error("agent stopped: the arbiter refused every CPU's link")
        return 1
    finally:
        stopper.cancel()
        for t in tasks:
            t.cancel()
        await asyncio.gather(stopper, *tasks, return_exceptions=True)
