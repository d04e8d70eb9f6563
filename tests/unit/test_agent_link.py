"""The agent's end of its stream: what it sends is bounded, and how it classifies and
survives failures (broken streams, refusals, its own bugs) without ending the process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import pytest

from agent.link import AgentLink
from agent.sim import SimBackend
from hwbp.model import Assignment
from hwbp.registers import RegisterImage
from hwbp_pb import agent_pb2
from wire import convert

HUGE = 15 * 1024 * 1024


class ChattyBackend(SimBackend):
    """A simulated CPU whose kernel says far too much (in details and refusals)."""

    def __init__(self, *, refuse: bool) -> None:
        super().__init__(0)
        self.refuse = refuse

    def apply(self, assignments: Sequence[Assignment]) -> RegisterImage:
        if self.refuse:
            raise RuntimeError("no: " + "e" * HUGE)
        return super().apply(assignments)

    def detail(self) -> str:
        return "d" * HUGE


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    ch = grpc.aio.insecure_channel("127.0.0.1:9")  # never connected: nothing is called
    try:
        yield ch
    finally:
        await ch.close()


def sent(link: AgentLink) -> list[Any]:
    out = []
    while not link._outbox.empty():
        out.append(link._outbox.get_nowait())
    return out


async def test_an_ack_carries_a_bounded_detail(channel: grpc.aio.Channel) -> None:
    link = AgentLink(channel, "h1", 0, 1, ChattyBackend(refuse=False))
    await link._reload(agent_pb2.Reload(generation=3))
    (msg,) = sent(link)
    assert msg.ack.generation == 3
    assert len(msg.ack.detail) <= convert.MAX_TEXT and "truncated" in msg.ack.detail


async def test_a_nack_carries_a_bounded_reason(channel: grpc.aio.Channel) -> None:
    link = AgentLink(channel, "h1", 0, 1, ChattyBackend(refuse=True))
    await link._reload(agent_pb2.Reload(generation=4))
    (msg,) = sent(link)
    assert msg.nack.generation == 4
    assert msg.nack.reason.startswith("no: eee")
    assert len(msg.nack.reason) <= convert.MAX_TEXT
