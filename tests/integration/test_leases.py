"""Lease expiry proceeds per host, concurrently (issue 13, item 3), with real processes.

Before: the reaper ended expired sessions one after another, so a session stuck on a host
whose agent does not answer (SIGSTOP) delayed, by a whole ack timeout, the expiry of a
session on a healthy host.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import grpc
import pytest

from hwbp.v1 import arbiter_pb2 as a
from hwbp.v1 import types_pb2 as t
from tests.integration import ledgers, procs
from tests.integration.stubs import Api, wait_until

pytestmark = pytest.mark.timeout(90)
ACK_TIMEOUT = 3.0
TTL = 1.0


def _reserve(api: Api, host: str, cpu: int, addr: int, session: str) -> str:
    req = a.ReserveRequest(
        request_id=uuid.uuid4().hex,
        target=t.Target(host=host, scope=t.SCOPE_CPU, cpu=cpu),
        spec=t.BreakpointSpec(addr=addr, len=8, type=t.BREAKPOINT_TYPE_WRITE, enabled=True),
        session_id=session,
    )
    return str(api.arb.Reserve(req, timeout=10).reservation.id)


def test_a_host_with_a_silent_agent_delays_no_lease_on_a_healthy_host() -> None:
    arbiter, address = procs.start_arbiter("--ack-timeout", str(ACK_TIMEOUT))
    stuck = [procs.start_agent(address, "hstuck", c, "--cpus", "2") for c in range(2)]
    healthy = procs.start_fleet(address, "hok", 1)
    try:
        with grpc.insecure_channel(address) as ch:
            api = Api(ch)
            stuck_ids = []
            for i in range(3):  # their leases expire first, and each waits for cpu 1
                session = ledgers.open_session(ch, ttl=TTL)
                stuck_ids.append(_reserve(api, "hstuck", 1, 0x1000 + 8 * i, session))
            os.kill(stuck[1].pid, signal.SIGSTOP)
            session = ledgers.open_session(ch, ttl=TTL)
            opened = time.monotonic()
            held = _reserve(api, "hok", 0, 0x2000, session)
            wait_until(lambda: held not in api.ids("hok"), timeout=15, what="lease expired")
            waited = time.monotonic() - opened
            assert waited <= TTL + 1.0, f"released {waited:.2f}s after its lease began"
            # The stuck ones end too, once their agent is fenced (one ack timeout).
            wait_until(
                lambda: not set(stuck_ids) & api.ids("hstuck"),
                timeout=TTL + 2 * ACK_TIMEOUT + 2,
                what="stuck leases expired",
            )
    finally:
        if stuck[1].popen.poll() is None:
            os.kill(stuck[1].pid, signal.SIGCONT)
        for p in [*stuck, healthy, arbiter]:
            p.stop()
