"""The contention case: many clients race, at the same instant, for one CPU's registers.

"Arrival order" is the arbiter's own: the generation that committed each grant, read
from the RELOAD event naming its request id (grants merged into one broadcast share a
generation, and then the reservation id, which the arbiter hands out in admission order,
breaks the tie). The response's own generation field is not used for this: it is the
host's generation when the reply is built, which may already be the next one.

The checks: exactly ``slots`` grants; their commit generations are the first ones after
the race started, with no gap; ids rise with generations; and every other client was
refused NO_FREE_SLOT naming exactly the granted reservations as holders, which proves
the grants were admitted first.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc

from hwbp.load.invariants import Checker
from hwbp.load.rpc import RPC_TIMEOUT, Failure, Stubs, all_pages, failure
from hwbp.v1 import arbiter_pb2, types_pb2


@dataclass(frozen=True)
class Outcome:
    client: int
    sent: int  # position in which the request left this process
    latency: float
    generation: int = 0
    res_id: str = ""
    refusal: Failure | None = None
    request_id: str = ""


def _id_number(res_id: str) -> int:
    digits = "".join(ch for ch in res_id if ch.isdigit())
    return int(digits) if digits else -1


async def free_cpu(stubs: Stubs) -> tuple[str, int, int, int]:
    """(host, cpu, slots, host generation) of the first online CPU nobody holds."""
    inv = await all_pages(stubs.arb.Inventory, arbiter_pb2.InventoryRequest(), "cpus")
    gens: dict[str, int] = {}
    for c in inv.cpus:
        gens[c.host] = max(gens.get(c.host, 0), c.generation)
    for c in inv.cpus:
        if c.online and c.used == 0 and not c.holders:
            return c.host, c.cpu, c.slots, gens[c.host]
    raise RuntimeError("no online CPU without holders to contend for")


async def contend(
    address: str, clients: int, checker: Checker, owner: str
) -> tuple[dict[str, object], list[Outcome]]:
    """Race ``clients`` cpu-scope reserves for one free CPU; check and release the grants."""
    host, cpu, slots, base = await free_cpu(checker.stubs)
    pool = [Stubs(address) for _ in range(clients)]
    try:
        await asyncio.gather(*(s.channel.channel_ready() for s in pool))
        go = asyncio.Event()
        order: list[int] = []

        async def one(i: int) -> Outcome:
            req = arbiter_pb2.ReserveRequest(
                request_id=f"{owner}-race-{i}",
                target=types_pb2.Target(host=host, scope=types_pb2.SCOPE_CPU, cpu=cpu),
                spec=types_pb2.BreakpointSpec(
                    addr=0x700000 + 8 * i, len=8, type=types_pb2.BREAKPOINT_TYPE_WRITE, enabled=True
                ),
                owner=f"{owner}-race-{i}",
            )
            await go.wait()
            sent = len(order)
            rid = req.request_id
            order.append(i)
            t0 = time.perf_counter()
            try:
                resp = await pool[i].arb.Reserve(req, timeout=RPC_TIMEOUT)
            except grpc.aio.AioRpcError as err:
                return Outcome(i, sent, time.perf_counter() - t0, refusal=failure(err))
            checker.granted(resp.reservation)
            checker.changed(rid, host, resp.generation)
            return Outcome(
                i, sent, time.perf_counter() - t0, resp.generation, resp.reservation.id, None, rid
            )

        tasks = [asyncio.create_task(one(i)) for i in range(clients)]
        await asyncio.sleep(0.05)  # every task is parked on the event
        go.set()
        outcomes = list(await asyncio.gather(*tasks))
    finally:
        await asyncio.gather(*(s.close() for s in pool))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while loop.time() < deadline and any(
        o.request_id not in checker.committed for o in outcomes if o.res_id
    ):
        await asyncio.sleep(0.05)
    report = judge(outcomes, checker, host=host, cpu=cpu, slots=slots, base=base)
    for o in outcomes:
        if o.res_id:
            checker.releasing(o.res_id)
            await checker.stubs.arb.Release(
                arbiter_pb2.ReleaseRequest(request_id=f"{owner}-unrace", reservation_id=o.res_id),
                timeout=RPC_TIMEOUT,
            )
    return report, outcomes


def judge(
    outcomes: list[Outcome], checker: Checker, *, host: str, cpu: int, slots: int, base: int
) -> dict[str, object]:
    def commit(o: Outcome) -> int:
        return checker.committed.get(o.request_id, 0)

    grants = sorted(
        (o for o in outcomes if o.res_id), key=lambda o: (commit(o), _id_number(o.res_id))
    )
    refused = [o for o in outcomes if o.refusal is not None]
    granted_ids = {o.res_id for o in grants}
    if len(grants) != slots:
        checker.violation("contend", f"{len(grants)} grants for {slots} registers")
    gens = sorted({commit(o) for o in grants})
    if gens and (gens[0] != base + 1 or gens != list(range(gens[0], gens[0] + len(gens)))):
        checker.violation("contend", f"commit generations {gens} are not the first after {base}")
    ids = [_id_number(o.res_id) for o in grants]
    if ids != sorted(ids):
        checker.violation("contend", f"ids {ids} do not rise with generation")
    for o in refused:
        assert o.refusal is not None
        f = o.refusal
        if f.reason != "NO_FREE_SLOT":
            checker.violation("contend", f"client {o.client} refused {f.code}/{f.reason}")
        elif f.metadata.get("host") != host or f.metadata.get("cpu") != str(cpu):
            checker.violation("contend", f"refusal names {f.metadata} not {host} cpu {cpu}")
        elif set(f.holder_ids) != granted_ids:
            checker.violation("contend", f"refusal names {f.holder_ids}, granted {granted_ids}")
    admitted = [o.client for o in grants]
    by_send = [o.client for o in sorted(grants, key=lambda o: o.sent)]
    return {
        "host": host,
        "cpu": cpu,
        "clients": len(outcomes),
        "grants": len(grants),
        "refusals": len(refused),
        "refusal_reasons": sorted({o.refusal.reason for o in refused if o.refusal}),
        "grant_generations": [commit(o) for o in grants],
        "grant_response_generations": [o.generation for o in grants],
        "grant_ids": [o.res_id for o in grants],
        "admitted_clients": admitted,
        "admitted_send_positions": [o.sent for o in grants],
        "admission_matches_send_order": admitted == by_send
        and sorted(o.sent for o in grants) == list(range(len(grants))),
    }
