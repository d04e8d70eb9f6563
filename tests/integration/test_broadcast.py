"""The arbiter and its agents as real processes: admission, broadcast, NACK, timeout, resync."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from hwbp.dr7 import decode
from hwbp.model import BpType
from hwbp.v1 import simulation_pb2 as s
from hwbp.v1 import types_pb2 as t
from tests.integration import procs
from tests.integration.stubs import Api, error_info, wait_until


@pytest.fixture(scope="module")
def api(channel: grpc.Channel) -> Api:
    return Api(channel)


@pytest.fixture(scope="module")
def fleet4(arbiter: str) -> Iterator[str]:
    """Host 'h4' with 4 simulated CPUs."""
    proc = procs.start_fleet(arbiter, "h4", 4)
    try:
        yield "h4"
    finally:
        proc.stop()


def _installed(cpu: t.CpuInventory) -> set[int]:
    return {cpu.reported.dr[i] for i in range(4) if cpu.reported.slot_reservation[i]}


def test_system_reservation_is_acknowledged_by_every_cpu_before_it_returns(
    api: Api, fleet4: str
) -> None:
    res = api.reserve(fleet4, scope="system", addr=0x5000, length=4, type="rw")
    cpus = api.inventory(fleet4)
    assert len(cpus) == 4
    for cpu in cpus:
        # The reported image comes from the agent's ACK: it is what the CPU holds.
        assert cpu.online and cpu.acked_generation == res.generation
        assert 0x5000 in _installed(cpu)
        slot = list(cpu.reported.slot_reservation).index(res.id)
        decoded = decode(cpu.reported.dr7)[slot]
        assert decoded is not None and decoded.length == 4 and decoded.type is BpType.RW
        assert not cpu.mismatch
    api.release(res.id)
    assert all(0x5000 not in _installed(c) for c in api.inventory(fleet4))


def test_fifth_cpu_reservation_is_refused_naming_the_holders(api: Api, fleet4: str) -> None:
    held = [
        api.reserve(fleet4, scope="cpu", cpu=1, addr=0x6000 + 8 * i, owner=f"u{i}")
        for i in range(4)
    ]
    with pytest.raises(grpc.RpcError) as exc:
        api.reserve(fleet4, scope="cpu", cpu=1, addr=0x7000)
    code, reason, meta, message = error_info(exc.value)
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and reason == "NO_FREE_SLOT"
    assert meta["cpu"] == "1" and meta["host"] == fleet4 and meta["errno"] == "ENOSPC"
    for r in held:
        assert r.id in meta["holders"] and r.id in message
    # A task breakpoint anywhere also needs cpu 1, so it is refused as well ...
    with pytest.raises(grpc.RpcError):
        api.reserve(fleet4, scope="task", task=42, addr=0x8000)
    # ... but cpu 2 is free, and a task bound to cpu 2 fits.
    ok = api.reserve(fleet4, scope="task+cpu", task=42, cpu=2, addr=0x8000)
    for r in [*held, ok]:
        api.release(r.id)
    assert not api.ids(fleet4)


def test_task_breakpoints_of_different_tasks_do_not_compete(api: Api, fleet4: str) -> None:
    a = [api.reserve(fleet4, scope="task", task=100, addr=0x9000 + 8 * i) for i in range(4)]
    b = [api.reserve(fleet4, scope="task", task=101, addr=0x9000 + 8 * i) for i in range(4)]
    with pytest.raises(grpc.RpcError) as exc:
        api.reserve(fleet4, scope="cpu", cpu=0, addr=0xA000)
    assert error_info(exc.value)[1] == "NO_FREE_SLOT"
    for r in a + b:
        api.release(r.id)


def test_modify_in_place_and_failed_modify_changes_nothing(api: Api, fleet4: str) -> None:
    from hwbp.v1 import arbiter_pb2 as a

    res = api.reserve(fleet4, scope="cpu", cpu=3, addr=0xB000, length=8)
    new = api.arb.Modify(
        a.ModifyRequest(request_id="m1", reservation_id=res.id, addr=0xB100, len=4), timeout=10
    ).reservation
    assert new.spec.addr == 0xB100 and new.spec.len == 4
    assert 0xB100 in _installed(api.inventory(fleet4)[3])
    with pytest.raises(grpc.RpcError) as exc:
        api.arb.Modify(
            a.ModifyRequest(request_id="m2", reservation_id=res.id, addr=0xB101), timeout=10
        )
    assert error_info(exc.value)[1] == "MISALIGNED_ADDRESS"
    # Disabled: keeps its slot, leaves the registers.
    api.arb.Modify(
        a.ModifyRequest(request_id="m3", reservation_id=res.id, enabled=False), timeout=10
    )
    cpu3 = api.inventory(fleet4)[3]
    assert 0xB100 not in _installed(cpu3) and cpu3.used == 1
    listed = [r for r in api.arb.List(a.ListRequest(host=fleet4)).reservations if r.id == res.id]
    assert listed[0].spec.addr == 0xB100 and not listed[0].spec.enabled
    api.release(res.id)


def test_context_switch_rebuilds_dr7_after_the_balance_changed(api: Api, fleet4: str) -> None:
    """The seed's case: system breakpoints change while a task is switched out."""
    task = 500
    mine = [
        api.reserve(fleet4, scope="task+cpu", task=task, cpu=0, addr=0xC000 + 8 * i, type="w")
        for i in range(2)
    ]
    img = api.sim.ContextSwitch(s.ContextSwitchRequest(host=fleet4, cpu=0, task=task)).image
    assert sorted(img.dr[i] for i in range(4) if img.slot_reservation[i]) == [0xC000, 0xC008]
    api.sim.ContextSwitch(s.ContextSwitchRequest(host=fleet4, cpu=0))  # idle
    system = [api.reserve(fleet4, scope="system", addr=0xD000 + 8 * i, type="rw") for i in range(2)]
    img = api.sim.ContextSwitch(s.ContextSwitchRequest(host=fleet4, cpu=0, task=task)).image
    slots = {img.slot_reservation[i]: i for i in range(4) if img.slot_reservation[i]}
    assert set(slots) == {r.id for r in mine + system}
    decoded = decode(img.dr7)
    for r in mine + system:
        field = decoded[slots[r.id]]
        assert field is not None and img.dr[slots[r.id]] == r.spec.addr
        assert field.type is (BpType.WRITE if r in mine else BpType.RW)
    # A write by the task hits its own watchpoint in whichever register it landed.
    hit = api.sim.MemoryAccess(
        s.MemoryAccessRequest(host=fleet4, cpu=0, addr=0xC008, len=1, type=t.ACCESS_TYPE_WRITE)
    )
    assert hit.hit and hit.hits[0].reservation_id == mine[1].id
    assert hit.dr6 & (1 << slots[mine[1].id])
    api.sim.ContextSwitch(s.ContextSwitchRequest(host=fleet4, cpu=0))
    for r in mine + system:
        api.release(r.id)


