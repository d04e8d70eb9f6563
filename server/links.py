"""The arbiter's end of one agent stream: reloads with backpressure, controls, acks.

At most one reload is unacknowledged per agent (as xDS control planes learned): while
one is in flight, newer reloads are merged into a single pending one (the latest full
state wins; waiters of the superseded one wait on it), sent when the ack arrives. A
late or stale answer is recognised by its generation and ignored.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hwbp.model import Assignment
from hwbp.registers import RegisterImage
from hwbp_pb import agent_pb2
from wire import convert

log = logging.getLogger("hwbp.server")
# Observers of every matched answer: (channel, answer, seconds since the reload was sent).
ANSWER_HOOKS: list[Callable[[AgentChannel, AckResult, float], None]] = []


class LinkState(Enum):
    """A stream's lifecycle; ``move`` refuses an illegal transition."""

    CONNECTING = "connecting"
    RESYNCING = "resyncing"
    LIVE = "live"
    DRAINING = "draining"
    CLOSED = "closed"


_ALLOWED = {
    LinkState.CONNECTING: {LinkState.RESYNCING, LinkState.CLOSED},
    LinkState.RESYNCING: {LinkState.LIVE, LinkState.DRAINING, LinkState.CLOSED},
    LinkState.LIVE: {LinkState.RESYNCING, LinkState.DRAINING, LinkState.CLOSED},
    LinkState.DRAINING: {LinkState.CLOSED},
    LinkState.CLOSED: set(),
}


@dataclass(frozen=True, slots=True)
class AckResult:
    """What an agent answered for a generation: ok with its image, or a refusal."""

    generation: int
    ok: bool
    image: Any = None  # the agent's RegisterImage message; converted only when read
    reason: str = ""
    errno: int = 0
    detail: str = ""
    reservation_id: str = ""


class Disconnected(Exception):
    """The agent went away before answering; it is not waited for (it resyncs)."""


