"""One host's state and its change pipeline: admit in the core, broadcast, commit or roll back.

Changes to a host are serialised through one worker, so each agent has at most one
reload in flight from us; changes that queue up while a broadcast is out are admitted
one by one and sent together as the next generation (merged). If that merged reload
is refused, every change in it is rolled back and each is retried alone, so only the
change the agent actually refused fails; a refused generation is never resent.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hwbp.arch import ArchProfile
from hwbp.errors import (
    AckTimeout,
    AgentRefused,
    HwbpError,
    KernelNoSpace,
    KernelRefused,
    LedgerWriteFailed,
)
from hwbp.ledger import HostLedger
from hwbp.ptrace import PtraceState
from hwbp.registers import RegisterFile, RegisterImage
from hwbp_pb import types_pb2
from server.events import EventBus
from server.links import AckResult, AgentChannel, Disconnected, LinkState

log = logging.getLogger("hwbp.server")
ENOSPC = 28

# apply() mutates the ledger (and other host state) and returns (result, affected CPUs);
# undo() reverts what apply() did outside the ledger (the ledger has its own journal).
Apply = Callable[[], tuple[Any, Iterable[int]]]
Undo = Callable[[], None]


@dataclass(eq=False)
class _Change:
    request_id: str
    apply: Apply
    undo: Undo | None
    generation: int = 0  # the generation that committed it
    future: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass(eq=False)
class _Resync:
    channel: AgentChannel


@dataclass
class Attachment:
    """A task traced through the ptrace facade: its state and its reservations by index."""

    session: str  # "" for a persistent (CLI) attachment
    owner: str
    state: PtraceState = field(default_factory=PtraceState)
    reservations: dict[int, str] = field(default_factory=dict)


class Host:
    def __init__(
        self,
        name: str,
        ncpus: int,
        profile: ArchProfile,
        *,
        ack_timeout: float,
        bus: EventBus,
        on_commit: Callable[[Host, set[str]], None] | None = None,
    ) -> None:
        self.name = name
        self.ncpus = ncpus
        self.profile = profile
        self.ledger = HostLedger(name, ncpus, profile)
        self.generation = 0
        self.channels: list[AgentChannel | None] = [None] * ncpus
        self.backends: list[str] = [""] * ncpus
        self.attachments: dict[int, Attachment] = {}
        self.dirty_tasks: set[int] = set()
        self.paranoid = False  # ptrace attachments to write at the next commit
        self.ack_timeout = ack_timeout
        self.bus = bus
        self.on_commit = on_commit
        self._queue: list[_Change | _Resync] = []
        self._worker: asyncio.Task[None] | None = None
        self.nacks = 0
        self.timeouts = 0

    # --- entry points ------------------------------------------------------------

    async def change(self, request_id: str, apply: Apply, undo: Undo | None = None) -> Any:
        """Run ``apply`` in the pipeline; return its result once every agent acked."""
        return (await self.commit(request_id, apply, undo))[0]

    async def commit(
        self, request_id: str, apply: Apply, undo: Undo | None = None
    ) -> tuple[Any, int]:
        """Like ``change``, with the generation that committed it (not the host's
        current one, which may already be a later change still in flight)."""
        item = _Change(request_id, apply, undo)
        self._enqueue(item)
        return await item.future, item.generation

    def resync(self, channel: AgentChannel) -> None:
        """Send a (re)connected agent the whole current state of its CPU."""
        self._enqueue(_Resync(channel))

    def _enqueue(self, item: _Change | _Resync) -> None:
        self._queue.append(item)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name=f"host {self.name}")

    async def drain(self) -> None:
        """Wait until every queued change has finished."""
        while self._worker is not None and not self._worker.done():
            await asyncio.shield(self._worker)

    # --- the pipeline ------------------------------------------------------------

    async def _run(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            for resync in [i for i in batch if isinstance(i, _Resync)]:
                await self._resync(resync.channel)
            changes = [i for i in batch if isinstance(i, _Change)]
            if changes:
                await self._run_batch(changes, split_on_failure=len(changes) > 1)

    async def _run_batch(self, changes: list[_Change], *, split_on_failure: bool) -> None:
        token = self.ledger.checkpoint()
        admitted: list[tuple[_Change, Any]] = []
        affected: set[int] = set()
        for ch in changes:
            step = self.ledger.checkpoint()
            try:
                result, cpus = ch.apply()
            except Exception as err:
                self.ledger.rollback(step)
                _fail(ch.future, err)
                continue
            admitted.append((ch, result))
            affected.update(cpus)
        if not admitted:
            self.ledger.commit(token)
            return
        self.generation += 1
        request_ids = ",".join(ch.request_id for ch, _ in admitted)
        failure = await self._broadcast(self.generation, affected, request_ids)
        if failure is None:
            failure = self._persist(token)
        if failure is None:
            self.ledger.commit(token)
            if self.paranoid:
                self._validate_or_die()
            self.publish(types_pb2.EVENT_KIND_RELOAD, request_ids)
            for ch, result in admitted:
                ch.generation = self.generation
                if not ch.future.done():
                    ch.future.set_result(result)
            return
        # Roll back everything the batch did, everywhere it was applied.
        self.ledger.rollback(token)
        for ch, _ in reversed(admitted):
            if ch.undo is not None:
                ch.undo()
        self.generation += 1
        log.warning(
            "host %s: generation %d rolled back (%s); requests %s",
            self.name,
            self.generation - 1,
            failure.reason,
            request_ids,
        )
        await self._broadcast(self.generation, affected, request_ids, rollback=True)
        self.publish(types_pb2.EVENT_KIND_NACK, request_ids, reason=failure.message)
        if split_on_failure:
            for ch, _ in admitted:
                await self._run_batch([ch], split_on_failure=False)
        else:
            for ch, _ in admitted:
                _fail(ch.future, failure)

    def _validate_or_die(self) -> None:
        """Drills and fuzzing: any drift of the ledger ends the process loudly."""
        try:
            self.ledger.validate()
        except HwbpError as err:
            log.critical("host %s: ledger invariant broken: %s", self.name, err)
            os._exit(70)

    def _persist(self, token: int) -> HwbpError | None:
        """Make the batch durable before anyone hears success; a failed write fails it."""
        if self.on_commit is None:
            return None
        try:
            self.on_commit(self, self.ledger.touched_since(token))
        except Exception as err:
            log.error("host %s: ledger write failed: %s", self.name, err)
            return LedgerWriteFailed(
                f"host {self.name}: the change could not be made durable ({err}); "
                "it was rolled back",
                host=self.name,
            )
        return None

    async def _broadcast(
        self, generation: int, cpus: Iterable[int], request_id: str, *, rollback: bool = False
    ) -> HwbpError | None:
        """The IPI with wait: send every connected affected agent its state, await answers."""
        futures: dict[int, asyncio.Future[AckResult]] = {}
        for cpu in sorted(cpus):
            channel = self.channels[cpu]
            if channel is None or not channel.open:
                continue  # offline CPUs get the whole state when their agent connects
            futures[cpu] = channel.reload(generation, request_id, self.ledger.for_cpu(cpu))
        if not futures:
            return None
        await asyncio.wait(futures.values(), timeout=self.ack_timeout)
        nacks: list[tuple[int, AckResult]] = []
        late: list[int] = []
        for cpu, fut in futures.items():
            if not fut.done():
                late.append(cpu)
            elif fut.exception() is None:
                if not fut.result().ok:
                    nacks.append((cpu, fut.result()))
            elif not isinstance(fut.exception(), Disconnected):
                late.append(cpu)
        if rollback:
            if nacks or late:
                log.error(
                    "host %s: rollback generation %d not acknowledged by cpus %s",
                    self.name,
                    generation,
                    sorted([c for c, _ in nacks] + late),
                )
            return None
        if nacks:
            self.nacks += len(nacks)
            return _refusal(self.name, generation, nacks)
        if late:
            self.timeouts += len(late)
            return AckTimeout(
                f"host {self.name}: cpu(s) {', '.join(map(str, late))} did not acknowledge "
                f"generation {generation} within {self.ack_timeout:g}s; the change was rolled back",
                host=self.name,
                cpus=",".join(map(str, late)),
                generation=generation,
            )
        return None

    async def _resync(self, channel: AgentChannel) -> None:
        if not channel.open or self.channels[channel.cpu] is not channel:
            return
        if channel.state is LinkState.LIVE:
            channel.move(LinkState.RESYNCING)
        fut = channel.reload(self.generation, "resync", self.ledger.for_cpu(channel.cpu))
        try:
            result = await asyncio.wait_for(asyncio.shield(fut), self.ack_timeout)
        except (TimeoutError, Disconnected):
            log.warning("host %s cpu %d: resync not acknowledged", self.name, channel.cpu)
            return
        if result.ok:
            if channel.state is LinkState.RESYNCING:
                channel.move(LinkState.LIVE)
            log.info(
                "host %s cpu %d: resynced at generation %d",
                self.name,
                channel.cpu,
                result.generation,
            )
        else:
            channel.detail = f"resync refused: {result.reason}"
            if channel.state is LinkState.RESYNCING:
                channel.move(LinkState.LIVE)
            log.error("host %s cpu %d: resync refused: %s", self.name, channel.cpu, result.reason)

    # --- agents ------------------------------------------------------------------

    def attach_channel(self, channel: AgentChannel) -> AgentChannel | None:
        """Register a connected agent; returns the channel it replaces, if any."""
        old = self.channels[channel.cpu]
        self.channels[channel.cpu] = channel
        self.backends[channel.cpu] = channel.backend
        return old

    def detach_channel(self, channel: AgentChannel) -> bool:
        if self.channels[channel.cpu] is channel:
            self.channels[channel.cpu] = None
            return True
        return False

    def expected_image(self, cpu: int) -> RegisterImage:
        """What the CPU should hold for the task the agent reports as current."""
        regs = RegisterFile(self.profile)
        channel = self.channels[cpu]
        current = channel.image.current_task if channel and channel.image else None
        regs.switch(current)
        return regs.load(self.ledger.for_cpu(cpu))

    def publish(self, kind: types_pb2.EventKind, request_id: str, *, reason: str = "") -> None:
        """Tell watchers what happened to this host (a reload, a NACK, a lease expiry)."""
        if not self.bus.wants(kind):
            return
        self.bus.publish(
            types_pb2.Event(
                kind=kind,
                host=self.name,
                generation=self.generation,  # type: ignore[arg-type]
                request_id=request_id,
                reason=reason,
                seq=self.bus.next_seq(),
            )
        )


def _fail(future: asyncio.Future[Any], err: BaseException) -> None:
    if not future.done():
        future.set_exception(err)


def _refusal(host: str, generation: int, nacks: list[tuple[int, AckResult]]) -> HwbpError:
    cpus = ", ".join(str(c) for c, _ in nacks)
    reasons = "; ".join(f"cpu {c}: {r.reason}" for c, r in nacks)
    message = (
        f"host {host}: agent(s) on cpu {cpus} refused generation {generation} "
        f"({reasons}); the change was rolled back everywhere"
    )
    meta: dict[str, object] = {"host": host, "cpus": cpus, "generation": generation}
    kernel = [r for _, r in nacks if r.errno]
    if kernel:
        errno = kernel[0].errno
        cls = KernelNoSpace if errno == ENOSPC else KernelRefused
        return cls(message, kernel_errno=errno, **meta)
    return AgentRefused(message, **meta)
