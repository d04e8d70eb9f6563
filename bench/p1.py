"""P1: reserve+release round trips through the arbiter vs the relay floor and a bare echo.

One op is a Reserve then a Release of a task+cpu breakpoint (each worker its own task,
so 32 in flight never run out of slots); every one waits for the 1-CPU fleet's ACK.
The baseline is the *relay* (``bench/echo.py``): the same two requests, each forwarded
over one bidi stream to a bare agent process and back, which is the floor of an
arbiter that must hear its agent before it answers. A bare unary echo (one hop) is kept
as a second reference. The arbiter is also measured on uvloop's event loop in the same
run (when uvloop is installed). Afterwards it is run again under cProfile to see where
its time goes.
"""

from __future__ import annotations

import asyncio
import os
import pstats
import tempfile
from typing import Any

import grpc

from hwbp.bench.harness import Run, closed_loop, start_echo, start_relay_agent
from hwbp.load import procs
from hwbp.load.rpc import CHANNEL_OPTIONS
from hwbp.v1 import arbiter_pb2, types_pb2

IN_FLIGHT = (1, 32)
TARGETS = {1: 0.8, 32: 1.0}  # x the relay's throughput, at that many calls in flight


def _reserve(w: int, n: int) -> arbiter_pb2.ReserveRequest:
    return arbiter_pb2.ReserveRequest(
        request_id=f"p1-{w}-{n:08d}",
        target=types_pb2.Target(host="p1", scope=types_pb2.SCOPE_TASK_CPU, cpu=0, task=1000 + w),
        spec=types_pb2.BreakpointSpec(
            addr=0x400000 + 8 * w, len=8, type=types_pb2.BREAKPOINT_TYPE_WRITE, enabled=True
        ),
        owner="bench-p1",
    )


async def arbiter_runs(address: str, seconds: float, warmup: float) -> dict[int, Run]:
    out: dict[int, Run] = {}
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
        from hwbp.v1 import arbiter_pb2_grpc

        stub = arbiter_pb2_grpc.ArbiterStub(ch)
        counter = [0]

        async def op(w: int) -> None:
            counter[0] += 1
            res = await stub.Reserve(_reserve(w, counter[0]), timeout=30)
            await stub.Release(
                arbiter_pb2.ReleaseRequest(
                    request_id=f"p1-{w}-{counter[0]:08d}r", reservation_id=res.reservation.id
                ),
                timeout=30,
            )

        for n in IN_FLIGHT:
            out[n] = await closed_loop(op, n, seconds, warmup)
    return out


async def echo_runs(
    address: str, seconds: float, warmup: float, method: str = "Echo"
) -> dict[int, Run]:
    """Two calls per op with the payload sizes of a reserve and a release."""
    big = _reserve(0, 0).SerializeToString()
    small = arbiter_pb2.ReleaseRequest(
        request_id="p1-0-00000000r", reservation_id="r123456"
    ).SerializeToString()
    out: dict[int, Run] = {}
    async with grpc.aio.insecure_channel(address) as ch:
        echo: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = ch.unary_unary(
            f"/bench.Echo/{method}"
        )

        async def op(w: int) -> None:
            await echo(big, timeout=30)
            await echo(small, timeout=30)

        for n in IN_FLIGHT:
            out[n] = await closed_loop(op, n, seconds, warmup)
    return out


def _with_fleet(profile: str = "", uvloop: bool = False) -> tuple[list[procs.Child], str]:
    if uvloop:
        argv = ["hwbp.server", "--listen", "127.0.0.1:0", "--log-level", "WARNING"]
        arb, line = procs.start(
            ["-m", "hwbp.bench.uvrun", *argv, "--db", ":memory:"],
            "arbiter on uvloop",
            wait_for="listening on",
        )
        address = line.rsplit(" ", 1)[-1]
    else:
        arb, address = procs.start_arbiter(profile=profile)
    return [arb, procs.start_fleet(address, "p1", 1)], address


def _has_uvloop() -> bool:
    import importlib.util

    return importlib.util.find_spec("uvloop") is not None


def profile_summary(path: str, top: int = 12) -> dict[str, Any]:
    """Where the arbiter's main thread spent its time, by area and by function.

    Cython code (grpc's cygrpc) is invisible to cProfile: its time is billed to the
    Python frame that resumed it, which for asyncio task steps is ``Context.run``.
    """
    st = pstats.Stats(path)
    total = 0.0
    areas: dict[str, float] = {}
    rows, ours = [], []
    for (file, line, fn), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        total += tt
        area = _area(file, fn)
        areas[area] = areas.get(area, 0.0) + tt
        name = f"{_short(file)}:{line}({fn})"
        rows.append((tt, ct, nc, name))
        if area.startswith("arbiter") and fn not in ("<module>", "main", "serve"):
            ours.append((ct, tt, nc, name))
    rows.sort(reverse=True)
    ours.sort(reverse=True)
    idle = areas.get(IDLE, 0.0)
    busy = total - idle
    return {
        "total_s": round(total, 3),
        "idle_s": round(idle, 3),
        "busy_by_area_pct": {
            k: round(100 * v / busy, 1)
            for k, v in sorted(areas.items(), key=lambda kv: -kv[1])
            if busy and k != IDLE
        },
        "top_self": [
            {"fn": name, "self_s": round(tt, 3), "cum_s": round(ct, 3), "calls": nc}
            for tt, ct, nc, name in rows[:top]
        ],
        "top_arbiter_cumulative": [
            {"fn": name, "cum_s": round(ct, 3), "self_s": round(tt, 3), "calls": nc}
            for ct, tt, nc, name in ours[:top]
        ],
    }


