"""The shell around ``hwbp.leadership``: etcd calls, timers, and what a term changes.

The machine decides; this module carries its actions out on the arbiter's event loop,
with every etcd call run on the etcd thread (``EtcdLoop``) and awaited from here, and
turns their answers, failures and the clock into events. It never dies quietly: a bug
in carrying out one action is logged and counted, and the loop goes on.

A *term* is one stretch of leadership. Taking over fences the store to the leader
key's revision, loads the ledger from etcd and re-admits it through the core
(``Persistence.restore``): hosts with their generations, reservations, ptrace
attachments and sessions (each with a fresh lease grace); agents resync as they
connect. Stepping down closes the gate, answers every waiting caller UNAVAILABLE
(``LEADERSHIP_LOST``), closes every agent stream and forgets the in-memory ledger: the
next term, here or elsewhere, reloads it from etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from hwbp.errors import HwbpError, LeadershipLost
from hwbp.keys import KeyTable
from hwbp.leadership import (
    Action,
    Campaign,
    Event,
    Fenced,
    Follow,
    GrantLease,
    KeepAlive,
    KeptAlive,
    Leadership,
    LeaseGranted,
    LeaseLost,
    Lost,
    Resign,
    Restored,
    RestoreFailed,
    Serve,
    Start,
    StepDown,
    Stop,
    StoreFailed,
    TakeOver,
    Tick,
    Won,
)
from hwbp.server.event_log import EventLog
from hwbp.server.fleet import Fleet
from hwbp.server.gate import Gate
from hwbp.server.persist import Persistence
from hwbp.server.sessions import SessionTable
from hwbp.server.store.etcd import EtcdStore

log = logging.getLogger("hwbp.server")
COMPLAIN_EVERY = 10.0  # seconds between two log lines about etcd being unreachable
TXN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)


class HaMetrics:
    """The leader gauge, the failovers counter and store transaction latency."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.leader = Gauge("hwbp_leader", "1 while this replica leads, else 0", registry=registry)
        self.failovers = Counter(
            "hwbp_failovers",
            "Leadership changes of this replica: took over, or stepped down",
            ["kind"],
            registry=registry,
        )
        self.txn_seconds = Histogram(
            "hwbp_store_txn_seconds",
            "Time of one etcd transaction (a committed batch), by result",
            ["result"],
            buckets=TXN_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            "hwbp_leadership_errors",
            "Failures carrying out a leadership action (logged; the loop goes on)",
            registry=registry,
        )


