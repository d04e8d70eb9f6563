"""The change pipeline with real processes: a stopped agent, a retried reserve, reads.

Each of these failed before the pipeline became a state machine: a SIGSTOPped agent
made every later change on its host wait a full ack timeout (and the rollback another);
a reserve retried after its client's deadline made a second reservation; List showed a
reserve that was still waiting for acknowledgements.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest

from hwbp.v1 import arbiter_pb2 as a
from hwbp.v1 import types_pb2 as t
from tests.integration import procs
from tests.integration.stubs import Api, error_info, wait_until

ACK_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def slow_arbiter() -> Iterator[str]:
    """An arbiter that waits ACK_TIMEOUT for acknowledgements."""
    proc, address = procs.start_arbiter("--ack-timeout", str(ACK_TIMEOUT))
    try:
        yield address
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def api2(slow_arbiter: str) -> Iterator[Api]:
    with grpc.insecure_channel(slow_arbiter) as channel:
        yield Api(channel)


def _installed(cpu: t.CpuInventory) -> set[int]:
    return {cpu.reported.dr[i] for i in range(4) if cpu.reported.slot_reservation[i]}


def test_a_stopped_agent_costs_its_host_one_ack_timeout(api2: Api, slow_arbiter: str) -> None:
    host = "hstop"
    agents = [procs.start_agent(slow_arbiter, host, c, "--cpus", "3") for c in range(3)]
    try:
        before = api2.reserve(host, scope="cpu", cpu=1, addr=0x21000)
        os.kill(agents[1].pid, signal.SIGSTOP)
        started = time.monotonic()
        first = api2.reserve_response(host, scope="system", addr=0x22000, timeout=3 * ACK_TIMEOUT)
        waited = time.monotonic() - started
        assert list(first.pending_cpus) == [1] and list(first.applied_cpus) == [0, 2]
        assert waited >= ACK_TIMEOUT * 0.9  # it did wait for cpu 1, once
        cpu1 = api2.inventory(host)[1]
        assert cpu1.link == "fenced" and not cpu1.online
        assert "did not acknowledge" in cpu1.link_reason
        # Later changes, on every CPU or only healthy ones, no longer wait for it: a call
        # deadline of half the ack timeout would cut off any that did.
        later = [
            api2.reserve_response(
                host, scope="cpu", cpu=c, addr=0x23000 + 8 * c, timeout=ACK_TIMEOUT / 2
            )
            for c in (0, 2)
        ]
        system = api2.reserve_response(host, scope="system", addr=0x24000, timeout=ACK_TIMEOUT / 2)
        assert all(not r.pending_cpus for r in later) and list(system.pending_cpus) == [1]
        os.kill(agents[1].pid, signal.SIGCONT)
        # It notices its stream was closed, reconnects and resyncs to the ledger.
        cpu1 = wait_until(
            lambda: [c for c in api2.inventory(host) if c.cpu == 1 and c.link == "live"],
            timeout=20,
            what="cpu 1 live again",
        )[0]
        wait_until(
            lambda: _installed(api2.inventory(host)[1]) == {0x21000, 0x22000, 0x24000},
            what="cpu 1 resynced",
        )
        assert not api2.inventory(host)[1].mismatch
        for r in [before, first.reservation, *(x.reservation for x in later), system.reservation]:
            api2.release(r.id)
    finally:
        for p in agents:
            if p.popen.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
            p.stop()


def test_a_reserve_retried_after_its_deadline_makes_one_reservation(
    api2: Api, slow_arbiter: str
) -> None:
    host = "hretry"
    agent = procs.start_agent(slow_arbiter, host, 0, "--cpus", "1", "--ack-delay", "1.0")
    try:
        key = uuid.uuid4().hex
        with pytest.raises(grpc.RpcError) as exc:
            api2.reserve_response(host, scope="cpu", cpu=0, addr=0x31000, key=key, timeout=0.3)
        assert exc.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        retry = api2.reserve_response(host, scope="cpu", cpu=0, addr=0x31000, key=key)
        again = api2.reserve_response(host, scope="cpu", cpu=0, addr=0x31000, key=key)
        assert retry.reservation.id == again.reservation.id
        assert retry.generation == again.generation
        assert api2.ids(host) == {retry.reservation.id}
        with pytest.raises(grpc.RpcError) as exc:
            api2.reserve_response(host, scope="cpu", cpu=0, addr=0x32000, key=key)
        code, reason, meta, message = error_info(exc.value)
        assert code is grpc.StatusCode.INVALID_ARGUMENT and reason == "IDEMPOTENCY_KEY_REUSED"
        assert meta["idempotency_key"] == key and key in message
        assert api2.ids(host) == {retry.reservation.id}
        api2.release(retry.reservation.id)
    finally:
        agent.stop()


def test_reads_show_only_committed_reservations(api2: Api, slow_arbiter: str) -> None:
    host = "hread"
    agent = procs.start_agent(slow_arbiter, host, 0, "--cpus", "1", "--ack-delay", "1.5")
    try:
        wait_until(lambda: api2.inventory(host)[0].link == "live", what="agent live")
        result: list[a.ReserveResponse] = []
        call = threading.Thread(
            target=lambda: result.append(
                api2.reserve_response(host, scope="cpu", cpu=0, addr=0x41000)
            )
        )
        call.start()
        seen_pending = False
        while call.is_alive():
            listed = api2.ids(host)
            cpu = api2.inventory(host)[0]
            if call.is_alive():  # still not answered: nothing of it may show
                assert not listed, f"List shows an uncommitted reservation: {listed}"
                assert not cpu.holders and cpu.used == 0
                seen_pending = seen_pending or cpu.pending
            time.sleep(0.05)
        call.join()
        assert seen_pending, "the inventory never marked the CPU pending"
        assert api2.ids(host) == {result[0].reservation.id}
        api2.release(result[0].reservation.id)
    finally:
        agent.stop()


def test_a_second_live_agent_for_a_cpu_is_refused(api2: Api, slow_arbiter: str) -> None:
    host = "hdup"
    first = procs.start_agent(slow_arbiter, host, 0, "--cpus", "1")
    try:
        second, _ = procs.start(
            ["hwbp.agent", "--arbiter", slow_arbiter, "--host", host, "--cpu", "0", "--cpus", "1"],
            "agent hdup/0 second",
        )
        try:
            wait_until(
                lambda: any(
                    "AGENT_ALREADY_CONNECTED" in line or "already has a live agent" in line
                    for line in _output(second)
                ),
                timeout=10,
                what="the second agent told it is refused",
            )
            cpu = api2.inventory(host)[0]
            assert cpu.online and cpu.link == "live"
        finally:
            second.stop()
    finally:
        first.stop()


def _output(proc: procs.Proc) -> list[str]:
    if proc.pump is None:
        procs._drain_in_background(proc)
    return list(proc.lines)
