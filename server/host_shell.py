"""The asyncio shell of one host's change pipeline.

Every decision (what is admitted, who is waited for, when a change commits or is rolled
back, when an agent is fenced) is made by the pure ``hwbp.pipeline.HostPipeline``; this
class only turns calls, agent answers and timers into its events and carries out the
instructions it returns: send on a stream, write to the store, answer a caller, close a
stream, publish an event. ``Host`` (``server/hosts.py``) builds its typed operations and
committed reads on it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar, cast

from hwbp.arch import ArchProfile
from hwbp.errors import AgentRefused, HwbpError, LedgerWriteFailed, PipelineFault
from hwbp.keys import KeyTable
from hwbp.ledger import HostLedger
from hwbp.pipeline import (
    AgentGone,
    Cancelled,
    Change,
    Committed,
    Event,
    Fail,
    Fault,
    Fence,
    HostPipeline,
    Instruction,
    Keys,
    Outcome,
    Persist,
    Persisted,
    PersistFailed,
    Resolve,
    ResyncRefused,
    RolledBack,
    SendReload,
    Submitted,
    Tick,
)
from hwbp.server.attachments import Attachment
from hwbp.server.events import EventBus
from hwbp.server.links import AgentChannel, StreamStuck
from hwbp.v1 import types_pb2

log = logging.getLogger("hwbp.server")
T = TypeVar("T")

# Makes a batch durable: (host, the Persist instruction) -> awaitable that raises on failure.
Writer = Callable[["HostShell", Persist], Awaitable[None]]


class HostShell:
    """A host's pipeline, its agents' streams, and the state written with each batch."""

    def __init__(
        self,
        name: str,
        ncpus: int,
        profile: ArchProfile,
        *,
        ack_timeout: float,
        bus: EventBus,
        keys: Keys | None = None,
        writer: Writer | None = None,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.name = name
        self.ncpus = ncpus
        self.profile = profile
        self.ledger = HostLedger(name, ncpus, profile)
        # Not ``keys or ...``: an empty KeyTable is falsy, and the fleet's must be shared.
        table = keys if keys is not None else KeyTable()
        self.pipeline = HostPipeline(self.ledger, table, ack_timeout=ack_timeout)
        self.channels: list[AgentChannel | None] = [None] * ncpus
        self.backends: list[str] = [""] * ncpus
        self.refusals: dict[int, str] = {}  # cpu -> why its agent's last hello was refused
        # Traced tasks (``server/tracing.py``), written with the batch that changed them.
        self.attachments: dict[int, Attachment] = {}
        self.dirty_tasks: set[int] = set()  # ptrace attachments to write at the next commit
        # Change-log events a batch's changes drafted, by the generation that carries them:
        # numbered and written with that batch, published once it is durable.
        self._drafts: list[tuple[int, types_pb2.Event]] = []
        self.paranoid = False
        self.ack_timeout = ack_timeout
        self.bus = bus
        self.writer = writer
        # Reservation ids (the fleet's counter; a host of its own counts r1, r2, ...).
        self.new_id = new_id or _counter()
        self.nacks = 0
        self.timeouts = 0  # agents fenced for a missed ack deadline
        self._futures: dict[int, asyncio.Future[Outcome[object]]] = {}
        self._requests: dict[int, str] = {}  # waiter -> request id, to name it on a fault
        self._waiters = itertools.count(1)
        self._events: deque[Event] = deque()
        self._feeding = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def generation(self) -> int:
        return self.pipeline.generation

    @generation.setter
    def generation(self, value: int) -> None:
        """Restored from the ledger at start-up, before any agent connects."""
        self.pipeline.generation = value

    # --- changes -----------------------------------------------------------------

    async def change(
        self,
        request_id: str,
        apply: Callable[[], tuple[T, Iterable[int]]],
        undo: Callable[[], None] | None = None,
    ) -> T:
        """Run ``apply`` in the pipeline; return its result once it committed."""
        return (await self.commit(request_id, apply, undo)).result

    async def commit(
        self,
        request_id: str,
        apply: Callable[[], tuple[T, Iterable[int]]],
        undo: Callable[[], None] | None = None,
        *,
        key: str = "",
        fingerprint: str = "",
    ) -> Outcome[T]:
        """Submit a change and wait for its outcome: ``apply``'s result, its generation,
        the CPUs where it is applied and those where it is pending.

        ``apply`` changes the ledger (and other host state) and returns (result, affected
        CPUs); ``undo`` reverts what it did outside the ledger (the ledger has its own
        journal). A caller that is cancelled stops waiting, but its change still runs to
        the end: a retry with the same ``key`` joins it."""
        loop = asyncio.get_running_loop()
        waiter = next(self._waiters)
        future: asyncio.Future[Outcome[object]] = loop.create_future()
        self._futures[waiter] = future
        self._requests[waiter] = request_id
        self._feed(
            Submitted(waiter, Change(request_id, apply, undo, key, fingerprint), loop.time())
        )
        try:
            # Not shielded: only this call awaits the future, and the pipeline answers a
            # waiter only if its future is still pending (one hop fewer per call).
            outcome = await future
        except asyncio.CancelledError:
            if self._futures.pop(waiter, None) is not None:
                self._requests.pop(waiter, None)
                self._feed(Cancelled(waiter, loop.time()))
            raise
        # The pipeline holds changes of every kind; this one's result is what ``apply``
        # returned (a retry joins only a change of the same request, so the same kind).
        return cast("Outcome[T]", outcome)

    @property
    def settled(self) -> bool:
        """Nothing queued, in flight or being written."""
        return self.pipeline.idle and not self._writes

    def draft(self, event: types_pb2.Event) -> None:
        """From a change's ``apply``: ``event`` describes it, and is written with the
        batch that carries it (the pipeline admits changes as generation + 1)."""
        self._drafts.append((self.generation + 1, event))

    def take_drafts(self, generation: int) -> list[types_pb2.Event]:
        """The events drafted for the batch of ``generation``, which is being written."""
        mine = [ev for g, ev in self._drafts if g == generation]
        self._drafts = [(g, ev) for g, ev in self._drafts if g > generation]
        for ev in mine:
            ev.generation = generation
            if ev.HasField("reservation"):
                ev.reservation.generation = generation
        return mine

    async def drain(self) -> None:
        """Wait until nothing is queued, in flight or being written."""
        await self._idle.wait()

    def abandon(self, err: HwbpError) -> None:
        """This arbiter stopped leading: answer every waiting caller ``err``, stop the
        ack timer and close every agent stream. The host is then dropped; nothing here
        is written (the next leader reloads the ledger from the store)."""
        for future in self._futures.values():
            if not future.done():
                future.set_exception(err)
        self._futures.clear()
        self._requests.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        for channel in self.channels:
            if channel is not None:
                channel.close(err.message)

    # --- agents (``Host`` connects them) -------------------------------------------

    def fence(self, channel: AgentChannel, reason: str) -> None:
        """Close a stream that cannot be used (it does not read); its CPU shows fenced."""
        if not self.current(channel):
            channel.close(reason)
            return
        self._feed(AgentGone(channel.cpu, channel.link, reason, _now(), fenced=True))
        self._fence(channel, reason)

    def current(self, channel: AgentChannel) -> bool:
        """Whether ``channel`` is its CPU's stream (the host may have shrunk since)."""
        return channel.cpu < len(self.channels) and self.channels[channel.cpu] is channel

    def publish(
        self,
        kind: types_pb2.EventKind.ValueType,
        request_id: str,
        *,
        reason: str = "",
        cpu: int | None = None,
        generation: int | None = None,
    ) -> None:
        """Tell watchers what happened to this host (a reload, a NACK, a lease expiry)."""
        if not self.bus.wants(kind, host=self.name):
            return
        self.bus.publish(
            types_pb2.Event(
                kind=kind,
                host=self.name,
                cpu=cpu,
                generation=self.generation if generation is None else generation,
                request_id=request_id,
                reason=reason,
                seq=self.bus.change_seq,
            )
        )

    # --- the shell ---------------------------------------------------------------

    def _feed(self, event: Event) -> None:
        """Hand an event to the pipeline and carry out what it says (re-entrant safe)."""
        self._events.append(event)
        if self._feeding:
            return
        self._feeding = True
        try:
            while self._events:
                ev = self._events.popleft()
                try:
                    instructions = self.pipeline.handle(ev)
                except Exception as err:  # a bug in the pipeline: answer everyone
                    log.critical("host %s: pipeline failed on %r", self.name, ev, exc_info=True)
                    self._fail_everyone(err)
                    continue
                for ins in instructions:
                    try:
                        self._do(ins)
                    except Exception:
                        log.exception("host %s: carrying out %r failed", self.name, ins)
        finally:
            self._feeding = False
        self._arm_timer()
        if self.pipeline.idle and not self._writes:
            self._idle.set()
        else:
            self._idle.clear()

    def _do(self, ins: Instruction) -> None:
        if isinstance(ins, SendReload):
            channel = self.channels[ins.cpu]
            if channel is None or channel.link != ins.link or not channel.open:
                return  # it is gone; the pipeline hears AgentGone from its stream
            try:
                channel.send_reload(
                    ins.generation, ins.request_id, ins.assignments, ins.base, ins.removed
                )
            except StreamStuck as err:
                self.fence(channel, str(err))
        elif isinstance(ins, Resolve):
            self._answer(ins.waiter, ins.outcome)
        elif isinstance(ins, Fail):
            self._answer(ins.waiter, ins.error)
        elif isinstance(ins, Persist):
            task = asyncio.get_running_loop().create_task(self._write(ins))
            self._writes.add(task)
        elif isinstance(ins, Fence):
            channel = self.channels[ins.cpu]
            if channel is not None and channel.link == ins.link:
                self.timeouts += 1
                self._fence(channel, ins.reason)
        elif isinstance(ins, Committed):
            if self.paranoid:
                self._validate_or_die()
            self.publish(types_pb2.EVENT_KIND_RELOAD, ins.request_ids, generation=ins.generation)
        elif isinstance(ins, RolledBack):
            self._drafts = [(g, ev) for g, ev in self._drafts if g > ins.generation]
            if isinstance(ins.error, AgentRefused):
                self.nacks += 1
            log.warning(
                "host %s: generation %d rolled back (%s); requests %s",
                self.name,
                ins.generation,
                ins.error.reason,
                ins.request_ids,
            )
            self.publish(
                types_pb2.EVENT_KIND_NACK,
                ins.request_ids,
                reason=ins.error.message,
                generation=ins.generation,
            )
        elif isinstance(ins, ResyncRefused):
            log.error(
                "host %s cpu %d: refused generation %d it was resynced to: %s",
                self.name,
                ins.cpu,
                ins.generation,
                ins.reason,
            )
            channel = self.channels[ins.cpu]
            if channel is not None:
                channel.detail = f"resync refused: {ins.reason}"
            self.publish(
                types_pb2.EVENT_KIND_RESYNC_REFUSED, "resync", reason=ins.reason, cpu=ins.cpu
            )
        elif isinstance(ins, Fault):
            log.error(
                "host %s: request %s raised inside the pipeline: %r",
                self.name,
                ins.request_id,
                ins.error,
                exc_info=ins.error,
            )

    def _fence(self, channel: AgentChannel, reason: str) -> None:
        log.warning("host %s cpu %d: agent fenced: %s", self.name, channel.cpu, reason)
        channel.close(reason)
        self.publish(types_pb2.EVENT_KIND_AGENT_FENCED, "fence", reason=reason, cpu=channel.cpu)

    async def _write(self, ins: Persist) -> None:
        """Make a batch durable, then tell the pipeline; never dies with the batch waiting."""
        try:
            try:
                if self.writer is not None:
                    await self.writer(self, ins)
            except Exception as err:
                log.error("host %s: ledger write failed: %s", self.name, err)
                failure = err if isinstance(err, LedgerWriteFailed) else None
                self._feed(
                    PersistFailed(
                        ins.generation,
                        failure
                        or LedgerWriteFailed(
                            f"host {self.name}: the change could not be made durable "
                            f"({err}); it was rolled back",
                            host=self.name,
                        ),
                        _now(),
                    )
                )
            else:
                self._feed(Persisted(ins.generation, _now()))
        finally:
            self._writes.discard(asyncio.current_task())
            if self.pipeline.idle and not self._writes:
                self._idle.set()

    def _answer(self, waiter: int, answer: Outcome[object] | HwbpError) -> None:
        self._requests.pop(waiter, None)
        future = self._futures.pop(waiter, None)
        if future is None or future.done():
            return
        if isinstance(answer, Outcome):
            future.set_result(answer)
        else:
            future.set_exception(answer)

    def _fail_everyone(self, err: Exception) -> None:
        for waiter, future in list(self._futures.items()):
            request = self._requests.get(waiter, "?")
            if not future.done():
                future.set_exception(
                    PipelineFault(
                        f"request {request}: the pipeline of host {self.name} failed "
                        f"({type(err).__name__}: {err})",
                        host=self.name,
                        request_id=request,
                    )
                )
        self._futures.clear()
        self._requests.clear()

    def _arm_timer(self) -> None:
        deadline = self.pipeline.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline + 0.001, self._tick)

    def _tick(self) -> None:
        self._timer = self._timer_at = None
        self._feed(Tick(_now()))

    def _validate_or_die(self) -> None:
        """Drills and fuzzing: any drift of the ledger ends the process loudly."""
        try:
            self.pipeline.validate_state()
        except HwbpError as err:
            log.critical("host %s: invariant broken: %s", self.name, err)
            os._exit(70)


def _now() -> float:
    return asyncio.get_running_loop().time()


def _counter() -> Callable[[], str]:
    ids = itertools.count(1)
    return lambda: f"r{next(ids)}"
