"""Faults survived with real processes: kill -9 of the arbiter and of agents, a slow agent,
SIGTERM, a corrupt ledger."""

from __future__ import annotations

import functools
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2

from hwbp.v1 import arbiter_pb2 as a
from hwbp.v1 import types_pb2 as t
from hwbp.wire.health import HealthCheck, health_check
from tests.integration import procs
from tests.integration.stubs import Api, error_info, wait_until

RESTARTS = 4
SERVING = health_pb2.HealthCheckResponse.SERVING
T = TypeVar("T")


def _restart(db: Path, port: int | None = None, *extra: str) -> tuple[procs.Proc, str]:
    listen = f"127.0.0.1:{port or 0}"
    proc, line = procs.start(
        ["hwbp.server", "--listen", listen, "--db", str(db), "--paranoid", *extra],
        "arbiter",
        wait_for="listening on",
    )
    return proc, line.rsplit(" ", 1)[-1]


def _progressed(clients: list[Client], ops: int) -> bool:
    return sum(c.ops for c in clients) >= ops


def _converged(api: Api, host: str, ncpus: int) -> bool:
    try:
        cpus = api.inventory(host)
    except grpc.RpcError as err:  # a channel may still be backing off from the outage
        assert err.code() is grpc.StatusCode.UNAVAILABLE, err
        return False
    return len(cpus) == ncpus and all(
        c.online and c.acked_generation == c.generation and not c.mismatch for c in cpus
    )


