"""Chaos, bounded: kill -9 the arbiter and agents under load, check everything from outside.

One arbiter on a ledger file, a healthy host ``ca`` (one fleet process, never killed)
and a host ``cb`` whose two CPU agents are separate processes, killed -9 and restarted
in turn. Clients reserve (each with its own idempotency key) and release (naming the
owner they expect), retrying through every outage. Meanwhile a lease prober opens
1-second sessions on ``ca`` and measures, from outside, when their reservations go.

Checked from outside only (List, Inventory, the answers clients got):
- ids never repeat: no id is ever granted for two different keys (before each arbiter
  kill, the newest id is released: the one a restart would be tempted to reissue);
- no reserve is made twice: every reservation of ours in List is one a client was told of;
- nothing acknowledged is lost: after each restart every held id is listed, every
  released one is gone;
- no CPU is ever over budget;
- leases on the healthy host expire within TTL + 1 s while agents of ``cb`` die
  (samples that span an arbiter restart are left out: a restart grants a fresh TTL);
- and ``hwbp-load`` (its own invariants, from outside) then runs clean on what is left.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from hwbp.v1 import arbiter_pb2 as a
from hwbp.v1 import types_pb2 as t
from tests.integration import ledgers, procs
from tests.integration.stubs import Api, error_info, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]
ARBITER_KILLS = 3
AGENT_KILL_EVERY = 2.5  # seconds
TTL = 1.0
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# What a change may be refused with here: a full CPU, or a rollback of a change that met a
# dying agent. Anything else (LEDGER_WRITE_FAILED, NOT_OWNER, ...) is a finding.
REFUSALS = {"NO_FREE_SLOT", "ACK_TIMEOUT", "AGENT_REFUSED"}


@dataclass
class Book:
    """What every client was told, shared: the source of truth the arbiter must match."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    key_of: dict[str, str] = field(default_factory=dict)  # granted id -> its reserve's key
    problems: list[str] = field(default_factory=list)
    restarts: int = 0  # bumped before and after each arbiter kill

    def granted(self, rid: str, key: str) -> None:
        with self.lock:
            if self.key_of.setdefault(rid, key) != key:
                self.problems.append(f"id {rid} granted for two different reserves")

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)


