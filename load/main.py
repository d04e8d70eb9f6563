"""hwbp-load: drive an arbiter and a simulated fleet with a bounded, seeded workload.

It starts its own arbiter and fleet (``--hosts N --cpus K``) or uses a running one
(``--arbiter ADDR``, hosts discovered through Inventory), runs concurrent clients for
``--duration`` seconds or ``--ops`` actions, checks the invariants in load.invariants
from the outside, and exits 1 if any was violated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

import grpc

from hwbp.load import procs
from hwbp.load.contend import contend
from hwbp.load.invariants import Checker
from hwbp.load.rpc import RPC_TIMEOUT, Stubs, all_pages
from hwbp.load.stats import Stats, render
from hwbp.load.workload import Budget, Client
from hwbp.v1 import arbiter_pb2, simulation_pb2, types_pb2

SAFETY_LIMIT = 600.0  # seconds: even --ops runs stop by themselves


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="hwbp-load", description=__doc__)
    p.add_argument("--arbiter", help="HOST:PORT of a running arbiter whose fleet is connected")
    p.add_argument("--hosts", type=int, default=2, help="simulated hosts to start (default 2)")
    p.add_argument("--cpus", type=int, default=4, help="CPUs per simulated host (default 4)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--duration", type=float, help="seconds to run (default 10 without --ops)")
    p.add_argument(
        "--ops",
        type=int,
        help="actions to run in total (a ptrace poke-and-flush sequence counts as one)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--ack-timeout",
        type=float,
        default=5.0,
        help="ack timeout of the arbiter we start (a busy machine is slow)",
    )
    p.add_argument(
        "--contend",
        action="store_true",
        help="instead of the mix: --clients (at least 8) race for one CPU's registers",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    args = p.parse_args(argv)
    if args.arbiter is None and (args.hosts < 1 or args.cpus < 1):
        p.error("--hosts and --cpus must be at least 1")
    if args.clients < 1:
        p.error("--clients must be at least 1")
    if args.duration is None and args.ops is None:
        args.duration = 10.0
    return args


async def discover(stubs: Stubs, expect: int | None, timeout: float = 30.0) -> dict[str, int]:
    """Hosts and their CPU counts, once every CPU (or ``expect`` of them) is online."""
    deadline = time.monotonic() + timeout
    while True:
        inv = await all_pages(stubs.arb.Inventory, arbiter_pb2.InventoryRequest(), "cpus")
        hosts: dict[str, int] = {}
        for c in inv.cpus:
            hosts[c.host] = hosts.get(c.host, 0) + 1
        online = sum(1 for c in inv.cpus if c.online)
        if hosts and online == (expect or len(inv.cpus)):
            return hosts
        if time.monotonic() > deadline:
            raise RuntimeError(f"fleet not online: {online} of {len(inv.cpus)} cpus")
        await asyncio.sleep(0.1)


async def prove_watch(checker: Checker, hosts: dict[str, int], owner: str) -> None:
    """Make a hit until the watch stream shows it, so no hit can predate the subscription."""
    stubs = checker.stubs
    host = sorted(hosts)[0]
    inv = await all_pages(stubs.arb.Inventory, arbiter_pb2.InventoryRequest(host=host), "cpus")
    free = [c.cpu for c in inv.cpus if c.online and c.used < c.slots]
    if not free:
        await asyncio.sleep(1.0)  # every CPU is full: settle for a grace period
        return
    cpu, addr = free[0], 0x7F0000
    res = (
        await stubs.arb.Reserve(
            arbiter_pb2.ReserveRequest(
                request_id=f"{owner}-probe",
                target=types_pb2.Target(host=host, scope=types_pb2.SCOPE_CPU, cpu=cpu),
                spec=types_pb2.BreakpointSpec(
                    addr=addr, len=8, type=types_pb2.BREAKPOINT_TYPE_WRITE, enabled=True
                ),
                owner=f"{owner}-probe",
            ),
            timeout=RPC_TIMEOUT,
        )
    ).reservation
    try:
        for _ in range(100):
            resp = await stubs.sim.MemoryAccess(
                simulation_pb2.MemoryAccessRequest(
                    request_id=f"{owner}-probe",
                    host=host,
                    cpu=cpu,
                    addr=addr,
                    len=8,
                    type=types_pb2.ACCESS_TYPE_WRITE,
                ),
                timeout=RPC_TIMEOUT,
            )
            await asyncio.sleep(0.05)
            if any(checker.hits_seen[h.seq] for h in resp.hits):
                return
        raise RuntimeError("the Watch stream never showed a hit")
    finally:
        await stubs.arb.Release(
            arbiter_pb2.ReleaseRequest(request_id=f"{owner}-probe", reservation_id=res.id),
            timeout=RPC_TIMEOUT,
        )


async def progress(stats: Stats, checker: Checker, t0: float) -> None:
    """One line a second on stderr, so a human sees it is alive and how it goes."""
    last = 0
    while True:
        await asyncio.sleep(1.0)
        now = stats.total
        print(
            f"[hwbp-load] {time.monotonic() - t0:5.1f}s ops={now} ({now - last}/s) "
            f"live={len(checker.live)} refused={sum(stats.refusals().values())} "
            f"violations={checker.violations}",
            file=sys.stderr,
            flush=True,
        )
        last = now


async def mixed(
    args: argparse.Namespace, address: str, checker: Checker, hosts: dict[str, int], owner: str
) -> dict[str, Any]:
    stats = Stats()
    limit = args.duration if args.duration is not None else SAFETY_LIMIT
    budget = Budget(args.ops, time.monotonic() + limit)
    clients = [
        Client(
            i,
            Stubs(address),
            hosts,
            checker,
            stats,
            random.Random(args.seed * 7919 + i),
            f"{owner}-c{i}",
        )
        for i in range(args.clients)
    ]

    async def loop(c: Client) -> None:
        while budget.take():
            await c.step()

    t0 = time.monotonic()
    poller = asyncio.create_task(checker.poll_forever())
    ticker = asyncio.create_task(progress(stats, checker, t0))
    try:
        await asyncio.gather(*(loop(c) for c in clients))
        elapsed = time.monotonic() - t0
    finally:
        for t in (poller, ticker):
            t.cancel()
        await asyncio.gather(poller, ticker, return_exceptions=True)
    summary = stats.summary(elapsed)
    # Releasing what is left is checked like everything else but counted apart, so the
    # figures above describe the timed window only.
    leftovers = Stats()
    for c in clients:
        c.stats = leftovers
    await asyncio.gather(*(c.cleanup() for c in clients))
    summary["cleanup"] = leftovers.summary(1.0)["per_op"]
    await asyncio.gather(*(c.stubs.close() for c in clients))
    return summary


async def run(args: argparse.Namespace) -> dict[str, Any]:
    children: list[procs.Child] = []
    address = args.arbiter
    owner = f"load{os.getpid()}"
    try:
        if address is None:
            arb, address = await asyncio.to_thread(
                procs.start_arbiter, "--ack-timeout", str(args.ack_timeout)
            )
            children.append(arb)
            for h in range(args.hosts):
                children.append(
                    await asyncio.to_thread(procs.start_fleet, address, f"h{h}", args.cpus)
                )
        stubs = Stubs(address)
        checker = Checker(stubs, owner)
        hosts = await discover(stubs, args.hosts * args.cpus if not args.arbiter else None)
        watcher = asyncio.create_task(checker.watch())
        try:
            await checker.started()
            await prove_watch(checker, hosts, owner)
            out: dict[str, Any] = {}
            if args.contend:
                t0 = time.monotonic()
                poller = asyncio.create_task(checker.poll_forever())
                try:
                    report, _ = await contend(address, max(args.clients, 8), checker, owner)
                finally:
                    poller.cancel()
                    await asyncio.gather(poller, return_exceptions=True)
                out["contend"] = report
                out["elapsed_s"] = round(time.monotonic() - t0, 3)
            else:
                out.update(await mixed(args, address, checker, hosts, owner))
            await checker.finish()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await stubs.close()
        check = checker.summary()
        return {
            "violations": check.pop("violations"),
            "config": {
                "arbiter": address,
                "started_fleet": not args.arbiter,
                "hosts": hosts,
                "clients": args.clients,
                "duration": args.duration,
                "ops_limit": args.ops,
                "seed": args.seed,
                "contend": args.contend,
            },
            **out,
            **check,
        }
    finally:
        await asyncio.to_thread(procs.stop_all, children)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = asyncio.run(run(args))
    except (RuntimeError, grpc.aio.AioRpcError) as err:
        print(f"hwbp-load: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        if "per_op" in result:
            print(render(result))
        if "contend" in result:
            c = result["contend"]
            print(
                f"contention on {c['host']} cpu {c['cpu']}: {c['grants']} grants "
                f"(generations {c['grant_generations']}), {c['refusals']} refusals "
                f"{c['refusal_reasons']}"
            )
        print(f"invariant violations: {result['violations']}")
        for line in result["violation_details"]:
            print(f"  {line}")
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 1 if result["violations"] else 0
