"""P4: resync at fleet scale, 1,024 and 4,096 agent streams with 100,000 reservations.

For each point, fleet processes of 256 simulated CPUs connect to an arbiter with a
SQLite ledger; task+cpu reservations are spread so every (task, cpu) pair holds one,
which the budget always allows, and concurrent clients create them. Then the arbiter
is stopped and started again on the same ledger and port, and timed from the spawn of
its process until every agent is live again and acknowledged its resync, with every
reservation restored. Completion is read from the arbiter's metrics endpoint
(``hwbp_agents_synced``, ``hwbp_reservations``): every 0.5 s, then every 0.05 s once nine
in ten agents are synced, which costs it little; the full inventory and list are checked
once afterwards, untimed. Measured: the arbiter's VmRSS,
the time to listen (interpreter, imports, ledger restore), the time from listening until
every agent resynced, and that per agent. A second restart runs under cProfile.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from typing import Any

import grpc

from hwbp.bench.p1 import profile_summary
from hwbp.load import procs
from hwbp.load.rpc import CHANNEL_OPTIONS, all_pages
from hwbp.v1 import arbiter_pb2, arbiter_pb2_grpc, types_pb2

CPUS_PER_FLEET = 256
POINTS = {1024: (100_000, 2.0, 500.0), 4096: (100_000, 8.0, 500.0)}  # streams: (held, s, MB)
QUICK_POINTS = {32: (2_000, 2.0, 500.0), 128: (2_000, 8.0, 500.0)}
# Seconds between reads of the metrics endpoint: each costs the arbiter some 10-40 ms
# (every CPU's gauges), so it is read slowly until nine in ten agents are synced, then
# often, for a precise end.
POLL_SLOW, POLL_FAST, FAST_FROM = 0.5, 0.05, 0.9


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


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used: on a shared machine, what the arbiter
    itself spent is steadier than the wall time, which waits for whoever else runs."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _metrics(url: str) -> dict[str, float]:
    """hwbp_agents_synced and hwbp_reservations summed over the bench's hosts."""
    with urllib.request.urlopen(url, timeout=5) as page:
        text = page.read().decode()
    out = {"synced": 0.0, "reservations": 0.0}
    for line in text.splitlines():
        if not line.startswith(("hwbp_agents_synced{", "hwbp_reservations{")):
            continue
        name, _, value = line.rpartition(" ")
        if 'host="p4h' in name:
            out["synced" if name.startswith("hwbp_agents_synced") else "reservations"] += float(
                value
            )
    return out


def wait_resynced(url: str, streams: int, held: int, cap_s: float) -> dict[str, Any]:
    """Poll the metrics until every stream is synced and every reservation is back."""
    t0 = time.monotonic()
    seen: dict[str, Any] = {}
    while time.monotonic() - t0 < cap_s:
        try:
            seen = _metrics(url)
        except OSError:
            seen = {}
        if seen.get("synced") == streams and seen.get("reservations") == held:
            return {"at": time.monotonic(), **seen}
        time.sleep(POLL_FAST if seen.get("synced", 0) >= FAST_FROM * streams else POLL_SLOW)
    return {"at": None, **seen}


async def verify(address: str, streams: int) -> dict[str, Any]:
    """Untimed: every CPU online and acked at its generation, no mismatch; all listed."""
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
        stub = arbiter_pb2_grpc.ArbiterStub(ch)
        inv = await all_pages(stub.Inventory, arbiter_pb2.InventoryRequest(), "cpus", 120)
        cpus = [c for c in inv.cpus if c.host.startswith("p4h")]
        listed = await all_pages(stub.List, arbiter_pb2.ListRequest(), "reservations", 120)
    return {
        "cpus": len(cpus),
        "online_and_acked": sum(1 for c in cpus if c.online and c.acked_generation == c.generation),
        "mismatched": sum(1 for c in cpus if c.mismatch),
        "listed": sum(1 for r in listed.reservations if r.target.host.startswith("p4h")),
        "ok": len(cpus) == streams,
    }


