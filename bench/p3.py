"""P3: one system-wide reservation acknowledged by N agents vs a bare bidi fan-out.

For each N the arbiter gets a host with N simulated CPUs (one fleet process), and a
Reserve then a Release of a system-scope breakpoint are timed: each is one broadcast
that returns after all N ACKs. The baseline is bench.echo's fan-out: one Broadcast
writes a reload-sized message to N open streams and waits for N ack-sized replies.
Both measure from a client in this process through a server process to N stream ends
in a third process, so the ratio isolates what the arbiter adds. At N = 64 the pair is
measured five times, alternating, and the ratio is reported as the median of the five
with its spread (the target: median <= 1.5x, no run above 1.8x).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import grpc

from hwbp.bench.harness import Run, start_echo, start_echo_agents
from hwbp.load import procs
from hwbp.load.rpc import CHANNEL_OPTIONS
from hwbp.model import Assignment, BpType, Breakpoint
from hwbp.v1 import agent_pb2, arbiter_pb2, arbiter_pb2_grpc, types_pb2
from hwbp.wire import convert

SIZES = (1, 16, 64, 256)
QUICK_SIZES = (1, 16)
TARGET = 1.5  # at N = 64, the median of RUNS
WORST = 1.8  # no run above this
TARGET_N = 64
RUNS = 5
QUICK_TARGET_N = 16


def reload_payload() -> bytes:
    """What the arbiter sends each agent for one system breakpoint."""
    a = Assignment("r100000", None, Breakpoint(0x500000, 8, BpType.WRITE))
    msg = agent_pb2.ArbiterMessage(
        reload=agent_pb2.Reload(
            generation=100000, request_id="p3-000000", assignments=[convert.assignment_to(a)]
        )
    )
    return msg.SerializeToString()


async def arbiter_broadcasts(address: str, host: str, reps: int) -> Run:
    lat: list[float] = []
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
        stub = arbiter_pb2_grpc.ArbiterStub(ch)
        for i in range(reps + 2):  # the first two warm up
            t0 = time.perf_counter()
            res = await stub.Reserve(
                arbiter_pb2.ReserveRequest(
                    request_id=f"p3-{i}",
                    target=types_pb2.Target(host=host, scope=types_pb2.SCOPE_SYSTEM),
                    spec=types_pb2.BreakpointSpec(
                        addr=0x500000, len=8, type=types_pb2.BREAKPOINT_TYPE_WRITE, enabled=True
                    ),
                    owner="bench-p3",
                ),
                timeout=60,
            )
            t1 = time.perf_counter()
            await stub.Release(
                arbiter_pb2.ReleaseRequest(
                    request_id=f"p3-{i}r", reservation_id=res.reservation.id
                ),
                timeout=60,
            )
            t2 = time.perf_counter()
            if i >= 2:
                lat += [t1 - t0, t2 - t1]
    return Run(len(lat), sum(lat), lat)


async def echo_broadcasts(address: str, reps: int) -> Run:
    payload = reload_payload()
    lat: list[float] = []
    async with grpc.aio.insecure_channel(address) as ch:
        broadcast: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = ch.unary_unary(
            "/bench.Echo/Broadcast"
        )
        for i in range(2 * reps + 2):
            t0 = time.perf_counter()
            await broadcast(payload, timeout=60)
            if i >= 2:
                lat.append(time.perf_counter() - t0)
    return Run(len(lat), sum(lat), lat)


def _pair(address: str, echo_addr: str, host: str, n: int, reps: int) -> tuple[Run, Run]:
    """One arbiter measurement and one fan-out measurement, never running at once."""
    fleet = procs.start_fleet(address, host, n)
    try:
        a = asyncio.run(arbiter_broadcasts(address, host, reps))
    finally:
        fleet.stop()
    agents = start_echo_agents(echo_addr, n)
    try:
        b = asyncio.run(echo_broadcasts(echo_addr, reps))
    finally:
        agents.stop()
    return a, b


def _pool(runs: list[Run]) -> Run:
    return Run(
        sum(r.ops for r in runs),
        sum(r.seconds for r in runs),
        [x for r in runs for x in r.latencies],
    )


def run(quick: bool) -> dict[str, Any]:
    sizes = QUICK_SIZES if quick else SIZES
    reps = 5 if quick else 25
    target_n = QUICK_TARGET_N if quick else TARGET_N
    runs_at_target = 3 if quick else RUNS
    arb, address = procs.start_arbiter("--ack-timeout", "30")
    echo, echo_addr = start_echo()
    points: dict[str, Any] = {}
    try:
        for n in sizes:
            pairs = [
                _pair(address, echo_addr, f"p3n{n}", n, reps)
                for _ in range(runs_at_target if n == target_n else 1)
            ]
            ratios = [a.median_ms / b.median_ms if b.median_ms else 0.0 for a, b in pairs]
            a, b = _pool([p[0] for p in pairs]), _pool([p[1] for p in pairs])
            ratio = statistics.median(ratios)
            targeted = n == target_n
            points[str(n)] = {
                "n": n,
                "runs": len(pairs),
                "broadcasts": a.ops,
                "arbiter_p50_ms": round(statistics.median(x.median_ms for x, _ in pairs), 3),
                "arbiter_p99_ms": round(a.pct_ms(99), 3),
                "arbiter_us_per_agent": round(
                    1000 * statistics.median(x.median_ms for x, _ in pairs) / n, 1
                ),
                "echo_p50_ms": round(statistics.median(y.median_ms for _, y in pairs), 3),
                "echo_p99_ms": round(b.pct_ms(99), 3),
                "echo_us_per_agent": round(
                    1000 * statistics.median(y.median_ms for _, y in pairs) / n, 1
                ),
                "ratio": round(ratio, 3),
                "ratios": [round(r, 3) for r in ratios],
                "ratio_min": round(min(ratios), 3),
                "ratio_max": round(max(ratios), 3),
                "target": TARGET if targeted else None,
                "worst_allowed": WORST if targeted else None,
                "met": (ratio <= TARGET and max(ratios) <= WORST) if targeted else None,
            }
    finally:
        echo.stop()
        arb.stop()
    return {"reps_per_run": 2 * reps, "target_n": target_n, "points": points}
