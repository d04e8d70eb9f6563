"""P5: high availability on etcd — failover time, and what the etcd store costs.

* **Failover time**: three replicas on a real etcd (``--leader-ttl`` 2 s), a 1-CPU fleet
  following the leader. ``kill -9`` of the leader, then a keyed reserve is tried on the
  replicas in turn until one commits: the time from the kill to that success, median of
  several kills (the killed replica is restarted between rounds). The floor is the
  lease ttl: etcd frees the leader key only when the lease expires.
* **Throughput**: reserve+release round trips (as P1, 1 and 8 in flight) through a
  leader on etcd, against the same arbiter on SQLite (``--db``, WAL), measured in the
  same run: the ratio is what one etcd transaction per change costs.

``python -m hwbp.bench.ha [--quick]`` runs it alone; ``make bench`` includes it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from hwbp.bench.harness import Run, closed_loop
from hwbp.load import procs
from hwbp.load.etcd import Etcd
from hwbp.v1 import arbiter_pb2, arbiter_pb2_grpc, types_pb2
from hwbp.wire.health import health_check

TTL = 2.0
IN_FLIGHT = (1, 8)


def _start_replica(etcd: Etcd, port: int = 0) -> tuple[procs.Child, str]:
    child, line = procs.start(
        [
            "-m", "hwbp.server", "--listen", f"127.0.0.1:{port}", "--store", etcd.url,
            "--leader-ttl", str(TTL), "--log-level", "WARNING",
        ],
        "replica",
        wait_for="listening on",
    )  # fmt: skip
    return child, line.rsplit(" ", 1)[-1]


def _leads(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as ch:
            got = health_check(ch)(
                health_pb2.HealthCheckRequest(service="hwbp.v1.Arbiter"), timeout=1
            )
    except grpc.RpcError:
        return False
    return bool(got.status == health_pb2.HealthCheckResponse.SERVING)


def _leader(addresses: Sequence[str], timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for i, a in enumerate(addresses):
            if _leads(a):
                return i
        time.sleep(0.02)
    raise RuntimeError(f"no leader among {addresses} within {timeout}s")


def _reserve(host: str, key: str, task: int) -> arbiter_pb2.ReserveRequest:
    return arbiter_pb2.ReserveRequest(
        request_id=uuid.uuid4().hex,
        idempotency_key=key,
        target=types_pb2.Target(host=host, scope=types_pb2.SCOPE_TASK_CPU, cpu=0, task=task),
        spec=types_pb2.BreakpointSpec(
            addr=0x500000, len=8, type=types_pb2.BREAKPOINT_TYPE_WRITE, enabled=True
        ),
    )


def _first_success(addresses: Sequence[str], host: str, task: int, limit: float) -> float:
    """Try a keyed reserve on each replica in turn until one commits; its time."""
    key = uuid.uuid4().hex
    channels = [grpc.insecure_channel(a) for a in addresses]
    stubs = [arbiter_pb2_grpc.ArbiterStub(ch) for ch in channels]
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline:
            for stub in stubs:
                try:
                    res = stub.Reserve(_reserve(host, key, task), timeout=1)
                except grpc.RpcError:
                    continue
                done = time.monotonic()
                stub.Release(
                    arbiter_pb2.ReleaseRequest(reservation_id=res.reservation.id), timeout=5
                )
                return done
            time.sleep(0.01)
    finally:
        for ch in channels:
            ch.close()
    raise RuntimeError(f"no replica committed a reserve within {limit}s of the kill")


def failover(rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        etcd = Etcd(Path(tmp) / "etcd").start()
        replicas: list[procs.Child] = []
        fleet: procs.Child | None = None
        try:
            addresses = []
            for _ in range(3):
                child, address = _start_replica(etcd)
                replicas.append(child)
                addresses.append(address)
            _leader(addresses)
            fleet = procs.start_fleet(",".join(addresses), "p5", 1)
            times = []
            for n in range(rounds):
                lead = _leader(addresses)
                _first_success(addresses, "p5", 100 + n, 10)  # the group works before
                replicas[lead].stop(signal.SIGKILL)
                killed = time.monotonic()
                times.append(_first_success(addresses, "p5", 200 + n, 30) - killed)
                port = int(addresses[lead].rsplit(":", 1)[1])
                replicas[lead], _ = _start_replica(etcd, port)
        finally:
            procs.stop_all([*replicas, *([fleet] if fleet else [])])
            etcd.stop()
    return {
        "leader_ttl_s": TTL,
        "rounds": rounds,
        "seconds": [round(t, 3) for t in times],
        "median_s": round(statistics.median(times), 3),
        "max_s": round(max(times), 3),
    }


async def _round_trips(address: str, host: str, seconds: float, warmup: float) -> dict[int, Run]:
    out: dict[int, Run] = {}
    async with grpc.aio.insecure_channel(address) as ch:
        stub = arbiter_pb2_grpc.ArbiterStub(ch)

        async def op(w: int) -> None:
            res = await stub.Reserve(_reserve(host, "", 1000 + w), timeout=30)
            await stub.Release(
                arbiter_pb2.ReleaseRequest(reservation_id=res.reservation.id), timeout=30
            )

        for n in IN_FLIGHT:
            out[n] = await closed_loop(op, n, seconds, warmup)
    return out


def throughput(seconds: float, warmup: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        arb, address = procs.start_arbiter(db=str(Path(tmp) / "ledger.db"))
        fleet = procs.start_fleet(address, "p5s", 1)
        try:
            sqlite = asyncio.run(_round_trips(address, "p5s", seconds, warmup))
        finally:
            procs.stop_all([arb, fleet])
        etcd = Etcd(Path(tmp) / "etcd").start()
        replica, address = _start_replica(etcd)
        try:
            _leader([address])
            fleet = procs.start_fleet(address, "p5e", 1)
            try:
                on_etcd = asyncio.run(_round_trips(address, "p5e", seconds, warmup))
            finally:
                fleet.stop()
        finally:
            replica.stop()
            etcd.stop()
    points = {}
    for n in IN_FLIGHT:
        e, s = on_etcd[n], sqlite[n]
        points[str(n)] = {
            "in_flight": n,
            "etcd_ops_per_s": round(e.ops_per_s, 1),
            "etcd_p50_ms": round(e.median_ms, 3),
            "sqlite_ops_per_s": round(s.ops_per_s, 1),
            "sqlite_p50_ms": round(s.median_ms, 3),
            "ratio": round(e.ops_per_s / s.ops_per_s, 3) if s.ops_per_s else 0.0,
        }
    return {"seconds_per_point": seconds, "points": points}


def run(quick: bool) -> dict[str, Any]:
    rounds, seconds, warmup = (2, 1.0, 0.3) if quick else (5, 4.0, 0.5)
    return {"failover": failover(rounds), "throughput": throughput(seconds, warmup)}


def rows(p5: dict[str, Any]) -> list[tuple[str, str, str, str, str, str, str]]:
    """Rows for the benchmark table (bench/report.py)."""
    out = []
    f = p5.get("failover")
    if f:
        out.append((
            "P5",
            f"failover: kill -9 of the leader to the first committed reserve "
            f"(leader ttl {f['leader_ttl_s']:g} s, median of {f['rounds']})",
            f"{f['median_s']:.2f} s (max {f['max_s']:.2f})",
            f"{f['leader_ttl_s']:g} s (the lease ttl)",
            f"{f['median_s'] / f['leader_ttl_s']:.2f}x",
            f"<= ttl + 2 s = {f['leader_ttl_s'] + 2:g} s",
            "yes" if f["max_s"] <= f["leader_ttl_s"] + 2 else "no",
        ))  # fmt: skip
    for n, pt in p5.get("throughput", {}).get("points", {}).items():
        out.append((
            "P5",
            f"reserve+release, {n} in flight, leader on etcd vs the same on SQLite",
            f"{pt['etcd_ops_per_s']:.0f} ops/s",
            f"{pt['sqlite_ops_per_s']:.0f} ops/s (SQLite WAL)",
            f"{pt['ratio']:.2f}x",
            "(no target)",
            "-",
        ))  # fmt: skip
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hwbp.bench.ha", description=__doc__)
    p.add_argument("--quick", action="store_true", help="2 failovers, 1 s per point")
    args = p.parse_args(argv)
    result = run(args.quick)
    json.dump(result, sys.stdout, indent=2, sort_keys=True)
    print()
    for row in rows(result):
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