class Client(threading.Thread):
    """Reserves and releases until stopped, retrying through outages with one
    idempotency key per reserve, so every outcome ends up known."""

    def __init__(self, address: str, host: str, seed: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.address, self.host, self.stop = address, host, stop
        self.rng = random.Random(seed)
        self.held: set[str] = set()
        self.released: set[str] = set()
        self.ops = 0
        self.lock = threading.Lock()  # held for a whole operation and its bookkeeping

    def _call(self, fn: object, req: object) -> object:
        while True:
            try:
                return fn(req, timeout=5)  # type: ignore[operator]
            except grpc.RpcError as err:
                if err.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    raise
                time.sleep(0.1)

    def run(self) -> None:
        with grpc.insecure_channel(self.address) as ch:
            api = Api(ch)
            while not self.stop.is_set():
                with self.lock:
                    self._step(api)

    def _step(self, api: Api) -> None:
        self.ops += 1
        if self.held and self.rng.random() < 0.45:
            rid = self.rng.choice(sorted(self.held))
            try:
                self._call(api.arb.Release, a.ReleaseRequest(reservation_id=rid))
            except grpc.RpcError as err:
                # A retried release whose first attempt landed before the crash.
                assert error_info(err)[1] == "RESERVATION_NOT_FOUND", err
            self.held.discard(rid)
            self.released.add(rid)
            return
        scope = self.rng.choice([t.SCOPE_CPU, t.SCOPE_TASK, t.SCOPE_TASK_CPU])
        target = t.Target(host=self.host, scope=scope)
        if scope in (t.SCOPE_CPU, t.SCOPE_TASK_CPU):
            target.cpu = self.rng.randrange(2)
        if scope != t.SCOPE_CPU:
            target.task = self.rng.randrange(1, 50)
        req = a.ReserveRequest(
            target=target,
            idempotency_key=uuid.uuid4().hex,
            spec=t.BreakpointSpec(
                addr=0x1000 * self.rng.randrange(1, 64),
                len=8,
                type=t.BREAKPOINT_TYPE_WRITE,
                enabled=True,
            ),
        )
        try:
            resp = self._call(api.arb.Reserve, req)
        except grpc.RpcError as err:
            assert error_info(err)[1] == "NO_FREE_SLOT", err
            return
        self.held.add(resp.reservation.id)  # type: ignore[attr-defined]


def test_kill_9_of_the_arbiter_loses_nothing_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    arbiter, address = _restart(db)
    port = int(address.rsplit(":", 1)[1])
    fleet = procs.start_fleet(address, "hd", 2)
    stop = threading.Event()
    clients = [Client(address, "hd", seed, stop) for seed in range(3)]
    try:
        for c in clients:
            c.start()
        for _ in range(RESTARTS):
            done = sum(c.ops for c in clients)
            wait_until(
                functools.partial(_progressed, clients, done + 10),
                timeout=20,
                what="the clients to make progress before the kill",
            )
            arbiter.kill()
            arbiter, _ = _restart(db, port)
            with grpc.insecure_channel(address) as ch:
                api = Api(ch)
                wait_until(
                    functools.partial(_converged, api, "hd", 2),
                    timeout=5,
                    what="agents converged to the ledger within 5 s",
                )
                for c in clients:  # a consistent view: no operation half-recorded
                    c.lock.acquire()
                try:
                    ids = _retry(functools.partial(api.ids, "hd"))
                    for c in clients:
                        # Acknowledged before the kill: still there. Released: gone.
                        assert c.held <= ids, c.held - ids
                        assert not (c.released & ids)
                finally:
                    for c in clients:
                        c.lock.release()
                assert all(
                    cpu.used <= cpu.slots for cpu in _retry(functools.partial(api.inventory, "hd"))
                )
        stop.set()
        for c in clients:
            c.join(20)
        with grpc.insecure_channel(address) as ch:
            ids = Api(ch).ids("hd")
        for c in clients:
            assert c.held <= ids and not (c.released & ids)
        ops = sum(c.ops for c in clients)
        assert ops > 20
        held = sum(len(c.held) for c in clients)
        gone = sum(len(c.released) for c in clients)
        print(
            f"\n{RESTARTS} kill -9 restarts survived; {ops} operations, {held} held and "
            f"{gone} released reservations checked after each"
        )
    finally:
        stop.set()
        fleet.stop()
        arbiter.stop()


def _retry(fn: Callable[[], T]) -> T:
    """Reads right after a restart may meet a channel still backing off."""
    for _ in range(50):
        try:
            return fn()
        except grpc.RpcError as err:
            if err.code() is not grpc.StatusCode.UNAVAILABLE:
                raise
            time.sleep(0.1)
    return fn()


def test_kill_9_of_an_agent_mid_broadcast_applies_on_resync(tmp_path: Path) -> None:
    arbiter, address = _restart(tmp_path / "l.db", None, "--ack-timeout", "5")
    fast = procs.start_agent(address, "hk", 0, "--cpus", "2")
    slow = procs.start_agent(address, "hk", 1, "--cpus", "2", "--ack-delay", "2")
    try:
        with grpc.insecure_channel(address) as ch, ThreadPoolExecutor(1) as pool:
            api = Api(ch)
            pending = pool.submit(api.reserve, "hk", scope="system", addr=0x4000)
            # cpu 1 holds the reload, unacknowledged (the arbiter shows it pending)
            wait_until(lambda: api.inventory("hk")[1].pending, timeout=5, what="reload in flight")
            slow.kill()
            # The caller gets a clear answer: committed, since a disconnected agent is
            # not waited for; the CPU is shown offline and gets the change on resync.
            res = pending.result(timeout=10)
            assert res.id in api.ids("hk")
            cpu1 = api.inventory("hk")[1]
            assert not cpu1.online and cpu1.used == 1
            slow = procs.start_agent(address, "hk", 1, "--cpus", "2")
            wait_until(lambda: _converged(api, "hk", 2), timeout=5, what="resync")
            regs = api.inventory("hk")[1].reported
            assert 0x4000 in list(regs.dr) and res.id in list(regs.slot_reservation)
    finally:
        fast.stop()
        slow.stop()
        arbiter.stop()


def test_a_slow_agent_delays_only_its_own_host_and_gets_merged_reloads(
    tmp_path: Path,
) -> None:
    arbiter, address = _restart(tmp_path / "l.db", None, "--ack-timeout", "5")
    slow = procs.start_agent(address, "slow", 0, "--cpus", "1", "--ack-delay", "0.5")
    fast = procs.start_fleet(address, "fast", 1)
    try:
        with grpc.insecure_channel(address) as ch, ThreadPoolExecutor(8) as pool:
            api = Api(ch)
            burst = [
                pool.submit(api.reserve, "slow", scope="task+cpu", cpu=0, task=100 + i, addr=0x8000)
                for i in range(6)
            ]
            wait_until(lambda: api.inventory("slow")[0].pending, timeout=5, what="burst in flight")
            quick = api.reserve("fast", scope="cpu", cpu=0, addr=0x9000)
            # The other host answered while the slow host's burst is still waiting.
            assert quick.id and not all(f.done() for f in burst)
            gens = [f.result(timeout=20).generation for f in burst]
            # Six changes, fewer generations: the ones queued behind an unacknowledged
            # reload went out together as the next one.
            assert len(set(gens)) < 6, gens
            assert _converged(api, "slow", 1)
    finally:
        slow.stop()
        fast.stop()
        arbiter.stop()


def test_sigterm_drains_persists_and_exits_0(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    arbiter, address = _restart(db, None, "--ack-timeout", "5")
    agent = procs.start_agent(address, "ht", 0, "--cpus", "1", "--ack-delay", "1.5")
    try:
        with grpc.insecure_channel(address) as ch, ThreadPoolExecutor(1) as pool:
            api = Api(ch)
            health = health_check(ch)
            pending = pool.submit(api.reserve, "ht", scope="cpu", cpu=0, addr=0x6000)
            wait_until(lambda: api.inventory("ht")[0].pending, timeout=5, what="reserve in flight")
            arbiter.popen.send_signal(signal.SIGTERM)
            seen: list[int] = []

            def stopped_serving() -> bool:
                seen.append(_health(health))
                return seen[-1] != SERVING

            wait_until(stopped_serving, timeout=5, what="NOT_SERVING")
            assert seen[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as exc:
                api.reserve("ht", scope="cpu", cpu=0, addr=0x7000)
            assert exc.value.code() is grpc.StatusCode.UNAVAILABLE
            kept = pending.result(timeout=10)  # the change in flight finished
        assert arbiter.popen.wait(timeout=15) == 0
        arbiter.stop()
        arbiter, address = _restart(db)
        with grpc.insecure_channel(address) as ch:
            assert Api(ch).ids("ht") == {kept.id}
    finally:
        agent.stop()
        arbiter.stop()


def _health(check: HealthCheck) -> int:
    try:
        return int(check(health_pb2.HealthCheckRequest(), timeout=2).status)
    except grpc.RpcError:
        return -1


def test_a_corrupt_ledger_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    db.write_bytes(b"\x00garbage" * 512)
    done = subprocess.run(
        [sys.executable, "-m", "hwbp.server", "--listen", "127.0.0.1:0", "--db", str(db)],
        cwd=procs.ROOT,
        env=procs._env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 3
    assert "refusing to start" in done.stderr and str(db) in done.stderr
    assert "Traceback" not in done.stderr
