"""The mixed workload: each client is a seeded random walk over the arbiter's operations.

Clients only release, modify or flush what they themselves created, so every refusal
other than a full CPU (or a rolled-back change) is a real finding, not a race between
clients of this run.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from hwbp.dr7 import encode
from hwbp.load.invariants import Checker, Granted
from hwbp.load.rpc import RPC_TIMEOUT, Stubs, failure
from hwbp.load.stats import Stats
from hwbp.model import BpType, Breakpoint
from hwbp.v1 import arbiter_pb2, ptrace_pb2, simulation_pb2, types_pb2

SCOPES = [
    (types_pb2.SCOPE_SYSTEM, 5),
    (types_pb2.SCOPE_CPU, 25),
    (types_pb2.SCOPE_TASK, 30),
    (types_pb2.SCOPE_TASK_CPU, 40),
]
ACTIONS = [
    ("reserve", 30),
    ("release", 20),
    ("modify", 10),
    ("ptrace", 8),
    ("context_switch", 12),
    ("memory_access", 20),
]
SHARED_TASKS = range(1001, 1009)  # reserve and switch targets: small, so clients collide
LENGTHS = (1, 2, 4, 8)
TYPES = (types_pb2.BREAKPOINT_TYPE_WRITE, types_pb2.BREAKPOINT_TYPE_READ_WRITE)

T = TypeVar("T")


class Budget:
    """Stops the run after ``ops`` actions or at ``deadline`` (monotonic), whichever first."""

    def __init__(self, ops: int | None, deadline: float) -> None:
        self.left = ops
        self.deadline = deadline

    def take(self) -> bool:
        if time.monotonic() >= self.deadline:
            return False
        if self.left is None:
            return True
        if self.left <= 0:
            return False
        self.left -= 1
        return True


@dataclass
class Client:
    index: int
    stubs: Stubs
    hosts: dict[str, int]  # host -> ncpus
    checker: Checker
    stats: Stats
    rng: random.Random
    owner: str
    mine: dict[str, Granted] = field(default_factory=dict)
    addrs: dict[str, int] = field(default_factory=dict)  # what each of ours watches
    calls: int = 0

    # --- plumbing ------------------------------------------------------------------

    def _rid(self) -> str:
        self.calls += 1
        return f"{self.owner}-{self.calls}"

    async def _call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T | None:
        """Time one RPC; a refusal is checked and recorded, and returns None."""
        t0 = time.perf_counter()
        try:
            out = await fn()
        except grpc.aio.AioRpcError as err:
            f = failure(err)
            self.stats.record(op, time.perf_counter() - t0, f.reason or f.code)
            self.checker.refused(op, f)
            return None
        self.stats.record(op, time.perf_counter() - t0, None)
        return out

    def _pick_host(self) -> tuple[str, int]:
        host = self.rng.choice(sorted(self.hosts))
        return host, self.hosts[host]

    def _addr(self) -> int:
        return 0x100000 + self.index * 0x10000 + 8 * self.rng.randrange(0x1000)

    # --- actions -----------------------------------------------------------------

    async def step(self) -> None:
        names, weights = zip(*ACTIONS, strict=True)
        action = self.rng.choices(names, weights)[0]
        if action in ("release", "modify") and not self.mine:
            action = "reserve"
        await getattr(self, action)()

    async def reserve(self) -> None:
        host, ncpus = self._pick_host()
        scopes, weights = zip(*SCOPES, strict=True)
        scope = self.rng.choices(scopes, weights)[0]
        cpu = (
            self.rng.randrange(ncpus)
            if scope in (types_pb2.SCOPE_CPU, types_pb2.SCOPE_TASK_CPU)
            else None
        )
        task = (
            self.rng.choice(SHARED_TASKS)
            if scope in (types_pb2.SCOPE_TASK, types_pb2.SCOPE_TASK_CPU)
            else None
        )
        req = arbiter_pb2.ReserveRequest(
            request_id=self._rid(),
            target=types_pb2.Target(host=host, scope=scope, cpu=cpu, task=task),
            spec=types_pb2.BreakpointSpec(
                addr=self._addr(),
                len=self.rng.choice(LENGTHS),
                type=self.rng.choice(TYPES),
                enabled=True,
            ),
            owner=self.owner,
        )
        resp = await self._call("reserve", lambda: self.stubs.arb.Reserve(req, timeout=RPC_TIMEOUT))
        if resp is not None:
            self.checker.granted(resp.reservation)
            self.checker.changed(req.request_id, host, resp.generation)
            self.mine[resp.reservation.id] = self.checker.live[resp.reservation.id]
            self.addrs[resp.reservation.id] = resp.reservation.spec.addr

    async def release(self, rid: str | None = None) -> bool:
        rid = rid or self.rng.choice(sorted(self.mine))
        g = self.checker.releasing(rid)
        req = arbiter_pb2.ReleaseRequest(request_id=self._rid(), reservation_id=rid)
        resp = await self._call("release", lambda: self.stubs.arb.Release(req, timeout=RPC_TIMEOUT))
        if resp is None:
            if g is not None:
                self.checker.kept(g)
            return False
        self.checker.changed(req.request_id, resp.reservation.target.host, resp.generation)
        self.mine.pop(rid, None)
        self.addrs.pop(rid, None)
        return True

    async def modify(self) -> None:
        rid = self.rng.choice(sorted(self.mine))
        req = arbiter_pb2.ModifyRequest(request_id=self._rid(), reservation_id=rid)
        what = self.rng.randrange(3)
        if what == 0:
            req.addr = self._addr()
        elif what == 1:
            req.len = self.rng.choice(LENGTHS)
        else:
            req.enabled = self.rng.random() < 0.5
        resp = await self._call("modify", lambda: self.stubs.arb.Modify(req, timeout=RPC_TIMEOUT))
        if resp is not None:
            self.addrs[rid] = resp.reservation.spec.addr
            self.checker.changed(req.request_id, resp.reservation.target.host, resp.generation)

    async def ptrace(self) -> None:
        """Poke some of DR0..3 and a DR7 enabling them on one of our tasks, then flush
        them (a detach would keep them, as the kernel does)."""
        host, _ = self._pick_host()
        task = 5000 + self.index * 10 + self.rng.randrange(4)
        used = sorted(self.rng.sample(range(4), self.rng.randint(1, 4)))
        slots: list[Breakpoint | None] = [None] * 4
        landed = False
        for i in used:
            addr = self._addr()
            slots[i] = Breakpoint(addr, self.rng.choice(LENGTHS), BpType.WRITE)
            landed |= await self._poke(host, task, i, addr)
        landed |= await self._poke(host, task, 7, encode(slots))
        if not landed:  # every poke was refused: the task has no ptrace state to flush
            return
        req = ptrace_pb2.FlushRequest(request_id=self._rid(), host=host, task=task)
        await self._call("flush", lambda: self.stubs.ptrace.Flush(req, timeout=RPC_TIMEOUT))

    async def _poke(self, host: str, task: int, reg: int, value: int) -> bool:
        """Whether the poke landed (a refusal is checked and recorded by ``_call``)."""
        req = ptrace_pb2.PokeUserRequest(
            request_id=self._rid(), host=host, task=task, reg=reg, value=value
        )
        done = await self._call(
            "poke", lambda: self.stubs.ptrace.PokeUser(req, timeout=RPC_TIMEOUT)
        )
        return done is not None

    async def context_switch(self) -> None:
        host, ncpus = self._pick_host()
        task = self.rng.choice([*SHARED_TASKS, None])
        req = simulation_pb2.ContextSwitchRequest(
            request_id=self._rid(), host=host, cpu=self.rng.randrange(ncpus), task=task
        )
        await self._call(
            "context_switch", lambda: self.stubs.sim.ContextSwitch(req, timeout=RPC_TIMEOUT)
        )

    async def memory_access(self) -> None:
        """Mostly touch something we watch, on a CPU where it applies, so hits happen."""
        host, ncpus = self._pick_host()
        cpu, addr, length = self.rng.randrange(ncpus), self._addr(), 8
        if self.mine and self.rng.random() < 0.7:
            g = self.mine[self.rng.choice(sorted(self.mine))]
            host, addr = g.host, self.addrs[g.id]
            cpu = g.cpu if g.cpu is not None else self.rng.randrange(self.hosts[host])
        req = simulation_pb2.MemoryAccessRequest(
            request_id=self._rid(),
            host=host,
            cpu=cpu,
            addr=addr,
            len=length,
            type=types_pb2.ACCESS_TYPE_WRITE,
        )
        resp = await self._call(
            "memory_access", lambda: self.stubs.sim.MemoryAccess(req, timeout=RPC_TIMEOUT)
        )
        if resp is not None:
            self.checker.hits(resp)

    async def cleanup(self, attempts: int = 5) -> None:
        """Release everything this client still holds (retrying rolled-back releases)."""
        for _ in range(attempts):
            for rid in sorted(self.mine):
                await self.release(rid)
            if not self.mine:
                return
            await asyncio.sleep(0.2)
