"""What the arbiter says about its own health: the gRPC health service, background tasks.

Health is SERVING only once the ledger is loaded, while the arbiter is not draining and
while the ledger takes writes; a refused write turns it NOT_SERVING until a write or a
probe succeeds again. Background tasks (the lease reaper, the ledger watch) run under
``supervise``: an exception is logged with its traceback, counted in
``hwbp_background_failures_total`` and the task goes on after a pause, so it never dies
silently.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator

from grpc_health.v1 import health, health_pb2
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hwbp.server.store.writer import LedgerWriter

log = logging.getLogger("hwbp.server")
RESTART_AFTER = 1.0  # seconds a failed background task waits before it runs again
FAILURES: Counter[str] = Counter()  # background task name -> exceptions survived


class Health:
    """Sets every service's health from three facts: started, draining, ledger problem
    (and, for a replicated arbiter, a fourth: whether this replica leads)."""

    def __init__(self, servicer: health.aio.HealthServicer, names: Iterable[str]) -> None:
        self.servicer = servicer
        self.names = ["", *names]
        self.started = False
        self.draining = False
        self.ledger_problem = ""
        self.leading = True  # a replicated arbiter's follower: False (server/ha.py)
        self._refreshing: set[asyncio.Task[None]] = set()

    @property
    def serving(self) -> bool:
        return self.started and not self.draining and not self.ledger_problem

    async def apply(self) -> None:
        for name in self.names:
            # A follower is up ("" SERVING) but serves none of the services.
            on = self.serving and (self.leading or name == "")
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if on
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            await self.servicer.set(name, status)

    def ledger(self, problem: str) -> None:
        """LedgerWriter listener (on the event loop): writes fail, or work again."""
        self.ledger_problem = problem
        task = asyncio.get_running_loop().create_task(self.apply())
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)


async def supervise(name: str, step: Callable[[], Awaitable[None]]) -> None:
    """Run ``step`` (a long-running loop) forever; survive and report its exceptions."""
    while True:
        try:
            await step()
            log.error("background task %s returned; starting it again", name)
        except asyncio.CancelledError:
            raise
        except Exception:
            FAILURES[name] += 1
            log.exception("background task %s failed; it runs again in %gs", name, RESTART_AFTER)
        await asyncio.sleep(RESTART_AFTER)


class HealthCollector(Collector):
    """Ledger write failures and background task failures, read at scrape time."""

    def __init__(self, writer: LedgerWriter) -> None:
        self.writer = writer

    def collect(self) -> Iterator[Metric]:
        failures = CounterMetricFamily(
            "hwbp_ledger_write_failures", "Ledger writes refused (each change rolled back)"
        )
        failures.add_metric([], self.writer.failures)
        writable = GaugeMetricFamily(
            "hwbp_ledger_writable", "1 while the ledger takes writes, 0 while they fail"
        )
        writable.add_metric([], 0 if self.writer.problem else 1)
        background = CounterMetricFamily(
            "hwbp_background_failures",
            "Exceptions a background task (lease reaper, ledger watch) survived",
            labels=["task"],
        )
        for task, n in sorted(FAILURES.items()):
            background.add_metric([task], n)
        yield from (failures, writable, background)
