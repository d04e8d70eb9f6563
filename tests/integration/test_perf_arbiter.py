"""Real debug registers through the whole service: arbiter, perf agents, real target processes.

Skips only where the kernel refuses perf_event_open hardware breakpoints, saying why.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from hwbp.agent.perf import probe
from hwbp.v1 import arbiter_pb2 as a
from hwbp.v1 import types_pb2 as t
from tests.integration import procs
from tests.integration.stubs import Api, error_info, wait_until
from tests.integration.targets import Target, need_every_register

_reason = probe()
if _reason is not None:
    pytest.skip(f"the kernel refuses hardware breakpoints here: {_reason}", allow_module_level=True)

pytestmark = pytest.mark.kernel
HOST = "real"
CPUS = os.cpu_count() or 1


@pytest.fixture(scope="module")
def real_host(arbiter: str) -> Iterator[str]:
    with procs.perf_agents(arbiter, HOST, CPUS) as name:
        yield name


@pytest.fixture
def target() -> Iterator[Target]:
    tgt = Target(max(os.sched_getaffinity(0)))
    try:
        yield tgt
    finally:
        tgt.kill()


class Hits:
    """Collect HIT events from a Watch stream in the background."""

    def __init__(self, api: Api, task: int | None = None) -> None:
        self.items: list[t.Event] = []
        self.stream = api.arb.Watch(
            a.WatchRequest(
                host=HOST, kinds=[t.EVENT_KIND_HIT], announce_subscribed=True, task=task
            ),
            timeout=60,
        )
        # Subscribed: every hit from now on reaches this stream.
        assert next(self.stream).kind == t.EVENT_KIND_SUBSCRIBED
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        try:
            for ev in self.stream:
                self.items.append(ev)
        except grpc.RpcError:
            pass

    def settle(self, n: int) -> list[t.Event]:
        wait_until(lambda: len(self.items) >= n, timeout=10, what=f"{n} hits")
        time.sleep(0.5)  # nothing more may arrive
        return list(self.items)

    def close(self) -> None:
        self.stream.cancel()
        self.thread.join(5)


def test_inventory_names_the_perf_backend(channel: grpc.Channel, real_host: str) -> None:
    cpus = Api(channel).inventory(real_host)
    assert len(cpus) == CPUS and all(c.online and c.backend == "perf" for c in cpus)


def test_watchpoint_on_a_real_process_counts_every_write(
    channel: grpc.Channel, real_host: str, target: Target
) -> None:
    api = Api(channel)
    res = api.reserve(real_host, scope="task", task=target.pid, addr=target.addr, length=8)
    # What the kernel accepted on every CPU matches the ledger, and the inventory says so.
    cpus = api.inventory(real_host)
    assert not any(c.mismatch for c in cpus)
    assert all("kernel accepted" in c.detail and res.id in c.detail for c in cpus)
    hits = Hits(api, task=target.pid)
    try:
        assert target.ask("w 50") == "done"
        got = hits.settle(50)
    finally:
        hits.close()
        api.release(res.id)
    assert len(got) == 50
    assert {(e.hit.reservation_id, e.hit.addr, e.hit.task) for e in got} == {
        (res.id, target.addr, target.pid)
    }
    assert len({e.hit.seq for e in got}) == 50


def test_exec_breakpoint_fires_on_each_call(
    channel: grpc.Channel, real_host: str, target: Target
) -> None:
    api = Api(channel)
    res = api.reserve(real_host, scope="task", task=target.pid, addr=target.getpid, type="x")
    hits = Hits(api, task=target.pid)
    try:
        assert target.ask("x 20") == "done"
        got = hits.settle(20)
    finally:
        hits.close()
        api.release(res.id)
    assert len(got) == 20 and all(e.hit.addr == target.getpid for e in got)


def test_registers_held_outside_the_arbiter_give_a_clear_nack(
    channel: grpc.Channel, real_host: str, target: Target
) -> None:
    need_every_register(0)
    api = Api(channel)
    before = api.ids(real_host)
    holder = Target(0)
    try:
        assert int(holder.ask("h 0")) == 4  # an outside tool now holds all of cpu 0
        with pytest.raises(grpc.RpcError) as exc:
            api.reserve(real_host, scope="cpu", cpu=0, addr=target.addr, length=8)
        code, reason, meta, message = error_info(exc.value)
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and reason == "KERNEL_NO_FREE_SLOT"
        assert meta["errno"] == "ENOSPC" and meta["cpus"] == "0"
        assert "outside the arbiter" in message and "rolled back" in message
        assert api.ids(real_host) == before  # no trace left
    finally:
        holder.kill()
    ok = api.reserve(real_host, scope="cpu", cpu=0, addr=target.addr, length=8)
    api.release(ok.id)


def test_a_watched_process_that_exits_gets_its_slots_released(
    channel: grpc.Channel, real_host: str, target: Target
) -> None:
    api = Api(channel)
    res = api.reserve(real_host, scope="task", task=target.pid, addr=target.addr, length=8)
    assert res.id in api.ids(real_host)
    target.quit()
    wait_until(lambda: res.id not in api.ids(real_host), timeout=10, what="release on exit")


def test_ptrace_dr6_on_real_registers_is_one_exception(
    channel: grpc.Channel, real_host: str, target: Target
) -> None:
    """A ptrace facade on a real host: DR0 and DR1 both watch a byte, one store hits
    both. The perf agent reports the two samples as one debug exception and the task's
    DR6 reads 0xffff0ff3, as exc_debug_user() and ptrace_triggered() make it."""
    from hwbp.v1 import ptrace_pb2 as p
    from hwbp.v1 import ptrace_pb2_grpc

    stub = ptrace_pb2_grpc.PtraceStub(channel)

    def poke(reg: int, value: int) -> None:
        stub.PokeUser(
            p.PokeUserRequest(host=real_host, task=target.pid, reg=reg, value=value), timeout=10
        )

    hits = Hits(Api(channel), task=target.pid)
    try:
        for reg, value in ((0, target.addr), (1, target.addr), (7, 0x110005)):
            poke(reg, value)
        time.sleep(0.2)
        assert target.ask("s 0 1") == "done"
        got = hits.settle(2)
        dr6 = stub.PeekUser(
            p.PeekUserRequest(host=real_host, task=target.pid, reg=6), timeout=10
        ).value
    finally:
        hits.close()
        stub.Flush(p.FlushRequest(host=real_host, task=target.pid), timeout=10)
    assert sorted(e.hit.ptrace_index for e in got) == [0, 1]
    assert len({e.hit.exception for e in got}) == 1
    assert dr6 == 0xFFFF0FF3
