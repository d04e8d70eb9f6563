"""P4: one arbiter with 1,024 agent streams and 100,000 live reservations.

Fleet processes (4 x 256 simulated CPUs) connect; task+cpu reservations are spread so
every (task, cpu) pair holds one, which the budget always allows; concurrent clients
create them within a time cap (each reload carries the CPU's full state, so the fill
slows as CPUs fill up: about 100 assignments per CPU at the end). Measured: the
arbiter's VmRSS, and the time from an arbiter restart until every agent is back
online and has acknowledged its generation (and, when the arbiter persists its ledger
with ``--db``, until all reservations are listed again).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from typing import Any

import grpc

from hwbp.load import procs
from hwbp.load.rpc import CHANNEL_OPTIONS, all_pages
from hwbp.v1 import arbiter_pb2, arbiter_pb2_grpc, types_pb2

TARGET_MB = 300.0


async def fill(
    address: str, hosts: int, cpus: int, want: int, cap_s: float, workers: int = 128
) -> dict[str, Any]:
    """Create up to ``want`` reservations within ``cap_s`` seconds."""
    channels = [grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in range(4)]
    stubs = [arbiter_pb2_grpc.ArbiterStub(ch) for ch in channels]
    next_k, made = [0], [0]
    errors: Counter[str] = Counter()
    t0 = time.monotonic()
    deadline = t0 + cap_s

    async def worker(w: int) -> None:
        stub = stubs[w % len(stubs)]
        while next_k[0] < want and time.monotonic() < deadline:
            k = next_k[0]
            next_k[0] += 1
            per_round = hosts * cpus
            target = types_pb2.Target(
                host=f"p4h{k % hosts}",
                scope=types_pb2.SCOPE_TASK_CPU,
                cpu=(k // hosts) % cpus,
                task=10_000 + k // per_round,
            )
            spec = types_pb2.BreakpointSpec(
                addr=0x600000 + 8 * (k % 4096),
                len=8,
                type=types_pb2.BREAKPOINT_TYPE_WRITE,
                enabled=True,
            )
            try:
                await stub.Reserve(
                    arbiter_pb2.ReserveRequest(
                        request_id=f"p4-{k}", target=target, spec=spec, owner="bench-p4"
                    ),
                    timeout=60,
                )
                made[0] += 1
            except grpc.aio.AioRpcError as err:
                errors[err.code().name] += 1

    async def progress() -> None:
        while True:
            await asyncio.sleep(5)
            print(f"[bench P4] {made[0]} reservations", file=sys.stderr, flush=True)

    ticker = asyncio.create_task(progress())
    try:
        await asyncio.gather(*(worker(w) for w in range(workers)))
    finally:
        ticker.cancel()
        for ch in channels:
            await ch.close()
    elapsed = time.monotonic() - t0
    return {
        "created": made[0],
        "fill_s": round(elapsed, 1),
        "fill_per_s": round(made[0] / elapsed, 1),
        "errors": dict(errors),
    }


async def wait_resynced(
    address: str, streams: int, want_reservations: int, cap_s: float
) -> dict[str, Any]:
    """Poll until every CPU is online and acked; with persistence, until all are listed."""
    t0 = time.monotonic()
    seen: dict[str, Any] = {"online": 0, "acked": 0, "listed": 0}
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
        stub = arbiter_pb2_grpc.ArbiterStub(ch)
        while time.monotonic() - t0 < cap_s:
            try:
                inv = await all_pages(stub.Inventory, arbiter_pb2.InventoryRequest(), "cpus", 30)
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.5)
                continue
            cpus = [c for c in inv.cpus if c.host.startswith("p4h")]
            seen["online"] = sum(1 for c in cpus if c.online)
            seen["acked"] = sum(1 for c in cpus if c.online and c.acked_generation == c.generation)
            if seen["acked"] == streams:
                if want_reservations:
                    listed = await all_pages(
                        stub.List, arbiter_pb2.ListRequest(), "reservations", 60
                    )
                    seen["listed"] = len(listed.reservations)
                if seen["listed"] >= want_reservations:
                    seen["resync_s"] = round(time.monotonic() - t0, 2)
                    return seen
            await asyncio.sleep(1.0)
    seen["resync_s"] = None
    return seen


def run(quick: bool) -> dict[str, Any]:
    hosts, cpus, want, fill_cap, resync_cap = (
        (2, 16, 2_000, 20.0, 60.0) if quick else (4, 256, 100_000, 270.0, 120.0)
    )
    streams = hosts * cpus
    persistent = procs.arbiter_has_db()
    children: list[procs.Child] = []
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "p4.db") if persistent else ":memory:"
        try:
            arb, address = procs.start_arbiter("--ack-timeout", "30", db=db)
            children.append(arb)
            t0 = time.monotonic()
            for h in range(hosts):
                children.append(procs.start_fleet(address, f"p4h{h}", cpus, timeout=300))
            connect_s = time.monotonic() - t0
            rss_streams = arb.rss_mb()
            filled = asyncio.run(fill(address, hosts, cpus, want, fill_cap))
            rss_full = arb.rss_mb()
            t1 = time.monotonic()
            arb.stop(timeout=60)
            stop_s = time.monotonic() - t1
            t2 = time.monotonic()
            arb, address = procs.start_arbiter("--ack-timeout", "30", listen=address, db=db)
            children[0] = arb
            listening_s = time.monotonic() - t2
            resync = asyncio.run(
                wait_resynced(address, streams, filled["created"] if persistent else 0, resync_cap)
            )
            rss_after = arb.rss_mb()
        finally:
            procs.stop_all(children)
    resync_s = resync["resync_s"]
    return {
        "hosts": hosts,
        "cpus_per_host": cpus,
        "agent_streams": streams,
        "target_reservations": want,
        "streams_connect_s": round(connect_s, 1),
        "rss_mb_streams_only": round(rss_streams, 1),
        "rss_mb": round(rss_full, 1),
        "rss_mb_after_restart": round(rss_after, 1),
        "rss_target_mb": TARGET_MB,
        "rss_met": rss_full <= TARGET_MB and filled["created"] >= want,
        **filled,
        "persistent": persistent,
        "reservations_reloaded": resync["listed"] if persistent else 0,
        "arbiter_stop_s": round(stop_s, 2),
        "restart_listening_s": round(listening_s, 2),
        "resync_s": None if resync_s is None else round(resync_s + listening_s, 2),
        "resync_detail": resync,
        "resync_note": (
            "from arbiter restart (process spawn) until every agent is online with "
            "acked_generation == generation"
            + (
                " and every reservation is listed again (--db)"
                if persistent
                else "; the arbiter has no persistence, so no reservations were reloaded"
            )
        ),
    }
