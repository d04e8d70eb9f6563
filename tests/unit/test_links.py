"""Backpressure on one agent stream: one reload in flight, newer ones merged, stale answers."""

from __future__ import annotations

import asyncio

from hwbp.model import Assignment, BpType, Breakpoint
from server.links import AckResult, AgentChannel, Disconnected, LinkState


def _a(rid: str) -> Assignment:
    return Assignment(rid, None, Breakpoint(0x1000, 8, BpType.WRITE))


def _sent(ch: AgentChannel) -> list[int]:
    out = []
    while not ch.outbox.empty():
        msg = ch.outbox.get_nowait()
        assert msg is not None
        out.append(msg.reload.generation)
    return out


async def test_one_reload_in_flight_and_newer_ones_merged() -> None:
    ch = AgentChannel("h", 0, "sim")
    ch.move(LinkState.RESYNCING)
    f1 = ch.reload(1, "a", [_a("r1")])
    f2 = ch.reload(2, "b", [_a("r1"), _a("r2")])
    f3 = ch.reload(3, "c", [_a("r1"), _a("r2"), _a("r3")])
    assert _sent(ch) == [1]  # 2 and 3 wait; 3 supersedes 2
    ch.answer(AckResult(1, True))
    assert (await f1).generation == 1
    assert _sent(ch) == [3] and ch.reloads_merged == 1
    ch.answer(AckResult(2, True))  # stale: never sent, ignored
    assert not f2.done()
    ch.answer(AckResult(3, True))
    assert (await f2).generation == 3 and (await f3).generation == 3
    assert ch.acked_generation == 3


async def test_a_nack_reaches_every_merged_waiter_and_is_not_resent() -> None:
    ch = AgentChannel("h", 0, "sim")
    ch.move(LinkState.RESYNCING)
    ch.reload(1, "a", [])
    f2, f3 = ch.reload(2, "b", []), ch.reload(3, "c", [])
    ch.answer(AckResult(1, True))
    _sent(ch)
    ch.answer(AckResult(3, False, reason="no"))
    assert not (await f2).ok and not (await f3).ok
    assert _sent(ch) == [] and ch.acked_generation == 1


async def test_disconnect_fails_outstanding_with_disconnected() -> None:
    ch = AgentChannel("h", 0, "sim")
    ch.move(LinkState.RESYNCING)
    f1, f2 = ch.reload(1, "a", []), ch.reload(2, "b", [])
    ch.close()
    for fut in (f1, f2):
        assert isinstance(fut.exception(), Disconnected)
    late = ch.reload(3, "c", [])
    assert isinstance(late.exception(), Disconnected)
    await asyncio.sleep(0)
