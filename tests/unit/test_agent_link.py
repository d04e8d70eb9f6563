"""The agent's end of its stream: what it sends is bounded, and how it classifies and
survives failures (broken streams, refusals, its own bugs) without ending the process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from hwbp.agent.failures import Failure, LinkRefused, StreamLost, classify, describe
from hwbp.agent.link import AgentLink, AgentState
from hwbp.agent.sim import SimBackend
from hwbp.model import Assignment, BpType, Breakpoint
from hwbp.registers import HitRecord, RegisterImage
from hwbp.v1 import agent_pb2
from hwbp.wire import convert

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


# --- failures: broken streams, refusals, bugs -----------------------------------------


def rpc_error(code: grpc.StatusCode, details: str, reason: str = "", **meta: str) -> Exception:
    """The exception grpc.aio raises for a failed stream (with the arbiter's ErrorInfo
    when ``reason`` is given, as the arbiter always attaches one)."""
    trailers = grpc.aio.Metadata()
    if reason:
        info = error_details_pb2.ErrorInfo(reason=reason, domain="hwbp.dev", metadata=meta)
        box = any_pb2.Any()
        box.Pack(info)
        status = status_pb2.Status(code=code.value[0], message=details, details=[box])
        trailers.add("grpc-status-details-bin", status.SerializeToString())
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, details)


EXECUTE_BATCH = grpc.StatusCode.INTERNAL, "Failed execute_batch"
HELD = dict(
    reason="CPU_HELD", holder="agent on 10.0.0.7 (pid 4242)", host="h1", cpu="0"
)  # what a refused hello names: the live agent that holds this host+CPU


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (rpc_error(*EXECUTE_BATCH), Failure.BROKEN),
        (rpc_error(grpc.StatusCode.UNKNOWN, "Stream removed"), Failure.BROKEN),
        (rpc_error(grpc.StatusCode.UNAVAILABLE, "Socket closed"), Failure.BROKEN),
        (rpc_error(grpc.StatusCode.CANCELLED, "Cancelled"), Failure.BROKEN),
        (rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline"), Failure.BROKEN),
        (StreamLost("closed"), Failure.BROKEN),
        (rpc_error(grpc.StatusCode.ALREADY_EXISTS, "held", **HELD), Failure.REFUSED),
        (rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "held", **HELD), Failure.REFUSED),
        (rpc_error(grpc.StatusCode.INTERNAL, "bug", reason="INTERNAL"), Failure.REFUSED),
        (rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many"), Failure.REFUSED),
        (
            rpc_error(grpc.StatusCode.PERMISSION_DENIED, "no", reason="PERMISSION_DENIED"),
            Failure.FATAL,
        ),
        (rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad hello"), Failure.FATAL),
        (rpc_error(grpc.StatusCode.UNAUTHENTICATED, "who"), Failure.FATAL),
        (RuntimeError("illegal move"), Failure.UNEXPECTED),
        (KeyError("x"), Failure.UNEXPECTED),
        (asyncio.CancelledError(), Failure.STOPPED),
        (KeyboardInterrupt(), Failure.STOPPED),
    ],
)
def test_failures_are_classified(exc: BaseException, kind: Failure) -> None:
    assert classify(exc) is kind


def test_a_refusal_is_described_with_its_reason_and_holder() -> None:
    text = describe(rpc_error(grpc.StatusCode.ALREADY_EXISTS, "cpu 0 of h1 is held", **HELD))
    assert text.startswith("ALREADY_EXISTS: cpu 0 of h1 is held [CPU_HELD: ")
    assert "holder=agent on 10.0.0.7 (pid 4242)" in text


class Scripted(AgentLink):
    """A link whose sessions fail as scripted (a real one needs an arbiter): each entry
    is raised by one session; when the script runs out the link is told to stop."""

    def __init__(self, channel: grpc.aio.Channel, script: list[BaseException]) -> None:
        super().__init__(channel, "h1", 0, 1, SimBackend(0))
        self.script = script
        self.sessions = 0
        self.waits: list[float] = []
        self.sleep = self._no_sleep  # record the backoff instead of waiting it out

    async def _no_sleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    async def _session(self) -> None:
        self.sessions += 1
        if not self.script:
            self.stop()
            return
        raise self.script.pop(0)


async def test_a_broken_stream_or_a_bug_reconnects_instead_of_ending_the_agent(
    channel: grpc.aio.Channel,
) -> None:
    """grpc.aio's INTERNAL "Failed execute_batch" on a stream the arbiter ended once made
    a whole --fleet agent exit."""
    link = Scripted(
        channel,
        [rpc_error(*EXECUTE_BATCH), RuntimeError("bug"), rpc_error(*EXECUTE_BATCH)],
    )
    await asyncio.wait_for(link.run(), 10)
    assert link.sessions == 4 and link.state is AgentState.DRAINING
    assert len(link.waits) == 3
    assert link.waits[0] <= 2.0 and link.waits[1] >= 0.5  # broken: fast; bug: slow


async def test_a_held_cpu_is_retried_with_backoff_and_said_clearly(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    held = [rpc_error(grpc.StatusCode.ALREADY_EXISTS, "cpu 0 of h1 is held", **HELD)] * 6
    link = Scripted(channel, list(held))
    with caplog.at_level(logging.DEBUG, logger="hwbp.agent"):
        await asyncio.wait_for(link.run(), 10)
    assert link.sessions == 7
    assert all(0.5 <= w <= 10.5 for w in link.waits)  # never a spin
    assert link.waits[-1] > link.waits[0]  # and backing off
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 6  # every attempt is a line, but the same refusal is said once
    said = [r for r in caplog.records if "refused" in r.getMessage() and r.levelno > logging.DEBUG]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert "h1/0" in lines[0] and "pid 4242" in lines[0] and "retrying in" in lines[0]


async def test_a_refusal_for_good_ends_only_this_link_with_a_clear_error(
    channel: grpc.aio.Channel,
) -> None:
    denied = rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        "an agent may only speak for the host its certificate names",
        reason="PERMISSION_DENIED",
    )
    link = Scripted(channel, [rpc_error(*EXECUTE_BATCH), denied])
    with pytest.raises(LinkRefused, match="PERMISSION_DENIED: an agent may only speak"):
        await asyncio.wait_for(link.run(), 10)
    assert link.sessions == 2


class FlakyPerf(SimBackend):
    """A backend that reports hits on its own (as perf does), and whose first read fails."""

    polls = True

    def __init__(self, fd: int) -> None:
        super().__init__(0)
        self.fd, self.reads = fd, 0

    def fds(self) -> list[int]:
        return [self.fd]

    def poll_hits(self) -> list[Any]:
        self.reads += 1
        if self.reads == 1:
            raise OSError("ring buffer unreadable")
        if self.reads == 2:
            bp = Breakpoint(addr=0x10, length=1, type=BpType.WRITE)
            return [HitRecord("r1", 0, bp, None, dr6=1, access_addr=0x10)]
        return []


async def test_the_backend_reader_survives_a_failed_read(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    r, w = os.pipe()
    os.write(w, b"x")  # always readable: every round runs at once
    link = AgentLink(channel, "h1", 0, 1, FlakyPerf(r))
    reader = asyncio.create_task(link._watch_backend())
    try:
        with caplog.at_level(logging.ERROR, logger="hwbp.agent"):
            msg = await asyncio.wait_for(link._outbox.get(), 10)
        assert msg is not None and msg.hits.hits[0].reservation_id == "r1"
        assert not reader.done()
        assert any("reading the backend failed" in r.getMessage() for r in caplog.records)
    finally:
        reader.cancel()
        os.close(r)
        os.close(w)


# --- start-up: a stream that never answers -----------------------------------------------


class SilentCall:
    """A stream the transport opened and that then never says anything more (after
    ``first``): what a fresh agent met about twice in 2,000 starts under heavy load."""

    def __init__(self, first: list[agent_pb2.ArbiterMessage]) -> None:
        self.first = list(first)
        self.cancelled = False
        self._never = asyncio.Event()

    def __aiter__(self) -> SilentCall:
        return self

    async def __anext__(self) -> agent_pb2.ArbiterMessage:
        if self.first:
            return self.first.pop(0)
        await self._never.wait()  # until cancelled
        raise StopAsyncIteration

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class SilentStub:
    def __init__(self, *first: agent_pb2.ArbiterMessage) -> None:
        self.first = list(first)
        self.calls: list[SilentCall] = []

    def Connect(self, requests: Any) -> SilentCall:
        call = SilentCall(self.first)
        self.calls.append(call)
        return call


WELCOME = agent_pb2.ArbiterMessage(welcome=agent_pb2.Welcome(generation=1))
RESYNC = agent_pb2.ArbiterMessage(reload=agent_pb2.Reload(generation=1))


@pytest.mark.parametrize(
    ("first", "stage"), [((), "welcome"), ((WELCOME,), "resync")], ids=["welcome", "resync"]
)
async def test_a_start_that_hears_nothing_gives_up_in_time_and_says_so(
    channel: grpc.aio.Channel,
    caplog: pytest.LogCaptureFixture,
    first: tuple[agent_pb2.ArbiterMessage, ...],
    stage: str,
) -> None:
    """A fresh agent waited for its welcome (or its resync) with no deadline at all: on a
    stream the arbiter never answered it stayed idle forever, with an empty log. Now each
    wait before the CPU is live is bounded: it says so and starts again."""
    link = AgentLink(channel, "h1", 0, 1, SimBackend(0), start_timeout=0.3)
    link.stub = SilentStub(*first)  # type: ignore[assignment]
    with (
        caplog.at_level(logging.WARNING, logger="hwbp.agent"),
        pytest.raises(StreamLost, match=stage),
    ):
        await asyncio.wait_for(link._session(), 10)
    assert link.stub.calls[0].cancelled  # type: ignore[attr-defined]
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and "h1/0" in lines[0] and stage in lines[0] and "0.3" in lines[0]


async def test_a_start_that_hears_nothing_is_retried(channel: grpc.aio.Channel) -> None:
    link = AgentLink(channel, "h1", 0, 1, SimBackend(0), start_timeout=0.1)
    link.stub = SilentStub()  # type: ignore[assignment]
    link.sleep = lambda seconds: asyncio.sleep(0)  # no backoff in the test
    runner = asyncio.create_task(link.run())
    try:
        for _ in range(100):
            await asyncio.sleep(0.05)
            if len(link.stub.calls) >= 3:  # type: ignore[attr-defined]
                break
        assert len(link.stub.calls) >= 3  # type: ignore[attr-defined]
    finally:
        link.stop()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def test_a_live_stream_may_stay_quiet(channel: grpc.aio.Channel) -> None:
    """The deadline covers the start only: a live CPU waits for reloads for hours."""
    link = AgentLink(channel, "h1", 0, 1, SimBackend(0), start_timeout=0.1)
    link.stub = SilentStub(WELCOME, RESYNC)  # type: ignore[assignment]
    session = asyncio.create_task(link._session())
    await asyncio.sleep(0.5)
    assert link.state is AgentState.LIVE and not session.done()
    session.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await session


# --- delta reloads ----------------------------------------------------------------------


def _reload(
    generation: int, *assignments: Assignment, base: int | None = None, removed: Sequence[str] = ()
) -> agent_pb2.Reload:
    msg = agent_pb2.Reload(
        generation=generation, assignments=[convert.assignment_to(a) for a in assignments]
    )
    if base is not None:
        msg.base_generation = base
        msg.removed.extend(removed)
    return msg


def _wp(rid: str, addr: int, task: int | None = None) -> Assignment:
    return Assignment(rid, task, Breakpoint(addr, 8, BpType.WRITE))


class WholeSetBackend(SimBackend):
    """A backend that only takes whole sets, as the perf backend (it diffs them)."""

    apply_delta = None  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__(0)
        self.sets: list[set[str]] = []

    def apply(self, assignments: Sequence[Assignment]) -> RegisterImage:
        self.sets.append({a.reservation_id for a in assignments})
        return super().apply(assignments)


async def test_a_delta_on_the_held_base_is_applied_and_acknowledged(
    channel: grpc.aio.Channel,
) -> None:
    backend = SimBackend(0)
    link = AgentLink(channel, "h1", 0, 1, backend)
    await link._reload(_reload(3, _wp("r1", 0x1000), _wp("r2", 0x2000), _wp("r4", 0x4000, 7)))
    await link._reload(_reload(4, _wp("r3", 0x3000), base=3, removed=["r1", "never-held"]))
    acks = sent(link)
    assert [m.ack.generation for m in acks] == [3, 4]
    assert list(acks[1].ack.image.slot_reservation) == ["r3", "r2", "", ""]  # r2 stays put
    assert {a.reservation_id for a in backend.installed()} == {"r2", "r3", "r4"}
    assert link.applied_generation == 4


async def test_a_delta_on_another_base_is_refused_as_needing_full_state(
    channel: grpc.aio.Channel,
) -> None:
    backend = SimBackend(0)
    link = AgentLink(channel, "h1", 0, 1, backend)
    await link._reload(_reload(3, _wp("r1", 0x1000)))
    sent(link)
    await link._reload(_reload(6, _wp("r2", 0x2000), base=5))
    (msg,) = sent(link)
    assert msg.nack.generation == 6 and msg.nack.needs_full and "base 5" in msg.nack.reason
    assert {a.reservation_id for a in backend.installed()} == {"r1"}
    assert link.applied_generation == 3


async def test_a_refused_delta_changes_nothing(channel: grpc.aio.Channel) -> None:
    backend = SimBackend(0, refuse_addr=0x9000)
    link = AgentLink(channel, "h1", 0, 1, backend)
    await link._reload(_reload(3, _wp("r1", 0x1000)))
    before = backend.image()
    await link._reload(_reload(4, _wp("r2", 0x2000), _wp("r3", 0x9000), base=3, removed=["r1"]))
    await link._reload(_reload(4, _wp("r2", 0x2000), _wp("r2", 0x2008), base=3))
    nacks = sent(link)[1:]
    assert [(m.nack.generation, m.nack.needs_full) for m in nacks] == [(4, False), (4, False)]
    assert backend.image() == before and link.applied_generation == 3
    await link._reload(_reload(5, _wp("r2", 0x2000), base=3))  # still on its base
    assert sent(link)[0].ack.generation == 5
    assert {a.reservation_id for a in backend.installed()} == {"r1", "r2"}


async def test_a_backend_without_deltas_is_given_the_whole_resulting_set(
    channel: grpc.aio.Channel,
) -> None:
    backend = WholeSetBackend()
    link = AgentLink(channel, "h1", 0, 1, backend)
    await link._reload(_reload(1, _wp("r1", 0x1000), _wp("r2", 0x2000)))
    await link._reload(_reload(2, _wp("r3", 0x3000), base=1, removed=["r1"]))
    assert backend.sets == [{"r1", "r2"}, {"r2", "r3"}]
    assert [m.ack.generation for m in sent(link)] == [1, 2]


async def test_a_link_waits_for_its_channel_instead_of_spinning(
    channel: grpc.aio.Channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the arbiter restarts, a fleet's thousand links once retried in a loop and
    starved it of CPU: each now waits for the channel (which retries on its own) and
    only tries a call, to report why it cannot connect, once in a while."""
    from hwbp.agent import link as link_mod

    monkeypatch.setattr(link_mod, "READY_WAIT", 0.3)
    link = AgentLink(channel, "h1", 0, 1, SimBackend(0))
    waits: list[float] = []

    async def no_backoff(seconds: float) -> None:  # only the readiness wait holds it back
        waits.append(seconds)

    link.sleep = no_backoff
    asyncio.get_running_loop().call_later(1.0, link.stop)
    await asyncio.wait_for(link.run(), 10)
    assert 2 <= link.connects <= 5 and len(waits) == link.connects
