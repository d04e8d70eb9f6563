"""P3: one system-wide reservation acknowledged by N agents vs a bare bidi fan-out.

For each N the arbiter gets a host with N simulated CPUs (one fleet process), and a
Reserve then a Release of a system-scope breakpoint are timed: each is one broadcast
that returns after all N ACKs. The baseline is bench.echo's fan-out: one Broadcast
writes a reload-sized message to N open streams and waits for N ack-sized replies.
Both measure from a client in this process through a server process to N stream ends
in a third process, so the ratio isolates what the arbiter adds.
"""

from __future__ import annotations

import asyncio
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
TARGET = 1.5  # at N = 64
TARGET_N = 64


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
        broadcast = ch.unary_unary("/bench.Echo/Broadcast")
        for i in range(2 * reps + 2):
            t0 = time.perf_counter()
            await broadcast(payload, timeout=60)
            if i >= 2:
                lat.append(time.perf_counter() - t0)
    return Run(len(lat), sum(lat), lat)


def run(quick: bool) -> dict[str, Any]:
    sizes = QUICK_SIZES if quick else SIZES
    reps = 5 if quick else 25
    arb, address = procs.start_arbiter("--ack-timeout", "30")
    echo, echo_addr = start_echo()
    points: dict[str, Any] = {}
    try:
        for n in sizes:
            fleet = procs.start_fleet(address, f"p3n{n}", n)
            try:
                a = asyncio.run(arbiter_broadcasts(address, f"p3n{n}", reps))
            finally:
                fleet.stop()
            agents = start_echo_agents(echo_addr, n)
            try:
                b = asyncio.run(echo_broadcasts(echo_addr, reps))
            finally:
                agents.stop()
            ratio = a.median_ms / b.median_ms if b.median_ms else 0.0
            points[str(n)] = {
                "n": n,
                "broadcasts": a.ops,
                "arbiter_p50_ms": round(a.median_ms, 3),
                "arbiter_p95_ms": round(a.pct_ms(95), 3),
                "echo_p50_ms": round(b.median_ms, 3),
                "echo_p95_ms": round(b.pct_ms(95), 3),
                "ratio": round(ratio, 3),
                "target": TARGET if n == TARGET_N else None,
                "met": (ratio <= TARGET) if n == TARGET_N else None,
            }
    finally:
        echo.stop()
        arb.stop()
    return {"reps_per_n": 2 * reps, "points": points}