def test_nack_rolls_back_everywhere(api: Api, arbiter: str) -> None:
    host = "hnack"
    agents = [procs.start_agent(arbiter, host, c, "--cpus", "3") for c in range(2)]
    agents.append(procs.start_agent(arbiter, host, 2, "--cpus", "3", "--refuse-addr", "0xE000"))
    try:
        before = api.inventory(host)
        with pytest.raises(grpc.RpcError) as exc:
            api.reserve(host, scope="system", addr=0xE000)
        code, reason, meta, message = error_info(exc.value)
        assert code is grpc.StatusCode.ABORTED and reason == "AGENT_REFUSED"
        assert meta["cpus"] == "2" and "rolled back" in message and "0xe000" in message
        assert not api.ids(host)
        after = api.inventory(host)
        for b, c in zip(before, after, strict=True):
            assert 0xE000 not in _installed(c) and not c.mismatch
            assert list(c.reported.dr) == list(b.reported.dr)
        # The refused generation is not resent: a later change goes through normally.
        ok = api.reserve(host, scope="system", addr=0xF000)
        assert all(0xF000 in _installed(c) for c in api.inventory(host))
        api.release(ok.id)
    finally:
        for p in agents:
            p.stop()


def test_an_agent_too_slow_to_ack_is_fenced_and_the_change_is_pending_there(
    api: Api, arbiter: str
) -> None:
    host = "hslow"
    fast = procs.start_agent(arbiter, host, 0, "--cpus", "2")
    slow = procs.start_agent(arbiter, host, 1, "--cpus", "2", "--ack-delay", "2.5")
    try:
        resp = api.reserve_response(host, scope="system", addr=0x11000)
        assert list(resp.applied_cpus) == [0] and list(resp.pending_cpus) == [1]
        assert api.ids(host) == {resp.reservation.id}
        cpu1 = api.inventory(host)[1]
        # Fenced for missing its deadline (or, reconnected, resyncing and fenced again).
        assert cpu1.link in ("fenced", "resyncing", "offline"), cpu1
        assert 0x11000 in _installed(api.inventory(host)[0])
    finally:
        fast.stop()
        slow.stop()


