"""Agent-supplied strings cannot break the fleet-wide view (issue 13, item 9).

Two agents of a real arbiter ack their resync with a 15 MB ``detail`` each; the
Inventory of their host is then larger than gRPC's 16 MiB message limit unless the
arbiter bounds what it keeps. ``hwbpctl cpus`` must never call that "no free slot"
(exit 3): it exits 0 once the arbiter bounds the detail, and until then 7 (resource
exhausted) with one clear line.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from hwbp.v1 import agent_pb2, agent_pb2_grpc
from tests.integration import procs
from tests.integration.procs import CliResult

pytestmark = pytest.mark.timeout(90)

HOST = "hbig"
HUGE = 15 * 1024 * 1024
MAX_TEXT = 1024  # wire.convert.MAX_TEXT, restated: the test states the contract


class RawAgent:
    """One CPU's agent stream, spoken by hand: hello, then ack the resync with ``detail``."""

    def __init__(self, address: str, cpu: int, ncpus: int) -> None:
        self.outbox: queue.Queue[agent_pb2.AgentMessage | None] = queue.Queue()
        self.channel = grpc.insecure_channel(address)
        stub = agent_pb2_grpc.AgentLinkStub(self.channel)
        self.answers = stub.Connect(iter(self.outbox.get, None), timeout=80)
        hello = agent_pb2.Hello(host=HOST, cpu=cpu, ncpus=ncpus, backend="sim", slots=4)
        self.outbox.put(agent_pb2.AgentMessage(hello=hello))

    def ack_resync(self, detail: str) -> None:
        while True:
            msg = next(self.answers)
            if msg.WhichOneof("body") == "reload":
                ack = agent_pb2.Ack(generation=msg.reload.generation, detail=detail)
                self.outbox.put(agent_pb2.AgentMessage(ack=ack))
                return

    def close(self) -> None:
        self.outbox.put(None)
        self.answers.cancel()
        self.channel.close()


@pytest.fixture(scope="module")
def flooded() -> Iterator[CliResult]:
    """``hwbpctl --json cpus`` once both 15 MB acks have reached the arbiter."""
    arbiter, address = procs.start_arbiter()
    agents: list[RawAgent] = []
    try:
        agents = [RawAgent(address, cpu, 2) for cpu in range(2)]
        for a in agents:
            a.ack_resync("d" * HUGE)
        deadline = time.monotonic() + 30
        while True:
            res = procs.cli(address, "cpus", "--host", HOST)
            if res.code != 0 or _acked(res) or time.monotonic() > deadline:
                yield res
                return
            time.sleep(0.2)
    finally:
        for a in agents:
            a.close()
        arbiter.stop()


def _acked(res: CliResult) -> bool:
    cpus: list[dict[str, Any]] = res.json()
    return len(cpus) == 2 and all(c["online"] and c["detail"] for c in cpus)  # "" until acked


def test_huge_acks_never_read_as_no_free_slot(flooded: CliResult) -> None:
    assert flooded.code in (0, 7), (flooded.code, flooded.err)
    assert "Traceback" not in flooded.err
    if flooded.code == 7:
        (line,) = flooded.err.strip().splitlines()
        assert line.startswith("hwbpctl: resource exhausted"), line
        assert "not a debug register" in line


def test_huge_acks_are_bounded_by_the_arbiter(flooded: CliResult) -> None:
    assert flooded.code == 0, (flooded.code, flooded.err)
    for cpu in flooded.json():
        assert len(cpu["detail"]) <= MAX_TEXT and "truncated" in cpu["detail"]
