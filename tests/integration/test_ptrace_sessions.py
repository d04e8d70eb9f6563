"""Remote ptrace (x86-64 POKEUSER/PEEKUSER on u_debugreg) and session leases, end to end."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest

from hwbp.v1 import arbiter_pb2, ptrace_pb2_grpc, session_pb2, session_pb2_grpc
from hwbp.v1 import ptrace_pb2 as p
from hwbp.v1 import simulation_pb2 as s
from hwbp.v1 import types_pb2 as t
from tests.integration import procs
from tests.integration.stubs import Api, error_info, wait_until

HOST = "hp"
DR7_L0 = 0x1  # local enable of slot 0
W4 = 0b1101 << 16  # slot 0: R/W=01 (write), LEN=11 (4 bytes)


@pytest.fixture(scope="module")
def fleet(arbiter: str) -> Iterator[str]:
    proc = procs.start_fleet(arbiter, HOST, 2)
    try:
        yield HOST
    finally:
        proc.stop()


class Tracer:
    def __init__(self, channel: grpc.Channel, task: int, session: str = "") -> None:
        self.stub = ptrace_pb2_grpc.PtraceStub(channel)
        self.task, self.session = task, session

    def poke(self, reg: int, value: int) -> None:
        self.stub.PokeUser(
            p.PokeUserRequest(
                request_id=uuid.uuid4().hex,
                session_id=self.session,
                host=HOST,
                task=self.task,
                reg=reg,
                value=value,
            ),
            timeout=10,
        )

    def peek(self, reg: int) -> int:
        return int(
            self.stub.PeekUser(
                p.PeekUserRequest(session_id=self.session, host=HOST, task=self.task, reg=reg),
                timeout=10,
            ).value
        )

    def detach(self) -> int:
        """PTRACE_DETACH: returns how many ptrace breakpoints the task keeps."""
        return int(
            self.stub.Detach(
                p.DetachRequest(session_id=self.session, host=HOST, task=self.task), timeout=10
            ).kept
        )

    def flush(self) -> int:
        """What the task's exit or exec does: returns how many were released."""
        return int(
            self.stub.Flush(
                p.FlushRequest(session_id=self.session, host=HOST, task=self.task), timeout=10
            ).released
        )

    def fails(self, reg: int, value: int) -> tuple[str, dict[str, str]]:
        with pytest.raises(grpc.RpcError) as exc:
            self.poke(reg, value)
        _, reason, meta, _ = error_info(exc.value)
        return reason, meta


def test_address_write_reserves_a_disabled_slot(channel: grpc.Channel, fleet: str) -> None:
    api, tr = Api(channel), Tracer(channel, 301)
    tr.poke(0, 0x4000)
    assert tr.peek(0) == 0x4000 and tr.peek(7) == 0
    held = [
        r
        for r in api.arb.List(arbiter_pb2.ListRequest(host=fleet)).reservations
        if r.target.task == 301
    ]
    assert len(held) == 1 and not held[0].spec.enabled and held[0].ptrace_index == 0
    assert api.inventory(fleet)[0].used >= 1  # the disabled breakpoint holds its slot
    assert tr.detach() == 1  # kept: the kernel keeps a detached task's breakpoints
    assert tr.flush() == 1
    assert not [
        r
        for r in api.arb.List(arbiter_pb2.ListRequest(host=fleet)).reservations
        if r.target.task == 301
    ]


def test_address_write_fails_with_enospc_when_cpu_bound_fill_the_cpu(
    channel: grpc.Channel, fleet: str
) -> None:
    api, tr = Api(channel), Tracer(channel, 302)
    full = [api.reserve(fleet, scope="cpu", cpu=1, addr=0x7000 + 8 * i) for i in range(4)]
    try:
        reason, meta = tr.fails(0, 0x4000)
        assert reason == "NO_FREE_SLOT" and meta["errno"] == "ENOSPC" and meta["cpu"] == "1"
    finally:
        for r in full:
            api.release(r.id)
    with pytest.raises(grpc.RpcError):  # nothing stayed attached or reserved
        tr.peek(0)


