"""A replicated arbiter on a real etcd: three arbiter processes, agents, clients, faults.

Every process runs on loopback ports picked at run time and is stopped by pid; leases
are 2 s (``ha.TTL``) to keep failovers short.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from hwbp.client.errors import RemoteError
from hwbp.client.retry import NO_RETRY
from hwbp.client.sdk import Client
from hwbp.errors import NoFreeSlot
from hwbp.v1 import arbiter_pb2 as a
from tests.integration import procs
from tests.integration.ha import TTL, Group, role
from tests.integration.stubs import Api, error_info, wait_until
from tests.surfaces import SURFACES, make_client

pytestmark = pytest.mark.slow


@pytest.fixture
def group(tmp_path: Path) -> Iterator[Group]:
    """A group of its own, for a test that kills, pauses or stops something."""
    g = Group(tmp_path)
    try:
        g.start()
        yield g
    finally:
        g.stop()


@pytest.fixture(scope="module")
def steady(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Group]:
    """One group shared by the tests that only read and write (no failover): each uses
    its own host."""
    g = Group(tmp_path_factory.mktemp("steady"))
    try:
        g.start("--metrics-listen", "127.0.0.1:0")
        yield g
    finally:
        g.stop()


def _converged(client: Client, host: str, ncpus: int) -> bool:
    try:
        cpus = client.inventory(host)
    except RemoteError:
        return False
    return len(cpus) == ncpus and all(
        c.online and c.acked_generation == c.generation and not c.mismatch for c in cpus
    )


def test_followers_refuse_with_the_leaders_address_and_health_says_who_leads(
    steady: Group,
) -> None:
    group = steady
    lead = group.leader()
    follower = (lead + 1) % 3
    assert group.roles().count("follower") == 2
    with grpc.insecure_channel(group.addresses[follower]) as ch:
        with pytest.raises(grpc.RpcError) as exc:
            Api(ch).reserve("h", scope="cpu", cpu=0, addr=0x1000)
        code, reason, meta, message = error_info(exc.value)
        assert code is grpc.StatusCode.UNAVAILABLE and reason == "NOT_LEADER"
        assert meta["leader"] == group.addresses[lead] and "follower" in message
    # The CLI and the SDK, given every replica with a follower first, reach the leader.
    order = [group.addresses[follower], group.addresses[lead]]
    done = procs.cli(",".join(order), "cluster")
    assert done.code == 0, done.err
    doc = done.json()
    assert doc["leader"] == group.addresses[lead]
    assert {m["address"]: m["role"] for m in doc["members"]} == {
        group.addresses[follower]: "follower",
        group.addresses[lead]: "leader",
    }
    agents = procs.start_fleet(group.endpoints, "hl", 2)
    try:
        done = procs.cli(",".join(order), "reserve", "--host", "hl", "--cpu", "0",
                         "--addr", "0x3000", "--len", "8", "--type", "w")  # fmt: skip
        assert done.code == 0, done.err
        done = procs.cli(group.endpoints, "ls", "--host", "hl")
        assert done.code == 0 and len(done.json()) == 1
    finally:
        agents.stop()


@pytest.mark.parametrize("surface", SURFACES)
async def test_both_sdk_surfaces_follow_the_leader(steady: Group, surface: str) -> None:
    group = steady
    lead = group.leader()
    order = [group.addresses[(lead + 1) % 3], group.addresses[lead]]
    host = f"hl-{surface}"
    agents = procs.start_fleet(group.endpoints, host, 2)
    try:
        async with make_client(surface, order) as client:
            r = await client.reserve(host, cpu=1, addr=0x2000, len=8, type="w")
            assert client.endpoint == group.addresses[lead]
            assert r.id in {x.id for x in await client.list(host)}
        # Modify is never retried, but a NOT_LEADER refusal is repeated on the leader.
        async with make_client(surface, ",".join(order)) as other:
            changed = await other.modify(r.id, enabled=False)
            assert not changed.reservation.enabled
    finally:
        agents.stop()


class Worker(threading.Thread):
    """Reserves and releases through the SDK, which follows the leader and retries keyed
    reserves; every outcome it was told is recorded."""

    def __init__(self, endpoints: str, host: str, seed: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.endpoints, self.host, self.stop_ = endpoints, host, stop
        self.rng = random.Random(seed)
        self.held: set[str] = set()
        self.released: set[str] = set()
        self.ops = self.refused = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def run(self) -> None:
        with Client(self.endpoints) as client:
            while not self.stop_.is_set():
                with self.lock:
                    try:
                        self._step(client)
                    except RemoteError as err:  # a failover longer than the retries
                        self.errors.append(f"{err.remote_reason}: {err}")
                        time.sleep(0.2)

    def _step(self, client: Client) -> None:
        self.ops += 1
        if self.held and self.rng.random() < 0.45:
            rid = self.rng.choice(sorted(self.held))
            client.release(rid)  # None: a retry found our first attempt had done it
            self.held.discard(rid)
            self.released.add(rid)
            return
        cpu = self.rng.randrange(2)
        task = self.rng.randrange(1, 40) if self.rng.random() < 0.5 else None
        try:
            h = client.reserve(
                self.host,
                cpu=cpu,
                task=task,
                addr=0x1000 * self.rng.randrange(1, 64),
                len=8,
                type="w",
                idempotency_key=uuid.uuid4().hex,
            )
        except NoFreeSlot:
            self.refused += 1
            return
        self.held.add(h.id)


def test_kill_9_of_the_leader_under_load_loses_nothing_acknowledged(group: Group) -> None:
    first = group.leader()
    agents = procs.start_fleet(group.endpoints, "hk", 2)
    stop = threading.Event()
    workers = [Worker(group.endpoints, "hk", seed, stop) for seed in range(3)]
    try:
        for w in workers:
            w.start()
        wait_until(lambda: sum(w.ops for w in workers) > 60, timeout=20, what="load")
        killed = group.arbiters[first]
        assert killed is not None
        killed.kill()
        t0 = time.monotonic()
        second = group.leader(timeout=TTL + 10, exclude=first)
        took = time.monotonic() - t0
        assert took <= TTL + 2, f"a follower led only {took:.2f}s after the kill"
        before = sum(w.ops for w in workers)
        wait_until(lambda: sum(w.ops for w in workers) > before + 60, timeout=20, what="load")
        with Client(group.endpoints) as client:
            wait_until(lambda: _converged(client, "hk", 2), timeout=10, what="agents resynced")
            for w in workers:  # a consistent view: no operation half-recorded
                w.lock.acquire()
            try:
                ids = {r.id for r in client.list("hk")}
                for w in workers:
                    assert w.held <= ids, f"acknowledged and lost: {w.held - ids}"
                    assert not (w.released & ids), f"released and back: {w.released & ids}"
                cpus = client.inventory("hk")
                assert all(c.used <= c.slots for c in cpus)
                # Registers match the ledger: every reservation a CPU holds is in it.
                for c in cpus:
                    assert not c.mismatch and set(c.reported.slots) - {None} <= ids
            finally:
                for w in workers:
                    w.lock.release()
        stop.set()
        for w in workers:
            w.join(30)
        assert not any(w.errors for w in workers), [w.errors for w in workers]
        held = sum(len(w.held) for w in workers)
        gone = sum(len(w.released) for w in workers)
        ops = sum(w.ops for w in workers)
        print(
            f"\nleader {first} killed; replica {second} led after {took:.2f}s; {ops} "
            f"operations, {held} held and {gone} released reservations checked"
        )
    finally:
        stop.set()
        agents.stop()


def test_a_paused_leader_is_fenced_and_comes_back_a_follower(group: Group) -> None:
    old = group.leader()
    agent = procs.start_agent(group.endpoints, "hf", 0, "--cpus", "1", "--ack-delay", "1.0")
    old_proc = group.arbiters[old]
    assert old_proc is not None
    try:
        with grpc.insecure_channel(group.addresses[old]) as ch, ThreadPoolExecutor(3) as pool:
            api = Api(ch)
            wait_until(lambda: role(group.addresses[old]) == "leader", what="leader")
            watch = api.arb.Watch(a.WatchRequest(host="hf"), timeout=60)
            watching = pool.submit(lambda: list(watch))
            # A change the old leader is waiting on (the agent acks after 1 s) ...
            pending = pool.submit(
                api.reserve_response, "hf", scope="cpu", cpu=0, addr=0x3000, timeout=60
            )
            time.sleep(0.3)
            os.kill(old_proc.pid, signal.SIGSTOP)  # ... when the process is paused
            stopped_at = time.monotonic()
            new = group.leader(timeout=TTL + 10, exclude=old)
            assert time.monotonic() - stopped_at <= TTL + 2
            with Client(group.addresses[new]) as client:
                kept = client.reserve("hf", cpu=0, addr=0x4000, len=8, type="w")
                assert kept.pending_cpus == (0,)  # its agent is still stuck on the old one
            # Another call reaches the paused process and waits in its socket.
            late = pool.submit(
                api.reserve_response, "hf", scope="cpu", cpu=0, addr=0x5000, timeout=60
            )
            time.sleep(TTL)  # well past the old lease
            os.kill(old_proc.pid, signal.SIGCONT)
            for call in (pending, late):
                with pytest.raises(grpc.RpcError) as exc:
                    call.result(timeout=30)
                code, reason, _, _ = error_info(exc.value)
                assert code is grpc.StatusCode.UNAVAILABLE, reason
                assert reason in ("NOT_LEADER", "LEADERSHIP_LOST"), reason
            # A watcher of the old leader is told, not left hanging on a silent stream.
            with pytest.raises(grpc.RpcError) as exc:
                watching.result(timeout=10)
            assert error_info(exc.value)[:2] == (grpc.StatusCode.UNAVAILABLE, "LEADERSHIP_LOST")
        wait_until(lambda: role(group.addresses[old]) == "follower", timeout=10, what="follower")
        with Client(group.endpoints) as client:
            addrs = {r.addr for r in client.list("hf")}
            assert addrs == {0x4000}, f"the old leader's changes were stored: {addrs}"
            assert group.roles()[new] == "leader" and group.roles().count("leader") == 1
            # The agent left the old leader and resynced with the new one.
            wait_until(lambda: _converged(client, "hf", 1), timeout=15, what="agent resync")
            regs = client.inventory("hf")[0].reported
            assert kept.id in regs.slots and 0x4000 in regs.dr
    finally:
        if old_proc.popen.poll() is None:
            os.kill(old_proc.pid, signal.SIGCONT)
        agent.stop()


def test_with_etcd_stopped_writes_are_refused_and_service_recovers_by_itself(
    group: Group,
) -> None:
    group.leader()
    agents = procs.start_fleet(group.endpoints, "he", 1)
    try:
        with Client(group.endpoints) as client:
            kept = client.reserve("he", cpu=0, addr=0x1000, len=8, type="w")
            group.etcd.stop()
            refused: list[str] = []
            deadline = time.monotonic() + 2 * TTL + 1
            attempts = 0
            while time.monotonic() < deadline:
                attempts += 1
                with Client(group.endpoints, retry=NO_RETRY) as once:
                    try:
                        once.reserve("he", cpu=0, addr=0x2000 + 8 * attempts, len=8, type="w")
                    except RemoteError as err:
                        assert err.code in (
                            grpc.StatusCode.UNAVAILABLE,
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                        ), err
                        refused.append(err.remote_reason)
                    else:
                        raise AssertionError("a write was acknowledged while etcd was down")
                time.sleep(0.2)
            assert refused and set(refused) <= {
                "LEDGER_WRITE_FAILED",
                "LEADERSHIP_LOST",
                "NOT_LEADER",
                "UNAVAILABLE",
                "DEADLINE_EXCEEDED",
            }, refused
            assert "leader" not in group.roles()
            group.etcd.start()
            group.leader(timeout=4 * TTL + 10)
            later = client.reserve("he", cpu=0, addr=0x9000, len=8, type="w")
            addrs = {r.addr for r in client.list("he")}
            assert addrs == {0x1000, 0x9000}, addrs
            assert {kept.id, later.id} <= {r.id for r in client.list("he")}
            # The agent had applied a generation the old leader never stored (its
            # rolled-back write): generations stay monotonic as its CPU saw them.
            wait_until(lambda: _converged(client, "he", 1), timeout=10, what="agent resync")
    finally:
        agents.stop()


def test_a_stopped_leader_resigns_and_a_follower_takes_over_at_once(group: Group) -> None:
    first = group.leader()
    proc = group.arbiters[first]
    assert proc is not None
    proc.stop()  # SIGINT: drain, resign
    t0 = time.monotonic()
    group.leader(timeout=10, exclude=first)
    took = time.monotonic() - t0
    assert took < TTL, "the lease was not revoked on a clean stop"
    print(f"\na follower led {took:.2f}s after the leader stopped cleanly")


def _scrape(proc: procs.Proc) -> dict[str, float]:
    line = next(x for x in proc.lines if x.startswith("metrics on "))
    with urllib.request.urlopen(f"http://{line.split()[-1]}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for row in text.splitlines():
        if row and not row.startswith("#"):
            name, _, value = row.rpartition(" ")
            out[name] = float(value)
    return out


def test_metrics_show_the_leader_its_takeovers_and_store_latency(steady: Group) -> None:
    g = steady
    lead = g.leader()
    agents = procs.start_fleet(g.endpoints, "hm", 1)
    try:
        with Client(g.endpoints) as client:
            client.reserve("hm", cpu=0, addr=0x1000, len=8, type="w")
    finally:
        agents.stop()
    for i, proc in enumerate(g.arbiters):
        assert proc is not None
        m = _scrape(proc)
        assert m["hwbp_leader"] == (1.0 if i == lead else 0.0)
        takeovers = m.get('hwbp_failovers_total{kind="takeover"}', 0.0)
        assert takeovers == (1.0 if i == lead else 0.0)
    m = _scrape(g.arbiters[lead])  # type: ignore[arg-type]
    assert m['hwbp_store_txn_seconds_count{result="ok"}'] >= 2  # the host, the reserve
    assert m.get('hwbp_store_txn_seconds_count{result="fenced"}', 0.0) == 0


def test_a_session_survives_a_failover_with_its_reservations(group: Group) -> None:
    first = group.leader()
    agents = procs.start_fleet(group.endpoints, "hs", 1)
    try:
        with Client(group.endpoints) as client:
            session = client.session(ttl=3.0, owner="dbg")
            held = session.reserve("hs", cpu=0, addr=0x7000, len=8, type="w")
            killed = group.arbiters[first]
            assert killed is not None
            killed.kill()
            group.leader(timeout=TTL + 10, exclude=first)
            time.sleep(3.0 + 2.0)  # past the session's ttl: only its keep-alives save it
            assert not session.expired
            assert held.id in {r.id for r in client.list("hs")}
            session.close()
            assert held.id not in {r.id for r in client.list("hs")}
    finally:
        agents.stop()


def test_a_reserve_retried_after_a_failover_is_answered_once(group: Group) -> None:
    """The first attempt committed on the leader, which died before the caller heard:
    the retry on the new leader, with the same idempotency key, gets the same
    reservation and takes no second slot."""
    first = group.leader()
    agents = procs.start_fleet(group.endpoints, "hx", 1)
    try:
        with grpc.insecure_channel(group.addresses[first]) as ch:
            made = Api(ch).reserve_response("hx", scope="cpu", cpu=0, addr=0x6000, key="k-1")
        killed = group.arbiters[first]
        assert killed is not None
        killed.kill()
        second = group.leader(timeout=TTL + 10, exclude=first)
        with grpc.insecure_channel(group.addresses[second]) as ch:
            api = Api(ch)
            again = api.reserve_response("hx", scope="cpu", cpu=0, addr=0x6000, key="k-1")
            assert again.reservation.id == made.reservation.id
            assert api.ids("hx") == {made.reservation.id}
            assert api.inventory("hx")[0].used == 1
    finally:
        agents.stop()
