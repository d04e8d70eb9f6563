"""P6: a change costs the same on a host that holds 10,000 task reservations as on an empty one.

One arbiter, two simulated hosts of ``CPUS`` CPUs each (a fleet process per host). The
full host is filled with task-scoped reservations, one per task: each applies to every
CPU, so every CPU's state holds all of them. Then a reserve+release of one more task
breakpoint (each waiting for every CPU's ACK) is timed on the full host and on the empty
one, in alternating windows of the same run, so drift on a shared machine hits both.
Before deltas, every change resent each affected CPU's whole state: with 8,000 task
reservations a reserve took seconds.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from hwbp.bench.harness import Run, closed_loop
from hwbp.load import procs
from hwbp.load.rpc import CHANNEL_OPTIONS
from hwbp.v1 import arbiter_pb2, arbiter_pb2_grpc, types_pb2

CPUS = 4
HELD = 10_000
QUICK_HELD = 2_000
TARGET = 0.8  # full host ops/s >= 0.8 x empty host ops/s
IN_FLIGHT = (1, 8)
FULL, EMPTY = "p6full", "p6empty"


def _spec(addr: int) -> types_pb2.BreakpointSpec:
    return types_pb2.BreakpointSpec(
        addr=addr, len=8, type=types_pb2.BREAKPOINT_TYPE_WRITE, enabled=True
    )


async def fill(
    stub: arbiter_pb2_grpc.ArbiterAsyncStub, want: int, workers: int = 64
) -> dict[str, Any]:
    """``want`` task reservations on the full host, one task each (tasks 100000...)."""
    next_k, made = [0], [0]
    errors: Counter[str] = Counter()
    t0 = time.monotonic()

    async def worker() -> None:
        while next_k[0] < want:
            k = next_k[0]
            next_k[0] += 1
            req = arbiter_pb2.ReserveRequest(
                request_id=f"p6-fill-{k}",
                target=types_pb2.Target(host=FULL, scope=types_pb2.SCOPE_TASK, task=100_000 + k),
                spec=_spec(0x600000 + 8 * (k % 4096)),
                owner="bench-p6",
            )
            try:
                await stub.Reserve(req, timeout=120)
                made[0] += 1
            except grpc.aio.AioRpcError as err:
                errors[err.code().name] += 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.monotonic() - t0
    return {
        "held": made[0],
        "fill_s": round(elapsed, 1),
        "fill_per_s": round(made[0] / elapsed, 1) if elapsed else 0.0,
        "fill_errors": dict(errors),
    }


async def measure(
    address: str, want: int, seconds: float, warmup: float, rounds: int
) -> tuple[dict[str, Any], dict[tuple[str, int], list[Run]]]:
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
        stub = arbiter_pb2_grpc.ArbiterStub(ch)
        filled = await fill(stub, want)
        print(f"[bench P6] {filled['held']} held in {filled['fill_s']} s", file=sys.stderr)
        counter = [0]

        def op_on(host: str) -> Callable[[int], Awaitable[None]]:
            async def op(w: int) -> None:
                counter[0] += 1
                n = counter[0]
                res = await stub.Reserve(
                    arbiter_pb2.ReserveRequest(
                        request_id=f"p6-{n}",
                        target=types_pb2.Target(
                            host=host, scope=types_pb2.SCOPE_TASK, task=50_000 + w
                        ),
                        spec=_spec(0x400000 + 8 * w),
                        owner="bench-p6",
                    ),
                    timeout=60,
                )
                await stub.Release(
                    arbiter_pb2.ReleaseRequest(
                        request_id=f"p6-{n}r", reservation_id=res.reservation.id
                    ),
                    timeout=60,
                )

            return op

        runs: dict[tuple[str, int], list[Run]] = {}
        for _ in range(rounds):
            for n in IN_FLIGHT:
                for host in (EMPTY, FULL):
                    run = await closed_loop(op_on(host), n, seconds, warmup)
                    runs.setdefault((host, n), []).append(run)
    return filled, runs


def _merge(runs: list[Run]) -> Run:
    return Run(
        sum(r.ops for r in runs),
        sum(r.seconds for r in runs),
        [x for r in runs for x in r.latencies],
    )


def run(quick: bool) -> dict[str, Any]:
    want = QUICK_HELD if quick else HELD
    seconds, warmup, rounds = (1.0, 0.2, 2) if quick else (3.0, 0.5, 3)
    children: list[procs.Child] = []
    try:
        arb, address = procs.start_arbiter("--ack-timeout", "30")
        children.append(arb)
        children += [procs.start_fleet(address, host, CPUS) for host in (FULL, EMPTY)]
        filled, runs = asyncio.run(measure(address, want, seconds, warmup, rounds))
        rss = arb.rss_mb()
    finally:
        procs.stop_all(children)
    out: dict[str, Any] = {
        "cpus_per_host": CPUS,
        "target_held": want,
        **filled,
        "arbiter_rss_mb": round(rss, 1),
        "seconds_per_window": seconds,
        "rounds": rounds,
        "points": {},
    }
    for n in IN_FLIGHT:
        full, empty = _merge(runs[(FULL, n)]), _merge(runs[(EMPTY, n)])
        ratio = full.ops_per_s / empty.ops_per_s if empty.ops_per_s else 0.0
        out["points"][str(n)] = {
            "in_flight": n,
            "full_ops_per_s": round(full.ops_per_s, 1),
            "full_p50_ms": round(full.median_ms, 3),
            "full_p99_ms": round(full.pct_ms(99), 3),
            "empty_ops_per_s": round(empty.ops_per_s, 1),
            "empty_p50_ms": round(empty.median_ms, 3),
            "empty_p99_ms": round(empty.pct_ms(99), 3),
            "ratio": round(ratio, 3),
            "target": TARGET,
            "met": ratio >= TARGET and filled["held"] >= want,
        }
    return out