IDLE = "idle (epoll wait)"


def _short(file: str) -> str:
    parts = file.replace("\\", "/").split("/")
    return "/".join(parts[-2:])


def _area(file: str, fn: str) -> str:
    f = file.replace("\\", "/")
    if "select.epoll" in fn:
        return IDLE
    if "_contextvars.Context" in fn:
        return "grpc Cython/C steps (billed to Context.run)"
    if "/server/" in f or "/hwbp/" in f or "/wire/" in f:
        return "arbiter code (server, hwbp, wire)"
    if "grpc" in f:
        return "grpc python layer"
    if "protobuf" in f or "google/" in f:
        return "protobuf"
    if "asyncio" in f or "selectors" in f:
        return "asyncio event loop"
    if "logging" in f:
        return "logging"
    if "sqlite" in f or "sqlite" in fn:
        return "sqlite persistence"
    return "other (builtins, stdlib)"


def run(quick: bool) -> dict[str, Any]:
    seconds, warmup = (1.0, 0.3) if quick else (4.0, 0.5)
    children, address = _with_fleet()
    try:
        arb = asyncio.run(arbiter_runs(address, seconds, warmup))
    finally:
        procs.stop_all(children)
    uv: dict[int, Run] = {}
    if _has_uvloop():
        children, address = _with_fleet(uvloop=True)
        try:
            uv = asyncio.run(arbiter_runs(address, seconds, warmup))
        finally:
            procs.stop_all(children)
    echo_child, echo_addr = start_echo()
    try:
        relay_agent = start_relay_agent(echo_addr)
        try:
            relay = asyncio.run(echo_runs(echo_addr, seconds, warmup, "Relay"))
        finally:
            relay_agent.stop()
        echo = asyncio.run(echo_runs(echo_addr, seconds, warmup))
    finally:
        echo_child.stop()
    out: dict[str, Any] = {
        "seconds_per_point": seconds,
        "uvloop": "measured" if uv else "not installed",
        "points": {},
    }
    for n in IN_FLIGHT:
        a, r, e = arb[n], relay[n], echo[n]
        ratio = a.ops_per_s / r.ops_per_s if r.ops_per_s else 0.0
        out["points"][str(n)] = {
            "in_flight": n,
            "arbiter_ops_per_s": round(a.ops_per_s, 1),
            "arbiter_p50_ms": round(a.median_ms, 3),
            "arbiter_p99_ms": round(a.pct_ms(99), 3),
            "relay_ops_per_s": round(r.ops_per_s, 1),
            "relay_p50_ms": round(r.median_ms, 3),
            "relay_p99_ms": round(r.pct_ms(99), 3),
            "echo_ops_per_s": round(e.ops_per_s, 1),
            "echo_p50_ms": round(e.median_ms, 3),
            "echo_p99_ms": round(e.pct_ms(99), 3),
            "ratio": round(ratio, 3),
            "ratio_to_echo": round(a.ops_per_s / e.ops_per_s if e.ops_per_s else 0.0, 3),
            "target": TARGETS[n],
            "met": ratio >= TARGETS[n],
        }
        if n in uv:
            u = uv[n]
            out["points"][str(n)].update(
                arbiter_uvloop_ops_per_s=round(u.ops_per_s, 1),
                arbiter_uvloop_p50_ms=round(u.median_ms, 3),
                arbiter_uvloop_p99_ms=round(u.pct_ms(99), 3),
                uvloop_vs_asyncio=round(u.ops_per_s / a.ops_per_s if a.ops_per_s else 0.0, 3),
            )
    out["profile"] = _profiled(seconds, warmup)
    return out


def _profiled(seconds: float, warmup: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "arbiter.prof")
        children, address = _with_fleet(profile=path)
        try:
            runs = asyncio.run(arbiter_runs(address, seconds, warmup))
        finally:
            procs.stop_all(children)
        summary = profile_summary(path)
    summary["note"] = (
        "cProfile of the arbiter's main thread (the asyncio loop) during a reserve+release "
        f"run at 1 and 32 in flight; ops/s under the profiler: "
        f"{', '.join(f'{n}: {r.ops_per_s:.0f}' for n, r in runs.items())}"
    )
    return summary
