"""One agent stream's transport: what an agent can make the arbiter hold is bounded."""

from __future__ import annotations

import asyncio

import pytest

from hwbp.model import Assignment, BpType, Breakpoint
from hwbp.server import links
from hwbp.server.links import AckResult, AgentChannel, Disconnected, StreamStuck
from hwbp.v1 import agent_pb2


def _a(rid: str) -> Assignment:
    return Assignment(rid, None, Breakpoint(0x1000, 8, BpType.WRITE))


async def test_a_stream_nobody_reads_is_refused_more_not_buffered() -> None:
    ch = AgentChannel("h", 0, "sim")
    for gen in range(links.OUTBOX_LIMIT):
        ch.send_reload(gen, "q", [_a("r1")])
    with pytest.raises(StreamStuck, match="does not read its stream"):
        ch.send_reload(links.OUTBOX_LIMIT, "q", [])
    assert ch.outbox.qsize() == links.OUTBOX_LIMIT and ch.sent_generation == links.OUTBOX_LIMIT - 1
    ch.close("fenced")  # the end still gets through
    assert ch.outbox.qsize() == links.OUTBOX_LIMIT + 1 and ch.close_reason == "fenced"


async def test_controls_are_bounded_and_a_timed_out_one_is_forgotten() -> None:
    ch = AgentChannel("h", 0, "sim")
    calls = [
        ch.control("q", 0, switch_task=agent_pb2.SwitchTask()) for _ in range(links.CONTROLS_LIMIT)
    ]
    with pytest.raises(StreamStuck, match="control calls unanswered"):
        ch.control("q", 0, switch_task=agent_pb2.SwitchTask())
    cid, fut = calls[0]
    ch.forget(cid)
    ch.control_result(agent_pb2.ControlResult(control_id=cid, ok=True))  # late: dropped
    assert not fut.done()
    ch.control("q", 0, switch_task=agent_pb2.SwitchTask())  # room again


async def test_close_fails_outstanding_controls_and_refuses_new_ones() -> None:
    ch = AgentChannel("h", 0, "sim")
    _, fut = ch.control("q", 0, switch_task=agent_pb2.SwitchTask())
    ch.close()
    assert isinstance(fut.exception(), Disconnected)
    _, late = ch.control("q", 0, switch_task=agent_pb2.SwitchTask())
    assert isinstance(late.exception(), Disconnected)
    assert not ch.open


async def test_close_cancels_a_writer_stuck_on_an_agent_that_does_not_read() -> None:
    ch = AgentChannel("h", 0, "sim")
    ch.handler = asyncio.create_task(asyncio.sleep(60))
    ch.close("not reading")
    await asyncio.sleep(links.CLOSE_GRACE + 0.2)
    assert ch.handler.cancelled()


def test_answers_record_only_acknowledged_images() -> None:
    ch = AgentChannel("h", 0, "sim")
    ch.answered(AckResult(3, False, reason="no"))
    assert ch.acked_generation == 0
    ch.answered(AckResult(3, True, detail="ok"))
    ch.answered(AckResult(2, True))  # older: never goes backwards
    assert ch.acked_generation == 3 and ch.detail == ""