def test_dr7_write_enables_and_reads_back_bit_for_bit(channel: grpc.Channel, fleet: str) -> None:
    api, tr = Api(channel), Tracer(channel, 303)
    tr.poke(0, 0x5000)
    value = DR7_L0 | W4 | 0x100  # LE set too: must read back exactly
    tr.poke(7, value)
    assert tr.peek(7) == value
    # The task runs on cpu 0: its watchpoint is installed, a write hits ptrace index 0.
    api.sim.ContextSwitch(s.ContextSwitchRequest(host=fleet, cpu=0, task=303))
    hit = api.sim.MemoryAccess(
        s.MemoryAccessRequest(host=fleet, cpu=0, addr=0x5002, len=1, type=t.ACCESS_TYPE_WRITE)
    )
    assert hit.hit and hit.hits[0].ptrace_index == 0
    assert tr.peek(6) == 0xFFFF0FF1
    api.sim.ContextSwitch(s.ContextSwitchRequest(host=fleet, cpu=0))
    tr.flush()


def test_dr6_bit_is_the_ptrace_index_not_the_physical_register(
    channel: grpc.Channel, fleet: str
) -> None:
    api, tr = Api(channel), Tracer(channel, 304)
    cpu_bound = api.reserve(fleet, scope="cpu", cpu=0, addr=0x9000)  # takes DR0 on cpu 0
    tr.poke(3, 0x6000)
    tr.poke(7, (1 << 6) | (0b1101 << 28))  # L3, slot 3 write len 4
    api.sim.ContextSwitch(s.ContextSwitchRequest(host=fleet, cpu=0, task=304))
    hit = api.sim.MemoryAccess(
        s.MemoryAccessRequest(host=fleet, cpu=0, addr=0x6000, len=4, type=t.ACCESS_TYPE_WRITE)
    )
    # Installed into DR1 (DR0 is the CPU-bound one), reported as ptrace index 3.
    assert hit.hits[0].ptrace_index == 3 and hit.hits[0].physical_index == 1
    assert tr.peek(6) == 0xFFFF0FF8
    tr.poke(6, 0)
    assert tr.peek(6) == 0
    api.sim.ContextSwitch(s.ContextSwitchRequest(host=fleet, cpu=0))
    tr.flush()
    api.release(cpu_bound.id)


def test_dr7_error_restores_earlier_slots(channel: grpc.Channel, fleet: str) -> None:
    tr = Tracer(channel, 305)
    tr.poke(0, 0x5000)
    tr.poke(7, DR7_L0 | W4)
    before = tr.peek(7)
    # Slot 0 rewritten to rw/8, slot 1 asks for R/W=10 (I/O): EINVAL, slot 0 restored.
    reason, meta = tr.fails(7, DR7_L0 | (0b1011 << 16) | (1 << 2) | (0b0010 << 20))
    assert meta["errno"] == "EINVAL" and reason in ("INVALID_TYPE", "INVALID_LENGTH")
    assert tr.peek(7) == before and tr.peek(0) == 0x5000
    tr.flush()


def test_misaligned_address_and_dr4_dr5(channel: grpc.Channel, fleet: str) -> None:
    tr = Tracer(channel, 306)
    tr.poke(0, 0x5000)
    tr.poke(7, DR7_L0 | W4)
    reason, meta = tr.fails(0, 0x5001)  # 4-byte watchpoint: misaligned
    assert reason == "MISALIGNED_ADDRESS" and meta["errno"] == "EINVAL"
    assert tr.peek(0) == 0x5000
    reason, meta = tr.fails(4, 1)
    assert reason == "PTRACE_EIO" and meta["errno"] == "EIO"
    assert tr.peek(4) == 0 and tr.peek(5) == 0
    reason, meta = tr.fails(0, 0xFFFF800000001000)  # a kernel address
    assert meta["errno"] == "EINVAL"
    tr.flush()


def test_traps_stream_delivers_each_hit(channel: grpc.Channel, fleet: str) -> None:
    api, tr = Api(channel), Tracer(channel, 307)
    tr.poke(2, 0x8000)
    tr.poke(7, (1 << 4) | (0b1101 << 24))  # L2, write len 4
    traps = tr.stub.Traps(p.TrapsRequest(host=HOST, task=307), timeout=10)
    try:
        api.sim.ContextSwitch(s.ContextSwitchRequest(host=fleet, cpu=1, task=307))
        for _ in range(2):
            api.sim.MemoryAccess(
                s.MemoryAccessRequest(
                    host=fleet, cpu=1, addr=0x8000, len=4, type=t.ACCESS_TYPE_WRITE
                )
            )
        it = iter(traps)
        first, second = next(it), next(it)
        assert (first.ptrace_index, first.addr, first.cpu) == (2, 0x8000, 1)
        assert first.dr6 == 0xFFFF0FF4 and second.seq > first.seq
    finally:
        traps.cancel()
        api.sim.ContextSwitch(s.ContextSwitchRequest(host=fleet, cpu=1))
        tr.flush()


