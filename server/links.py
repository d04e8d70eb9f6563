"""The arbiter's end of one agent stream: an outbox, control calls, and what the agent said.

It is only transport. Which generation goes out when, who is waited for, and when an
agent is fenced is the pipeline's decision (``hwbp.pipeline``); the host shell tells a
channel to send or to close. Everything an agent can make us hold is bounded: the
outbox (a stream the agent does not read is closed, not buffered without end), the
control calls in flight, and the strings it reports (``wire.convert``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hwbp.model import Assignment
from hwbp.registers import RegisterImage
from hwbp.v1 import agent_pb2, types_pb2
from hwbp.wire import convert

log = logging.getLogger("hwbp.server")
# Observers of every answer to the reload in flight: (channel, answer, seconds since sent).
ANSWER_HOOKS: list[Callable[[AgentChannel, AckResult, float], None]] = []
OUTBOX_LIMIT = 256  # messages queued for an agent that is not reading its stream
CONTROLS_LIMIT = 64  # control calls (context switch, access) unanswered at once
CLOSE_GRACE = 1.0  # seconds a closed stream's writer gets before its handler is cancelled
_links = itertools.count(1)


@dataclass(frozen=True, slots=True)
class AckResult:
    """What an agent answered for a generation: ok with its image, or a refusal."""

    generation: int
    ok: bool
    # The agent's RegisterImage message, converted only when read (or already converted).
    image: types_pb2.RegisterImage | RegisterImage | None = None
    reason: str = ""
    errno: int = 0
    detail: str = ""
    reservation_id: str = ""
    needs_full: bool = False  # a delta refused for its base: send the full state


class Disconnected(Exception):
    """The agent went away before answering; it is not waited for (it resyncs)."""


class StreamStuck(Exception):
    """The agent does not read its stream: the outbox or its control calls are full."""


class AgentChannel:
    """Outbound queue and answer bookkeeping for one connected CPU agent."""

    def __init__(self, host: str, cpu: int, backend: str, peer: str = "") -> None:
        self.link = next(_links)  # names this connection to the pipeline
        self.host = host
        self.cpu = cpu
        self.backend = backend
        self.peer = peer
        self.deltas = False  # its hello said it applies delta reloads
        # None ends the writer; the limit is checked by _put so close() always gets in.
        self.outbox: asyncio.Queue[agent_pb2.ArbiterMessage | None] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.close_reason = ""  # non-empty: we closed it (fenced), and why
        self.handler: asyncio.Task[object] | None = None  # the RPC's task, to end it if stuck
        self._controls: dict[int, asyncio.Future[agent_pb2.ControlResult]] = {}
        self._control_ids = itertools.count(1)
        self.sent_generation = 0
        self.acked_generation = 0
        self._sent_at = 0.0
        self._image: RegisterImage | None = None
        self._image_msg: types_pb2.RegisterImage | None = None
        self.detail = ""

    @property
    def open(self) -> bool:
        return not self.closed.is_set()

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

    def reported(self, msg: types_pb2.RegisterImage) -> None:
        """Keep the agent's RegisterImage message as it came."""
        self._image, self._image_msg = None, msg

    # --- reloads -----------------------------------------------------------------

    def send_reload(
        self,
        generation: int,
        request_id: str,
        assignments: Sequence[Assignment],
        base: int | None = None,
        removed: Sequence[str] = (),
    ) -> None:
        """Queue the state for ``generation``: full, or a delta on ``base`` (assignments
        added or changed, ids removed); raise StreamStuck if it cannot be queued."""
        msg = agent_pb2.ArbiterMessage()
        reload = msg.reload
        reload.generation = generation
        reload.request_id = request_id
        convert.assignments_into(reload.assignments, assignments)
        if base is not None:
            reload.base_generation = base
            reload.removed.extend(removed)
        self._put(msg)
        self.sent_generation = generation
        self._sent_at = time.monotonic()

    def answered(self, result: AckResult) -> None:
        """Record what the agent said (the pipeline decides what it means)."""
        if result.generation == self.sent_generation:
            for hook in ANSWER_HOOKS:
                hook(self, result, time.monotonic() - self._sent_at)
        if result.ok:
            self.acked_generation = max(self.acked_generation, result.generation)
            if isinstance(result.image, RegisterImage):
                self.image = result.image
            elif result.image is not None:
                self.reported(result.image)
            self.detail = result.detail

    # --- controls (context switch, memory access) -------------------------------

    def control(
        self, request_id: str, generation: int, **body: object
    ) -> tuple[int, asyncio.Future[agent_pb2.ControlResult]]:
        """Send a control; returns its id (to ``forget`` it on timeout) and its answer."""
        future: asyncio.Future[agent_pb2.ControlResult] = asyncio.get_running_loop().create_future()
        if not self.open:
            future.set_exception(Disconnected(f"cpu {self.cpu} is offline"))
            return 0, future
        if len(self._controls) >= CONTROLS_LIMIT:
            raise StreamStuck(
                f"cpu {self.cpu} of {self.host} has {CONTROLS_LIMIT} control calls unanswered"
            )
        cid = next(self._control_ids)
        ctl = agent_pb2.Control(control_id=cid, request_id=request_id, generation=generation)
        for field_name, value in body.items():
            getattr(ctl, field_name).CopyFrom(value)
        self._put(agent_pb2.ArbiterMessage(control=ctl))
        self._controls[cid] = future
        return cid, future

    def forget(self, control_id: int) -> None:
        """A control timed out: its answer, if it ever comes, is dropped."""
        self._controls.pop(control_id, None)

    def control_result(self, result: agent_pb2.ControlResult) -> None:
        future = self._controls.pop(result.control_id, None)
        if future is None or future.done():
            return
        if result.ok and result.HasField("image"):
            self.reported(result.image)
        future.set_result(result)

    # --- teardown ----------------------------------------------------------------

    def close(self, reason: str = "") -> None:
        """End the stream (``reason``: why we end it); fail outstanding controls."""
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        err = Disconnected(f"agent for cpu {self.cpu} on {self.host} disconnected")
        for fut in self._controls.values():
            if not fut.done():
                fut.set_exception(err)
        self._controls.clear()
        self.outbox.put_nowait(None)
        handler = self.handler
        if handler is not None and not handler.done():
            # The writer may be blocked sending to an agent that does not read.
            asyncio.get_running_loop().call_later(CLOSE_GRACE, _cancel, handler)

    def _put(self, msg: agent_pb2.ArbiterMessage) -> None:
        if self.outbox.qsize() >= OUTBOX_LIMIT:
            raise StreamStuck(
                f"cpu {self.cpu} of {self.host} does not read its stream "
                f"({OUTBOX_LIMIT} messages queued)"
            )
        self.outbox.put_nowait(msg)


def _cancel(task: asyncio.Task[object]) -> None:
    if not task.done():
        task.cancel()