def test_killed_agent_resyncs_to_the_exact_registers(api: Api, arbiter: str) -> None:
    host = "hkill"
    agents = [procs.start_agent(arbiter, host, c, "--cpus", "2") for c in range(2)]
    try:
        first = api.reserve(host, scope="cpu", cpu=1, addr=0x12000)
        agents[1].kill()
        wait_until(lambda: not api.inventory(host)[1].online, what="cpu 1 offline")
        # Offline CPUs still count, and are not waited for.
        second = api.reserve(host, scope="system", addr=0x13000, type="rw", length=8)
        assert api.inventory(host)[1].used == 2
        agents[1] = procs.start_agent(arbiter, host, 1, "--cpus", "2")
        cpu1 = wait_until(
            lambda: [
                c
                for c in api.inventory(host)
                if c.cpu == 1 and c.online and c.acked_generation == second.generation
            ],
            what="resync",
        )[0]
        assert _installed(cpu1) == {0x12000, 0x13000} and not cpu1.mismatch
        for r in (first, second):
            api.release(r.id)
    finally:
        for p in agents:
            p.stop()


def test_hits_reach_watchers(api: Api, fleet4: str, channel: grpc.Channel) -> None:
    from hwbp.v1 import arbiter_pb2 as a

    res = api.reserve(fleet4, scope="cpu", cpu=2, addr=0x14000, length=4, type="w")
    stream = api.arb.Watch(a.WatchRequest(host=fleet4, kinds=[t.EVENT_KIND_HIT]), timeout=10)
    try:
        miss = api.sim.MemoryAccess(
            s.MemoryAccessRequest(host=fleet4, cpu=2, addr=0x14000, len=4, type=t.ACCESS_TYPE_READ)
        )
        assert not miss.hit  # a read does not trigger a write watchpoint
        api.sim.MemoryAccess(
            s.MemoryAccessRequest(host=fleet4, cpu=2, addr=0x14002, len=2, type=t.ACCESS_TYPE_WRITE)
        )
        event = next(iter(stream))
        assert event.kind == t.EVENT_KIND_HIT and event.hit.reservation_id == res.id
        assert event.hit.cpu == 2 and event.hit.addr == 0x14000
        assert event.hit.access_addr == 0x14002
    finally:
        stream.cancel()
        api.release(res.id)


def test_unknown_host_and_bad_fields_change_nothing(api: Api, fleet4: str) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        api.reserve("nope", scope="cpu", cpu=0, addr=0x1000)
    assert error_info(exc.value)[:2] == (grpc.StatusCode.NOT_FOUND, "HOST_NOT_FOUND")
    with pytest.raises(grpc.RpcError) as exc:
        api.reserve(fleet4, scope="cpu", cpu=9, addr=0x1000)
    assert error_info(exc.value)[0] is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as exc:
        api.reserve(fleet4, scope="task", task=7, addr=0xFFFF800000000000)  # exclude_kernel
    assert error_info(exc.value)[1] == "KERNEL_ADDRESS_NOT_ALLOWED"
    with pytest.raises(grpc.RpcError) as exc:
        api.reserve(fleet4, scope="cpu", cpu=0, addr=0x1001, length=2)
    assert error_info(exc.value)[1] == "MISALIGNED_ADDRESS"
    assert not api.ids(fleet4)