@dataclass(eq=False)
class _Reload:
    generation: int
    request_id: str
    assignments: tuple[Assignment, ...]
    future: asyncio.Future[AckResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    sent_at: float = 0.0


class AgentChannel:
    """Outbound queue and answer matching for one connected CPU agent."""

    def __init__(self, host: str, cpu: int, backend: str) -> None:
        self.host = host
        self.cpu = cpu
        self.backend = backend
        self.state = LinkState.CONNECTING
        self.outbox: asyncio.Queue[agent_pb2.ArbiterMessage | None] = asyncio.Queue()
        self._in_flight: _Reload | None = None
        self._pending: _Reload | None = None
        self._controls: dict[int, asyncio.Future[agent_pb2.ControlResult]] = {}
        self._control_ids = itertools.count(1)
        self.sent_generation = 0
        self.acked_generation = 0
        self._image: RegisterImage | None = None
        self._image_msg: Any = None
        self.detail = ""
        self.reloads_merged = 0

    @property
    def image(self) -> RegisterImage | None:
        """The registers the agent last reported (converted on first read: acks are
        frequent, inventory reads are rare)."""
        if self._image is None and self._image_msg is not None:
            self._image = convert.image_from(self._image_msg)
        return self._image

    @image.setter
    def image(self, value: RegisterImage | None) -> None:
        self._image, self._image_msg = value, None

    def reported(self, msg: Any) -> None:
        """Keep the agent's RegisterImage message as it came."""
        self._image, self._image_msg = None, msg

    def move(self, new: LinkState) -> None:
        if new not in _ALLOWED[self.state]:
            raise RuntimeError(f"agent {self.host}/{self.cpu}: illegal {self.state} -> {new}")
        self.state = new

    @property
    def open(self) -> bool:
        return self.state not in (LinkState.DRAINING, LinkState.CLOSED)

    # --- reloads -----------------------------------------------------------------

    def reload(
        self, generation: int, request_id: str, assignments: Sequence[Assignment]
    ) -> asyncio.Future[AckResult]:
        """Queue the full state for ``generation``; resolves with the agent's answer."""
        item = _Reload(generation, request_id, tuple(assignments))
        if not self.open:
            item.future.set_exception(Disconnected(f"cpu {self.cpu} is offline"))
            return item.future
        if self._in_flight is None:
            self._send(item)
            return item.future
        if self._pending is not None:
            # Merge: the newer full state supersedes; the older waiters ride along.
            self.reloads_merged += 1
            _chain(self._pending.future, item.future)
        self._pending = item
        return item.future

    def _send(self, item: _Reload) -> None:
        self._in_flight = item
        item.sent_at = time.monotonic()
        self.sent_generation = item.generation
        msg = agent_pb2.ArbiterMessage(
            reload=agent_pb2.Reload(
                generation=item.generation,
                request_id=item.request_id,
                assignments=[convert.assignment_to(a) for a in item.assignments],  # type: ignore[misc]
            )
        )
        self.outbox.put_nowait(msg)

    def answer(self, result: AckResult) -> None:
        """An ACK or NACK arrived; match it to the reload in flight by generation."""
        current = self._in_flight
        if current is None or result.generation != current.generation:
            log.warning(
                "agent %s/%s: stale answer for generation %d ignored (in flight: %s)",
                self.host,
                self.cpu,
                result.generation,
                current.generation if current else "none",
            )
            return
        for hook in ANSWER_HOOKS:
            hook(self, result, time.monotonic() - current.sent_at)
        if result.ok:
            self.acked_generation = result.generation
            if isinstance(result.image, RegisterImage):
                self.image = result.image
            elif result.image is not None:
                self.reported(result.image)
            self.detail = result.detail
        self._in_flight = None
        if not current.future.done():
            current.future.set_result(result)
        if self._pending is not None:
            nxt, self._pending = self._pending, None
            self._send(nxt)

    # --- controls (context switch, memory access) -------------------------------

    def control(
        self, request_id: str, generation: int, **body: object
    ) -> asyncio.Future[agent_pb2.ControlResult]:
        future: asyncio.Future[agent_pb2.ControlResult] = asyncio.get_running_loop().create_future()
        if not self.open:
            future.set_exception(Disconnected(f"cpu {self.cpu} is offline"))
            return future
        cid = next(self._control_ids)
        self._controls[cid] = future
        ctl = agent_pb2.Control(control_id=cid, request_id=request_id, generation=generation)
        for field_name, value in body.items():
            getattr(ctl, field_name).CopyFrom(value)
        msg = agent_pb2.ArbiterMessage(control=ctl)
        self.outbox.put_nowait(msg)
        return future

    def control_result(self, result: agent_pb2.ControlResult) -> None:
        future = self._controls.pop(result.control_id, None)
        if future is None or future.done():
            return
        if result.ok and result.HasField("image"):
            self.reported(result.image)
        future.set_result(result)

    # --- teardown ----------------------------------------------------------------

    def close(self) -> None:
        """The stream ended: fail everything outstanding with Disconnected."""
        if self.state is not LinkState.CLOSED:
            self.state = LinkState.CLOSED
        err = Disconnected(f"agent for cpu {self.cpu} on {self.host} disconnected")
        for item in (self._in_flight, self._pending):
            if item is not None and not item.future.done():
                item.future.set_exception(err)
        self._in_flight = self._pending = None
        for fut in self._controls.values():
            if not fut.done():
                fut.set_exception(err)
        self._controls.clear()
        self.outbox.put_nowait(None)


def _chain(older: asyncio.Future[AckResult], newer: asyncio.Future[AckResult]) -> None:
    """Resolve ``older`` with whatever ``newer`` resolves to."""

    def copy(f: asyncio.Future[AckResult]) -> None:
        if older.done():
            return
        if f.cancelled():
            older.cancel()
        elif f.exception() is not None:
            older.set_exception(f.exception())  # type: ignore[arg-type]
        else:
            older.set_result(f.result())

    newer.add_done_callback(copy)