def test_other_session_cannot_touch_an_attached_task(channel: grpc.Channel, fleet: str) -> None:
    sessions = session_pb2_grpc.SessionsStub(channel)
    sid = sessions.OpenSession(session_pb2.OpenSessionRequest(ttl_seconds=30, owner="a")).session_id
    mine = Tracer(channel, 308, sid)
    mine.stub.Attach(p.AttachRequest(session_id=sid, host=HOST, task=308))
    mine.poke(0, 0x1000)
    reason, _ = Tracer(channel, 308).fails(0, 0x2000)
    assert reason == "NOT_OWNER"
    assert sessions.CloseSession(session_pb2.CloseSessionRequest(session_id=sid)).released == 1


CLIENT = textwrap.dedent("""
    import sys, time, grpc
    from hwbp.v1 import arbiter_pb2 as a, arbiter_pb2_grpc as ag, session_pb2 as sp
    from hwbp.v1 import session_pb2_grpc as sg, types_pb2 as t
    ch = grpc.insecure_channel(sys.argv[1])
    ss = sg.SessionsStub(ch)
    sid = ss.OpenSession(sp.OpenSessionRequest(ttl_seconds=float(sys.argv[3]))).session_id
    def pings():
        while True:
            yield sp.KeepAliveRequest(session_id=sid)
            time.sleep(0.3)
    stream = ss.KeepAlive(pings())
    next(stream)
    for i in range(4):
        ag.ArbiterStub(ch).Reserve(a.ReserveRequest(
            target=t.Target(host=sys.argv[2], scope=t.SCOPE_CPU, cpu=0),
            spec=t.BreakpointSpec(addr=0x3000 + 8 * i, len=8, type=t.BREAKPOINT_TYPE_WRITE,
                                  enabled=True), session_id=sid))
    print("held", flush=True)
    for _ in stream:
        pass
""")


def test_killed_client_gets_its_slots_back_within_ttl_plus_one(
    arbiter: str, channel: grpc.Channel, fleet: str
) -> None:
    api, ttl = Api(channel), 2.0
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, arbiter, fleet, str(ttl)],
        cwd=procs.ROOT,
        env=procs._env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None and client.stdout.readline().strip() == "held"
        assert api.inventory(fleet)[0].used == 4
        time.sleep(ttl + 0.5)  # keep-alives renew the lease: still held past one TTL
        assert api.inventory(fleet)[0].used == 4
        client.kill()
        killed = time.monotonic()
        wait_until(lambda: api.inventory(fleet)[0].used == 0, timeout=ttl + 3, what="expiry")
        elapsed = time.monotonic() - killed
        assert elapsed <= ttl + 1.0, f"slots came back after {elapsed:.2f}s"
    finally:
        client.kill()
        client.wait()
        if client.stdout:
            client.stdout.close()


def test_lease_expiry_releases_what_a_detached_task_kept(channel: grpc.Channel, fleet: str) -> None:
    """The service's own rule (the kernel would keep them until the task exits): when the
    session that traced a task ends, even by its lease expiring, the breakpoints the task
    kept across a PTRACE_DETACH are released, so a dead client never leaks slots."""
    api = Api(channel)
    sessions = session_pb2_grpc.SessionsStub(channel)
    sid = sessions.OpenSession(session_pb2.OpenSessionRequest(ttl_seconds=1.0)).session_id
    tr = Tracer(channel, 309, sid)
    tr.stub.Attach(p.AttachRequest(session_id=sid, host=HOST, task=309))
    tr.poke(0, 0x1000)
    assert tr.detach() == 1
    assert [
        r.target.task
        for r in api.arb.List(arbiter_pb2.ListRequest(host=fleet)).reservations
        if r.target.task == 309
    ] == [309]
    # No keep-alive: the lease runs out.
    wait_until(
        lambda: (
            not [
                r
                for r in api.arb.List(arbiter_pb2.ListRequest(host=fleet)).reservations
                if r.target.task == 309
            ]
        ),
        timeout=5,
        what="the lease's expiry",
    )