def _until_answered(fn: Callable[[], Any], stop: threading.Event, within: float = 30.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        try:
            return fn()
        except grpc.RpcError as err:
            if err.code() not in RETRYABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class Worker(threading.Thread):
    def __init__(self, address: str, index: int, book: Book, stop: threading.Event) -> None:
        super().__init__(daemon=True, name=f"chaos-{index}")
        self.address, self.book, self.stop = address, book, stop
        self.owner = f"chaos{index}"
        self.rng = random.Random(index)
        self.held: set[str] = set()
        self.released: set[str] = set()
        self.ops = 0
        self.lock = threading.Lock()  # held for a whole operation and its bookkeeping

    def run(self) -> None:
        with grpc.insecure_channel(self.address) as ch:
            api = Api(ch)
            while not self.stop.is_set():
                with self.lock:
                    try:
                        self._step(api)
                    except grpc.RpcError as err:
                        self.book.problem(f"{self.owner}: {err.code()} {error_info(err)[1:]}")
                        return

    def _step(self, api: Api) -> None:
        self.ops += 1
        if self.held and self.rng.random() < 0.45:
            rid = self.rng.choice(sorted(self.held))
            release = a.ReleaseRequest(
                request_id=uuid.uuid4().hex, reservation_id=rid, expect_owner=self.owner
            )
            try:
                _until_answered(lambda: api.arb.Release(release, timeout=5), self.stop)
            except grpc.RpcError as err:
                reason = error_info(err)[1]
                if reason in REFUSALS:
                    return  # rolled back: still held
                if reason != "RESERVATION_NOT_FOUND":  # a retry whose first attempt landed
                    raise
            self.held.discard(rid)
            self.released.add(rid)
            return
        host = self.rng.choice(["ca", "cb"])
        if host == "ca":  # cpu 1 only: cpu 0 of the healthy host is the lease prober's
            scope = self.rng.choice([t.SCOPE_CPU, t.SCOPE_TASK_CPU])
            target = t.Target(host=host, scope=scope, cpu=1)
        else:
            scope = self.rng.choice([t.SCOPE_CPU, t.SCOPE_TASK, t.SCOPE_TASK_CPU])
            target = t.Target(host=host, scope=scope)
            if scope != t.SCOPE_TASK:
                target.cpu = self.rng.randrange(2)
        if scope != t.SCOPE_CPU:
            target.task = self.rng.randrange(1, 40)
        key = uuid.uuid4().hex
        req = a.ReserveRequest(
            request_id=uuid.uuid4().hex,
            target=target,
            idempotency_key=key,
            owner=self.owner,
            spec=t.BreakpointSpec(
                addr=0x1000 * self.rng.randrange(1, 64),
                len=8,
                type=t.BREAKPOINT_TYPE_WRITE,
                enabled=True,
            ),
        )
        try:
            resp = _until_answered(lambda: api.arb.Reserve(req, timeout=5), self.stop)
        except grpc.RpcError as err:
            if error_info(err)[1] in REFUSALS:
                return
            raise
        self.book.granted(resp.reservation.id, key)
        self.held.add(resp.reservation.id)


class LeaseProber(threading.Thread):
    """Sessions with a 1 s lease on the healthy host: when do their reservations go?"""

    def __init__(self, address: str, book: Book, stop: threading.Event) -> None:
        super().__init__(daemon=True, name="lease-prober")
        self.address, self.book, self.stop = address, book, stop
        self.samples: list[float] = []
        self.discarded = 0

    def run(self) -> None:
        with grpc.insecure_channel(self.address) as ch:
            api = Api(ch)
            while not self.stop.is_set():
                try:
                    self._sample(ch, api)
                except grpc.RpcError as err:
                    if err.code() not in RETRYABLE:  # cpu 0 of ca is ours alone
                        self.book.problem(f"lease prober: {err.code()} {error_info(err)[1:]}")
                        return
                    time.sleep(0.1)

    def _sample(self, ch: grpc.Channel, api: Api) -> None:
        era = self.book.restarts
        session = ledgers.open_session(ch, ttl=TTL, owner="prober")
        opened = time.monotonic()
        req = a.ReserveRequest(
            request_id=uuid.uuid4().hex,
            target=t.Target(host="ca", scope=t.SCOPE_CPU, cpu=0),
            spec=t.BreakpointSpec(addr=0x9000, len=8, type=t.BREAKPOINT_TYPE_WRITE, enabled=True),
            session_id=session,
        )
        req.idempotency_key = uuid.uuid4().hex
        rid = api.arb.Reserve(req, timeout=5).reservation.id
        self.book.granted(rid, req.idempotency_key)
        while rid in api.ids("ca"):
            if time.monotonic() - opened > 15:
                self.book.problem(f"lease of {session} ({rid}) never expired")
                return
            time.sleep(0.05)
        gone = time.monotonic() - opened
        if self.book.restarts == era:
            self.samples.append(gone)
        else:
            self.discarded += 1


def _check_ledger(address: str, workers: list[Worker], book: Book) -> None:
    """Every acknowledged change is there, nothing released is, no CPU over budget."""
    for w in workers:  # a consistent view: no operation half-recorded
        w.lock.acquire()
    try:
        with grpc.insecure_channel(address) as ch:
            api = Api(ch)
            everything = _until_answered(
                lambda: [
                    *api.arb.List(a.ListRequest(host="ca"), timeout=10).reservations,
                    *api.arb.List(a.ListRequest(host="cb"), timeout=10).reservations,
                ],
                threading.Event(),
            )
            cpus = _until_answered(
                lambda: api.inventory("ca") + api.inventory("cb"), threading.Event()
            )
        listed = {r.id for r in everything}
        ours = {r.id for r in everything if r.owner.startswith("chaos")}
        held = set().union(*(w.held for w in workers))
        if ours - held:  # a retried reserve that allocated a second time
            book.problem(f"reservations nobody was told of: {sorted(ours - held)[:10]}")
        for w in workers:
            if not w.held <= listed:
                book.problem(f"{w.owner}: acknowledged {sorted(w.held - listed)} are gone")
            if w.released & listed:
                book.problem(f"{w.owner}: released {sorted(w.released & listed)} are back")
        for c in cpus:
            if c.used > c.slots:
                book.problem(f"{c.host} cpu {c.cpu} uses {c.used} of {c.slots}")
    finally:
        for w in workers:
            w.lock.release()


def _canary_then_kill(arbiter: procs.Proc, address: str, workers: list[Worker], book: Book) -> None:
    """The newest id, released just before the crash: the one a restart must not reissue."""
    for w in workers:
        w.lock.acquire()
    try:
        with grpc.insecure_channel(address) as ch:
            api = Api(ch)
            key = uuid.uuid4().hex
            canary = api.reserve_response("ca", scope="cpu", cpu=0, addr=0xA000, key=key)
            book.granted(canary.reservation.id, key)
            api.release(canary.reservation.id)
        book.restarts += 1
        arbiter.kill()
    finally:
        for w in workers:
            w.lock.release()


def _all_online(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as ch:
            cpus = Api(ch).inventory("ca") + Api(ch).inventory("cb")
    except grpc.RpcError:
        return False
    return len(cpus) == 4 and all(c.online and c.acked_generation == c.generation for c in cpus)


def _load(address: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "hwbp.load", "--arbiter", address),
            *("--clients", "3", "--duration", "6", "--seed", "7", "--json"),
        ],
        cwd=procs.ROOT,
        env=procs._env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kill_9_chaos_under_load_breaks_no_invariant(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    arbiter, address = ledgers.arbiter(db, 0, "--ack-timeout", "1", "--paranoid")
    port = ledgers.port_of(address)
    healthy = procs.start_fleet(address, "ca", 2)
    agents = [procs.start_agent(address, "cb", c, "--cpus", "2") for c in range(2)]
    book, stop = Book(), threading.Event()
    workers = [Worker(address, i, book, stop) for i in range(3)]
    prober = LeaseProber(address, book, stop)
    started = time.monotonic()
    try:
        for th in [*workers, prober]:
            th.start()
        # Phase 1: the arbiter dies (kill -9) every few seconds; cb's agents die in turn.
        victim = 0
        for _ in range(ARBITER_KILLS):
            for _ in range(2):
                time.sleep(AGENT_KILL_EVERY)
                agents[victim].kill()
                agents[victim] = procs.start_agent(address, "cb", victim, "--cpus", "2")
                victim = 1 - victim
            _canary_then_kill(arbiter, address, workers, book)
            arbiter, _ = ledgers.arbiter(db, port, "--ack-timeout", "1", "--paranoid")
            wait_until(lambda: _all_online(address), timeout=15, what="fleet back online")
            book.restarts += 1
            _check_ledger(address, workers, book)
        stop.set()
        for th in [*workers, prober]:
            th.join(40)
        _check_ledger(address, workers, book)
        # Phase 2: hwbp-load's own invariants on what the chaos left (alone: its final
        # check wants every CPU acknowledged and quiet, which other clients would spoil).
        load = _load(address)
        out, err = load.communicate(timeout=60)
        report = json.loads(out) if out.strip() else {}
        assert report.get("violations") == 0, (report.get("violation_details"), err[-2000:])
        _check_ledger(address, workers, book)  # the load touched none of ours
    finally:
        stop.set()
        for p in [*agents, healthy, arbiter]:
            p.stop()
    elapsed = time.monotonic() - started
    assert not book.problems, book.problems[:10]
    assert prober.samples, f"no lease sample outside a restart ({prober.discarded} discarded)"
    assert max(prober.samples) <= TTL + 1.0, sorted(prober.samples)[-5:]
    ops = sum(w.ops for w in workers)
    assert ops > 50 and len(book.key_of) > 10
    print(
        f"\n{ARBITER_KILLS} arbiter and {2 * ARBITER_KILLS} agent kills (-9) in {elapsed:.0f}s: "
        f"{ops} client operations, {len(book.key_of)} ids granted, none repeated; "
        f"{len(prober.samples)} leases expired within {max(prober.samples):.2f}s "
        f"(TTL {TTL:g}s); hwbp-load: {report.get('ops')} ops, 0 violations"
    )
