"""Invariants checked from outside the arbiter, only through its public API.

* no CPU ever reports ``used > slots`` (polled Inventory, about every 0.5 s);
* a granted reservation is in List and in the Inventory holders of every CPU it applies
  to, from its grant until its release starts;
* every refusal has a reason legitimate for its operation, and NO_FREE_SLOT names the
  CPU, a full budget (used >= slots) and at least one holder;
* every hit is delivered once on the Watch stream, and every hit a MemoryAccess
  returned shows up there (matched by ``seq``);
* every successful change shows up in a RELOAD event (the committed generation);
* per-CPU acknowledged generations never go backwards; at the end every CPU is online,
  has acknowledged its latest generation, reports what the ledger expects, and nothing
  the run reserved is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass

import grpc

from hwbp.load.rpc import Failure, Stubs, all_pages
from hwbp.v1 import arbiter_pb2, simulation_pb2, types_pb2

# What each operation may legitimately be refused with under load; anything else is a
# violation. ACK_TIMEOUT and the NACK reasons are rolled-back changes, counted apart.
ROLLED_BACK = frozenset({"ACK_TIMEOUT", "AGENT_REFUSED", "KERNEL_REFUSED", "KERNEL_NO_FREE_SLOT"})
LEGITIMATE: dict[str, frozenset[str]] = {
    "reserve": frozenset({"NO_FREE_SLOT"}) | ROLLED_BACK,
    "release": ROLLED_BACK,
    "modify": ROLLED_BACK,
    "poke": frozenset({"NO_FREE_SLOT"}) | ROLLED_BACK,
    "flush": ROLLED_BACK,
    "context_switch": frozenset({"ACK_TIMEOUT"}),
    "memory_access": frozenset({"ACK_TIMEOUT"}),
}
KEEP_DETAILS = 50  # violations described in full; the rest are only counted


@dataclass(frozen=True)
class Granted:
    id: str
    host: str
    scope: int
    cpu: int | None


class Checker:
    def __init__(self, stubs: Stubs, owner_prefix: str) -> None:
        self.stubs = stubs
        self.owner_prefix = owner_prefix
        self.live: dict[str, Granted] = {}
        self.ever: set[str] = set()
        self.kinds: Counter[str] = Counter()
        self.details: list[str] = []
        self.polls = 0
        self.hits_seen: Counter[int] = Counter()
        self.hits_returned: dict[int, str] = {}
        self.committed: dict[str, int] = {}  # request id -> generation that committed it
        self.reported: dict[str, tuple[str, int]] = {}  # request id -> (host, response gen)
        self._acked: dict[tuple[str, int], int] = {}
        self._watching = asyncio.Event()

    # --- bookkeeping called by clients -------------------------------------------

    def violation(self, kind: str, detail: str) -> None:
        self.kinds[kind] += 1
        if len(self.details) < KEEP_DETAILS:
            self.details.append(f"{kind}: {detail}")

    @property
    def violations(self) -> int:
        return sum(self.kinds.values())

    def granted(self, res: types_pb2.Reservation) -> None:
        if res.id in self.ever:
            self.violation("duplicate_id", f"reservation id {res.id} granted twice")
        self.ever.add(res.id)
        cpu = res.target.cpu if res.target.HasField("cpu") else None
        self.live[res.id] = Granted(res.id, res.target.host, res.target.scope, cpu)

    def releasing(self, rid: str) -> Granted | None:
        """A release starts: from now on the reservation may legitimately vanish."""
        return self.live.pop(rid, None)

    def kept(self, g: Granted) -> None:
        """A release failed (rolled back): the reservation is still held."""
        self.live[g.id] = g

    def refused(self, op: str, f: Failure) -> None:
        if f.reason not in LEGITIMATE[op]:
            self.violation("bad_refusal", f"{op} refused with {f.code}/{f.reason!r}: {f.message}")
            return
        if f.reason == "NO_FREE_SLOT":
            m = f.metadata
            if not m.get("host") or "cpu" not in m:
                self.violation("bad_refusal", f"{op} NO_FREE_SLOT without host/cpu: {m}")
            elif int(m.get("used", "-1")) < int(m.get("slots", "99")):
                self.violation("bad_refusal", f"{op} NO_FREE_SLOT with room left: {m}")
            elif not f.holder_ids:
                self.violation("bad_refusal", f"{op} NO_FREE_SLOT naming no holder: {m}")

    def hits(self, response: simulation_pb2.MemoryAccessResponse) -> None:
        for hit in response.hits:
            if hit.seq == 0 or hit.seq in self.hits_returned:
                self.violation("hit_seq", f"MemoryAccess returned hit seq {hit.seq} twice/unset")
            self.hits_returned[hit.seq] = hit.reservation_id

    def changed(self, request_id: str, host: str, generation: int) -> None:
        """A change succeeded and its response named ``generation``."""
        self.reported[request_id] = (host, generation)

    # --- background watchers -----------------------------------------------------

    async def watch(self) -> None:
        """Hits counted by seq (a second delivery is a violation); commits by request id."""
        kinds = [types_pb2.EVENT_KIND_HIT, types_pb2.EVENT_KIND_RELOAD]
        call = self.stubs.arb.Watch(arbiter_pb2.WatchRequest(request_id="load-watch", kinds=kinds))
        self._watching.set()
        with contextlib.suppress(asyncio.CancelledError):
            async for ev in call:
                if ev.kind == types_pb2.EVENT_KIND_RELOAD:
                    for rid in ev.request_id.split(","):
                        self.committed[rid] = ev.generation
                    continue
                seq = ev.hit.seq
                self.hits_seen[seq] += 1
                if self.hits_seen[seq] > 1:
                    self.violation(
                        "hit_duplicate", f"hit seq {seq} delivered {self.hits_seen[seq]}x"
                    )

    async def started(self) -> None:
        await self._watching.wait()

    async def poll_forever(self, interval: float = 0.5) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(interval)

    async def poll_once(self) -> tuple[arbiter_pb2.InventoryResponse, arbiter_pb2.ListResponse]:
        before = set(self.live)
        inv = await all_pages(
            self.stubs.arb.Inventory,
            arbiter_pb2.InventoryRequest(request_id=f"load-inv-{self.polls}"),
            "cpus",
        )
        listed = await all_pages(
            self.stubs.arb.List,
            arbiter_pb2.ListRequest(request_id=f"load-list-{self.polls}"),
            "reservations",
        )
        stable = before & set(self.live)  # granted before the snapshot, not released since
        self.polls += 1
        holders: dict[tuple[str, int], set[str]] = {}
        ncpus: Counter[str] = Counter()
        for cpu in inv.cpus:
            key = (cpu.host, cpu.cpu)
            ncpus[cpu.host] += 1
            holders[key] = {h.reservation_id for h in cpu.holders}
            if cpu.used > cpu.slots:
                self.violation("over_budget", f"{cpu.host} cpu {cpu.cpu} uses {cpu.used}")
            if cpu.acked_generation < self._acked.get(key, 0):
                self.violation("generation_back", f"{cpu.host} cpu {cpu.cpu} acked went back")
            self._acked[key] = cpu.acked_generation
        ids = {r.id for r in listed.reservations}
        for rid in stable:
            g = self.live.get(rid)
            if g is None:
                continue
            if rid not in ids:
                self.violation("missing", f"granted {rid} is not in List")
                continue
            cpus = range(ncpus[g.host]) if g.cpu is None else [g.cpu]
            absent = [c for c in cpus if rid not in holders.get((g.host, c), set())]
            if absent:
                self.violation("missing", f"granted {rid} not a holder on {g.host} cpus {absent}")
        return inv, listed

    # --- the end -----------------------------------------------------------------

    async def finish(self, settle: float = 5.0) -> None:
        """Quiescent checks, retried for up to ``settle`` seconds before they count."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settle
        while set(self.hits_returned) - set(self.hits_seen) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for seq in sorted(set(self.hits_returned) - set(self.hits_seen))[:KEEP_DETAILS]:
            self.violation("hit_lost", f"hit seq {seq} returned by MemoryAccess, never watched")
        while set(self.reported) - set(self.committed) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for rid in sorted(set(self.reported) - set(self.committed))[:KEEP_DETAILS]:
            self.violation("uncommitted", f"request {rid} succeeded but no RELOAD committed it")
        while True:
            problems = await self._quiescent()
            if not problems or loop.time() >= deadline:
                break
            await asyncio.sleep(0.2)
        for kind, detail in problems:
            self.violation(kind, detail)

    async def _quiescent(self) -> list[tuple[str, str]]:
        try:
            inv, listed = await self.poll_once()
        except grpc.aio.AioRpcError as err:
            return [("final_poll", f"inventory/list failed: {err.code().name}")]
        out: list[tuple[str, str]] = []
        for cpu in inv.cpus:
            where = f"{cpu.host} cpu {cpu.cpu}"
            if not cpu.online:
                out.append(("final_state", f"{where} offline"))
            elif cpu.acked_generation != cpu.generation:
                out.append(
                    ("final_state", f"{where} acked {cpu.acked_generation}/{cpu.generation}")
                )
            elif cpu.mismatch:
                out.append(("final_state", f"{where} reports other registers than expected"))
        left = [r.id for r in listed.reservations if r.owner.startswith(self.owner_prefix)]
        if left:
            out.append(("leaked", f"{len(left)} reservations left behind: {left[:10]}"))
        return out

    def generation_lag(self) -> int:
        """Responses naming a later generation than the one that committed the change."""
        return sum(
            1
            for rid, (_, gen) in self.reported.items()
            if rid in self.committed and gen != self.committed[rid]
        )

    def summary(self) -> dict[str, object]:
        lag = self.generation_lag()
        if lag:  # a response must name the generation that committed its change
            self.kinds["response_generation_not_commit_generation"] = lag
        return {
            "changes_committed": sum(1 for rid in self.reported if rid in self.committed),
            "violations": self.violations,
            "violation_kinds": dict(sorted(self.kinds.items())),
            "violation_details": self.details,
            "inventory_polls": self.polls,
            "granted": len(self.ever),
            "hits_returned": len(self.hits_returned),
            "hits_watched": sum(self.hits_seen.values()),
        }
