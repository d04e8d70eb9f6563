"""One agent process, many CPU links: each survives its own failures, alone.

A --fleet agent once ended when any one link's task ended (an unexpected exception, a
refusal): every other CPU of the host went offline with it.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from hwbp.agent.failures import LinkRefused
from hwbp.agent.supervise import run_all, supervise


class FakeLink:
    """A link whose ``run`` fails ``failures`` times, then is refused, ends, or serves."""

    def __init__(self, cpu: int, failures: int = 0, then: str = "serve") -> None:
        self.host, self.cpu = "h1", cpu
        self.failures, self.then = failures, then
        self.runs = 0
        self.serving = asyncio.Event()

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise RuntimeError(f"bug number {self.runs}")
        if self.then == "refused":
            raise LinkRefused(f"agent h1/{self.cpu}: refused for good (PERMISSION_DENIED)")
        if self.then == "serve":
            self.serving.set()
            await asyncio.Event().wait()  # a healthy link runs until cancelled


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


async def test_a_link_that_raises_is_logged_and_restarted_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    link, sleeps = FakeLink(0, failures=3, then="end"), Sleeps()
    with caplog.at_level(logging.ERROR, logger="hwbp.agent"):
        assert await supervise(link, sleep=sleeps) is None
    assert link.runs == 4
    assert sleeps.waits == sorted(sleeps.waits) and sleeps.waits[0] > 0
    failed = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert len(failed) == 3 and all(r.exc_info for r in failed)  # with the traceback


async def test_a_link_refused_for_good_gives_up_with_its_reason() -> None:
    refused = await supervise(FakeLink(0, then="refused"))
    assert isinstance(refused, LinkRefused) and "PERMISSION_DENIED" in str(refused)


async def test_one_failing_link_never_takes_the_others_down() -> None:
    healthy = FakeLink(0)
    flaky = FakeLink(1, failures=5)
    refused = FakeLink(2, then="refused")
    stop = asyncio.Event()
    runner = asyncio.create_task(run_all([healthy, flaky, refused], stop, sleep=Sleeps()))
    await asyncio.wait_for(healthy.serving.wait(), 5)
    await asyncio.wait_for(flaky.serving.wait(), 5)  # restarted until it served
    assert not runner.done()  # a refused link ended; the process did not
    stop.set()
    assert await asyncio.wait_for(runner, 5) == 0
    assert (flaky.runs, refused.runs) == (6, 1)


async def test_the_process_ends_when_every_link_was_refused() -> None:
    links = [FakeLink(c, then="refused") for c in range(3)]
    assert await asyncio.wait_for(run_all(links, asyncio.Event()), 5) == 1