def _restart(
    address: str, db: str, url_of: list[str], streams: int, held: int, cap: float, profile: str = ""
) -> tuple[procs.Child, dict[str, Any]]:
    t0 = time.monotonic()
    arb, _ = procs.start_arbiter(
        "--ack-timeout", "30", "--metrics-listen", "127.0.0.1:0", listen=address, db=db,
        profile=profile,
    )  # fmt: skip
    listening = time.monotonic() - t0
    cpu_listening = cpu_seconds(arb.pid)
    url_of[0] = _metrics_url(arb)
    done = wait_resynced(url_of[0], streams, held, cap)
    cpu_synced = cpu_seconds(arb.pid)
    at = done.pop("at")
    out: dict[str, Any] = {
        "listening_s": round(listening, 2),
        "cpu_to_listen_s": round(cpu_listening, 2),
        "cpu_to_resync_s": round(cpu_synced - cpu_listening, 2),
        "resync_s": None if at is None else round(at - t0, 2),
        "after_listening_s": None if at is None else round(at - t0 - listening, 2),
        "seen": done,
    }
    if at is not None:
        out["ms_per_agent"] = round(1000 * (at - t0 - listening) / streams, 3)
        out["cpu_ms_per_agent"] = round(1000 * (cpu_synced - cpu_listening) / streams, 3)
    return arb, out


def _metrics_url(arb: procs.Child) -> str:
    line = next(x for x in arb.lines if x.startswith("metrics on "))
    return f"http://{line.split()[-1]}/metrics"


def point(streams: int, held: int, quick: bool, profile: bool) -> dict[str, Any]:
    hosts = max(1, streams // CPUS_PER_FLEET)
    cpus = streams // hosts
    fill_cap, cap = (60.0, 60.0) if quick else (600.0, 120.0)
    children: list[procs.Child] = []
    url = [""]
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "p4.db")
        try:
            arb, address = procs.start_arbiter(
                "--ack-timeout", "30", "--metrics-listen", "127.0.0.1:0", db=db
            )
            children.append(arb)
            t0 = time.monotonic()
            for h in range(hosts):
                children.append(procs.start_fleet(address, f"p4h{h}", cpus, timeout=300))
            connect_s = time.monotonic() - t0
            rss_streams = arb.rss_mb()
            filled = asyncio.run(fill(address, hosts, cpus, held, fill_cap))
            rss_full = arb.rss_mb()
            arb.stop(timeout=60)
            arb, first = _restart(address, db, url, streams, filled["created"], cap)
            children[0] = arb
            rss_after = arb.rss_mb()
            checked = asyncio.run(verify(address, streams))
            summary: dict[str, Any] | None = None
            if profile:
                arb.stop(timeout=60)
                path = os.path.join(tmp, "arbiter.prof")
                arb, again = _restart(address, db, url, streams, filled["created"], cap, path)
                children[0] = arb
                arb.stop(timeout=60)
                summary = profile_summary(path)
                summary["note"] = (
                    "cProfile of the arbiter's main thread from its spawn until every agent "
                    f"resynced (under the profiler: {again['resync_s']} s)"
                )
        finally:
            procs.stop_all(children)
    rss_peak = max(rss_full, rss_after)
    return {
        "hosts": hosts,
        "cpus_per_host": cpus,
        "agent_streams": streams,
        "target_reservations": held,
        "streams_connect_s": round(connect_s, 1),
        "rss_mb_streams_only": round(rss_streams, 1),
        "rss_mb": round(rss_full, 1),
        "rss_mb_after_restart": round(rss_after, 1),
        "rss_mb_peak": round(rss_peak, 1),
        **filled,
        **{f"restart_{k}": v for k, v in first.items()},
        "verified": checked,
        "profile": summary,
    }


def run(quick: bool) -> dict[str, Any]:
    points: dict[str, Any] = {}
    for streams, (held, target_s, target_mb) in (QUICK_POINTS if quick else POINTS).items():
        print(f"[bench P4] {streams} streams, {held:,} reservations", file=sys.stderr, flush=True)
        pt = point(streams, held, quick, profile=streams == min(QUICK_POINTS if quick else POINTS))
        resync = pt["restart_resync_s"]
        pt["target_resync_s"] = target_s
        pt["target_rss_mb"] = target_mb
        pt["met"] = (
            resync is not None
            and resync <= target_s
            and pt["rss_mb_peak"] <= target_mb
            and pt["created"] >= held
            and pt["verified"]["online_and_acked"] == streams
            and pt["verified"]["listed"] >= held
        )
        points[str(streams)] = pt
    return {"points": points, "poll_s": [POLL_SLOW, POLL_FAST]}