class Leader:
    def __init__(
        self,
        machine: Leadership,
        store: EtcdStore,
        gate: Gate,
        persistence: Persistence,
        *,
        on_serving: Callable[[bool], Awaitable[None]],
        metrics: HaMetrics | None = None,
    ) -> None:
        self.machine = machine
        self.store = store
        self.gate = gate
        self.persistence = persistence
        self.fleet: Fleet = persistence.fleet
        self.sessions: SessionTable = persistence.sessions
        self.on_serving = on_serving
        self.metrics = metrics
        self.stopped = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        self._complained = -math.inf
        gate.valid = lambda: time.monotonic() < machine.valid_until
        store.on_lost = self._fenced_elsewhere
        if metrics is not None:
            store.on_txn = lambda seconds, result: metrics.txn_seconds.labels(result).observe(
                seconds
            )

    # --- the driver --------------------------------------------------------------

    async def run(self) -> None:
        """Feed ticks when the machine asks for them, until stopped."""
        self.feed(Start(time.monotonic()))
        while not self.stopped.is_set():
            deadline = self.machine.next_deadline()
            wait = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=min(wait, 1.0))
            self.feed(Tick(time.monotonic()))

    async def stop(self) -> None:
        self.feed(Stop(time.monotonic()))
        self.stopped.set()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)

    def feed(self, event: Event) -> None:
        try:
            actions = self.machine.handle(event)
        except Exception:
            log.exception("leadership: the machine failed on %r", event)
            self._count_error()
            return
        for action in actions:
            try:
                self._do(action)
            except Exception:
                log.exception("leadership: carrying out %r failed", action)
                self._count_error()
        self._wake.set()

    def _fenced_elsewhere(self, revision: int, why: str) -> None:
        """The store refused or could not confirm a write (on whichever thread wrote)."""
        self._loop.call_soon_threadsafe(self.feed, Fenced(revision, time.monotonic()))

    # --- actions -----------------------------------------------------------------

    def _do(self, action: Action) -> None:
        if isinstance(action, GrantLease):
            self._spawn(self._grant(action.ttl))
        elif isinstance(action, KeepAlive):
            self._spawn(self._keepalive(action.lease))
        elif isinstance(action, Campaign):
            self._spawn(self._campaign(action.lease))
        elif isinstance(action, TakeOver):
            self._spawn(self._take_over(action.revision))
        elif isinstance(action, Serve):
            self.gate.leading = True
            log.info("leading (leader key revision %d) as %s", action.revision, self.gate.advertise)
            if self.metrics is not None:
                self.metrics.leader.set(1)
                self.metrics.failovers.labels("takeover").inc()
            self._spawn(self.on_serving(True))
        elif isinstance(action, StepDown):
            self._step_down(action.reason)
        elif isinstance(action, Resign):
            self._spawn(self._resign(action.lease))
        elif isinstance(action, Follow):
            self.gate.leader = action.leader
            if action.leader and action.leader != self.gate.advertise:
                log.info("following the leader at %s", action.leader)

    def _spawn(self, coro: Awaitable[object]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception:
                log.exception("leadership: a background step failed")
                self._count_error()

        task = asyncio.ensure_future(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _grant(self, ttl: float) -> None:
        sent = time.monotonic()
        io = self.store.io
        try:
            lease = await io.wait(io.client.lease(math.ceil(ttl)))
            member = {"address": self.gate.advertise, "pid": os.getpid()}
            await io.wait(
                io.client.put(
                    self.store.key("members", self.gate.advertise),
                    repr(member).encode(),
                    lease=lease.id,
                )
            )
        except Exception as err:
            now = time.monotonic()
            if now - self._complained >= COMPLAIN_EVERY:  # it is retried every poll
                self._complained = now
                log.warning("leadership: no lease from etcd (retrying): %s", err)
            self.feed(LeaseLost(0, str(err), now))
            return
        self.feed(LeaseGranted(int(lease.id), sent, time.monotonic()))

    async def _keepalive(self, lease: int) -> None:
        sent = time.monotonic()
        io = self.store.io
        try:
            reply = await io.wait(io.client.refresh_lease(lease))
        except Exception as err:
            self.feed(StoreFailed("keepalive", lease, str(err), time.monotonic()))
            return
        if reply is None or reply.TTL <= 0:
            self.feed(LeaseLost(lease, "etcd says it expired", time.monotonic()))
        else:
            self.feed(KeptAlive(lease, sent, time.monotonic()))

    async def _campaign(self, lease: int) -> None:
        """Create the leader key if nobody holds it. A plain read first: while a leader
        lives (nearly always) a follower's poll costs etcd no raft entry."""
        io, key = self.store.io, self.store.leader_key
        t = io.client.transactions
        try:
            held = await io.wait(io.client.get(key))
            if held is not None:
                self.feed(Lost(lease, held.value.decode(errors="replace"), time.monotonic()))
                return
            won, got = await io.wait(
                io.client.transaction(
                    compare=[t.create(key) == 0],
                    success=[t.put(key, self.gate.advertise.encode(), lease=lease)],
                    failure=[t.get(key)],
                )
            )
        except Exception as err:
            now = time.monotonic()
            if "lease not found" in str(err):
                self.feed(LeaseLost(lease, str(err), now))
            else:
                self.feed(StoreFailed("campaign", lease, str(err), now))
            return
        now = time.monotonic()
        if won:
            self.feed(Won(lease, int(got[0].response_put.header.revision), now))
        else:
            leader = got[0][0][0].decode(errors="replace") if got and got[0] else ""
            self.feed(Lost(lease, leader, now))

    async def _take_over(self, revision: int) -> None:
        started = time.monotonic()
        self._forget(LeadershipLost("a new term started", revision=revision))
        # A barrier: the writer thread takes batches in order, so once this probe ran,
        # every batch of an earlier term has been tried (and refused: not fenced then).
        # Only then may the new fence let writes through.
        await self.persistence.writer.probe()
        self.store.fence(revision)
        created, self.fleet.on_host_created = self.fleet.on_host_created, None
        try:  # hosts restored from etcd are not written back, one txn each
            restored = self.persistence.restore(asyncio.get_running_loop().time())
        except HwbpError as err:
            log.error("taking over failed: %s", err)
            self.store.unfence(f"taking over failed: {err}")
            self._forget(LeadershipLost(str(err)))
            self.feed(RestoreFailed(revision, str(err), time.monotonic()))
            return
        finally:
            self.fleet.on_host_created = created
        log.info(
            "took over at revision %d in %.3f s: %d hosts, %d reservations, %d ptrace "
            "attachments, %d sessions, %d idempotency keys restored from etcd; next id r%d",
            revision,
            time.monotonic() - started,
            restored.hosts,
            restored.reservations,
            restored.attachments,
            restored.sessions,
            restored.keys,
            self.fleet.next_id,
        )
        self.feed(Restored(revision, time.monotonic()))

    def _step_down(self, reason: str) -> None:
        was = self.gate.leading
        self.gate.leading = False
        self.store.unfence(reason)
        log.warning("not leading any more: %s", reason)
        self._forget(
            LeadershipLost(
                f"this arbiter stopped leading ({reason}); the change was not acknowledged, "
                "retry on the leader"
            )
        )
        if self.metrics is not None:
            self.metrics.leader.set(0)
            if was:
                self.metrics.failovers.labels("step_down").inc()
        self._spawn(self.on_serving(False))

    async def _resign(self, lease: int) -> None:
        io = self.store.io
        try:
            await io.wait(io.client.revoke_lease(lease))
        except Exception as err:  # it expires on its own within the ttl
            log.info("leadership: revoking lease %x failed (%s); it expires by itself", lease, err)

    # --- helpers -----------------------------------------------------------------

    def _forget(self, err: HwbpError) -> None:
        """Drop the in-memory ledger: waiting callers get ``err``, agent streams close."""
        fleet = self.fleet
        fleet.bus.cut_watchers(err)
        for host in list(fleet.hosts.values()):
            host.abandon(err)
        fleet.hosts.clear()
        fleet.keys = KeyTable()
        fleet.next_id = 1  # the next term reads the counter from etcd
        fleet.changes = EventLog(fleet.changes.keep)  # ... and the change log
        self.sessions.sessions.clear()  # a session being ended fails on its abandoned hosts

    def _count_error(self) -> None:
        if self.metrics is not None:
            self.metrics.errors.inc()
