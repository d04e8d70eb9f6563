"""Measurement helpers shared by the benchmarks: closed-loop runs and baseline processes."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hwbp.load import procs


@dataclass(frozen=True)
class Run:
    ops: int
    seconds: float
    latencies: list[float]

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies) * 1e3 if self.latencies else 0.0

    def pct_ms(self, q: float) -> float:
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(q / 100 * len(lat)))] * 1e3 if lat else 0.0


async def closed_loop(
    op: Callable[[int], Awaitable[None]], in_flight: int, seconds: float, warmup: float
) -> Run:
    """``in_flight`` workers each call ``op(worker)`` back to back; only the timed window
    after ``warmup`` counts, so connection setup and first-call costs stay out."""
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup
    stop = start + seconds
    latencies: list[float] = []

    async def worker(w: int) -> None:
        while True:
            t0 = time.perf_counter()
            now = loop.time()
            if now >= stop:
                return
            await op(w)
            if now >= start:
                latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker(w) for w in range(in_flight)))
    return Run(len(latencies), seconds, latencies)


def start_echo() -> tuple[procs.Child, str]:
    child, line = procs.start(["-m", "hwbp.bench.echo", "server"], "echo", wait_for="listening on")
    return child, line.rsplit(" ", 1)[-1]


def start_echo_agents(target: str, n: int) -> procs.Child:
    child, _ = procs.start(
        ["-m", "hwbp.bench.echo", "agents", "--target", target, "-n", str(n)],
        f"echo agents {n}",
        wait_for="agents ready",
        timeout=120,
    )
    return child


def start_relay_agent(target: str) -> procs.Child:
    """The bare agent of the relay baseline, connected to an echo server's Relay."""
    child, _ = procs.start(
        ["-m", "hwbp.bench.echo", "relay-agent", "--target", target],
        "relay agent",
        wait_for="relay agent ready",
        timeout=60,
    )
    return child
