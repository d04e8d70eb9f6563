"""Health from the ledger's state, and background tasks that survive their exceptions."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import grpc
import pytest
from grpc_health.v1 import health, health_pb2

from hwbp.errors import LedgerWriteFailed
from hwbp.server import health as health_mod
from hwbp.server.health import Health, HealthCollector, supervise
from hwbp.server.store import Batch, MemoryStore
from hwbp.server.store.base import HostRecord
from hwbp.server.store.writer import LedgerWriter

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Refusing(MemoryStore):
    """A real memory store that refuses writes while ``full``."""

    def __init__(self) -> None:
        super().__init__()
        self.full = True

    def commit(self, batch: Batch) -> None:
        if self.full:
            raise LedgerWriteFailed("ledger x: disk full (SQLITE_FULL)")
        super().commit(batch)

    def probe(self) -> None:
        if self.full:
            raise LedgerWriteFailed("ledger x: disk full (SQLITE_FULL)")


async def _status(servicer: health.aio.HealthServicer) -> int:
    class Context:
        async def abort(self, *args: object) -> None:
            raise AssertionError(args)

        def set_code(self, *_: object) -> None: ...

    context = cast(
        "grpc.aio.ServicerContext[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]",
        Context(),
    )
    reply = await servicer.Check(health_pb2.HealthCheckRequest(), context)
    return int(reply.status)


async def test_health_follows_the_ledger_and_recovers_when_writes_work_again() -> None:
    store = Refusing()
    writer = LedgerWriter(store)
    servicer = health.aio.HealthServicer()
    status = Health(servicer, ["hwbp.v1.Arbiter"])
    writer.listeners.append(status.ledger)
    status.started = True
    await status.apply()
    assert await _status(servicer) == SERVING
    with pytest.raises(LedgerWriteFailed):
        await writer.commit(Batch(hosts=[HostRecord("h", 1, 1)]))
    await asyncio.sleep(0)  # the listener's refresh runs on the loop
    assert await _status(servicer) == NOT_SERVING and writer.failures == 1
    assert not await writer.probe()
    store.full = False
    assert await writer.probe()
    await asyncio.sleep(0)
    assert await _status(servicer) == SERVING and writer.problem == ""
    status.draining = True  # draining wins over a working ledger
    writer.listeners[0]("")
    await asyncio.sleep(0)
    assert await _status(servicer) == NOT_SERVING
    samples = {m.name: m.samples[0].value for m in HealthCollector(writer).collect() if m.samples}
    assert samples == {"hwbp_ledger_write_failures": 1, "hwbp_ledger_writable": 1}
    writer.close()


async def test_a_background_task_survives_its_exceptions_and_counts_them(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health_mod, "RESTART_AFTER", 0.0)
    runs: list[int] = []
    done = asyncio.Event()

    async def step() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError(f"boom {len(runs)}")
        done.set()
        await asyncio.sleep(3600)

    before = health_mod.FAILURES["flaky"]
    with caplog.at_level(logging.ERROR, logger="hwbp.server"):
        task = asyncio.create_task(supervise("flaky", step))
        await asyncio.wait_for(done.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(runs) == 3 and health_mod.FAILURES["flaky"] - before == 2
    assert sum("background task flaky failed" in r.message for r in caplog.records) == 2
    assert any(r.exc_info for r in caplog.records)
