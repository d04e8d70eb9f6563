"""One CPU agent's stream to the arbiter: hello, reloads applied and acknowledged, controls.

The lifecycle is an explicit state machine (connecting -> resyncing -> live -> draining
-> closed). The whole connect-and-resync loop is retried by tenacity with jittered
exponential backoff: fast after a broken stream, slowly after a refusal or a bug of our
own (``agent.failures`` says which is which). Only a stop, or a refusal the arbiter will
never lift, ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as errno_mod
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from enum import Enum
from typing import Any, Protocol

import grpc
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_never

from hwbp.agent.failures import (
    RETRIED,
    Failure,
    LinkRefused,
    StreamLost,
    classify,
    describe,
    error_info,
    wait,
)
from hwbp.arch import DEFAULT_FEATURES
from hwbp.errors import HwbpError, KernelRefused
from hwbp.model import AccessType, Assignment
from hwbp.registers import HitRecord, RegisterImage
from hwbp.v1 import agent_pb2, agent_pb2_grpc, types_pb2
from hwbp.wire import convert

__all__ = ["AgentLink", "AgentState", "Backend", "LinkRefused", "StreamLost"]

log = logging.getLogger("hwbp.agent")
# While the arbiter is away, a link waits this long for its channel to connect before it
# tries (and fails) a call: the channel retries on its own, so a thousand links of a fleet
# do not spin while the arbiter restarts (they would starve it on a small machine).
READY_WAIT = 10.0
# A session that stayed live this long was a real one: the next connect starts a fresh
# backoff. One that ended sooner counts as a failure, so an arbiter that ends our stream
# right after every resync is not answered with a reconnect spin.
STABLE_AFTER = 5.0
# A stream that says nothing for this long before the CPU is live (no welcome, or no
# resync after it) is given up and opened again. A long-lived stream has no deadline of
# its own, and a fresh agent once waited on such a silent stream forever, idle, with an
# empty log (about 2 in 2,000 starts under heavy load). The arbiter answers a hello at
# once; this leaves room for a loaded one.
START_TIMEOUT = 30.0


class Backend(Protocol):
    name: str
    polls: bool  # reports hits and task exits on its own (fds to watch)

    def apply(self, assignments: Sequence[Assignment]) -> RegisterImage: ...
    def image(self) -> RegisterImage: ...
    def poll_hits(self) -> list[Any]: ...
    def fds(self) -> list[int]: ...
    def watch_task(self, pid: int) -> None: ...
    def exited_tasks(self) -> list[int]: ...
    def close(self) -> None: ...


class Route(Protocol):
    """The replicas of a replicated arbiter: the channel to use, moved on by failures."""

    def channel(self, cpu: int) -> grpc.aio.Channel: ...
    def failed(self, exc: BaseException) -> None: ...


class AgentState(Enum):
    CONNECTING = "connecting"
    RESYNCING = "resyncing"
    LIVE = "live"
    DRAINING = "draining"
    CLOSED = "closed"


_MOVES = {
    AgentState.CONNECTING: {
        AgentState.RESYNCING,
        AgentState.CONNECTING,
        AgentState.DRAINING,
        AgentState.CLOSED,
    },
    AgentState.RESYNCING: {
        AgentState.LIVE,
        AgentState.CONNECTING,
        AgentState.DRAINING,
        AgentState.CLOSED,
    },
    AgentState.LIVE: {AgentState.CONNECTING, AgentState.DRAINING, AgentState.CLOSED},
    AgentState.DRAINING: {AgentState.CLOSED},
    AgentState.CLOSED: set(),
}


class AgentLink:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        host: str,
        cpu: int,
        ncpus: int,
        backend: Backend,
        *,
        ack_delay: float = 0.0,
        on_live: Callable[[AgentLink], None] | None = None,
        start_timeout: float = START_TIMEOUT,
        route: Route | None = None,
        arbiter: str = "the configured address",
    ) -> None:
        self.channel = channel
        self.stub = agent_pb2_grpc.AgentLinkStub(channel)
        self.route = route  # several arbiter replicas: which one leads
        self.host, self.cpu, self.ncpus = host, cpu, ncpus
        self.backend = backend
        self.state = AgentState.CONNECTING
        self.applied_generation = 0
        self.ack_delay = ack_delay  # test hook: a slow agent acknowledges late
        self.on_live = on_live
        self.start_timeout = start_timeout  # seconds each wait may take before it is live
        self.connects = 0
        self.live_since: float | None = None  # monotonic time the current session went live
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # tests record it
        self._outbox: asyncio.Queue[agent_pb2.AgentMessage | None] = asyncio.Queue()
        # What the arbiter assigned as of applied_generation: the base a delta is applied
        # on, for a backend that only takes whole sets (it diffs them itself).
        self._held: dict[str, Assignment] = {}
        self._unreachable = False  # the last attempt failed to reach the arbiter
        self.arbiter = arbiter  # where the channel points, for the log
        self._reported = ""  # the state the log last reported (see _report)

    def move(self, new: AgentState) -> None:
        if new is not self.state and new not in _MOVES[self.state]:
            raise RuntimeError(f"agent {self.host}/{self.cpu}: illegal {self.state} -> {new}")
        self.state = new

    async def run(self) -> None:
        """Connect, resync and serve until stopped; reconnect whatever breaks.

        The backoff starts afresh after every session that stayed live, so an arbiter
        restart is followed within a fraction of a second, not after a long backoff.
        Raises ``LinkRefused`` only when the arbiter will never accept this agent.
        """
        self._report(
            "connecting",
            logging.INFO,
            f"agent {self.host}/{self.cpu}: connecting to the arbiter at {self.arbiter}",
        )
        while self.state not in (AgentState.DRAINING, AgentState.CLOSED):
            retrying = AsyncRetrying(
                retry=retry_if_exception(lambda e: classify(e) in RETRIED),
                wait=wait,
                stop=stop_never,
                sleep=lambda seconds: self.sleep(seconds),
                reraise=True,
                before_sleep=self._before_retry,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        if self.state in (AgentState.DRAINING, AgentState.CLOSED):
                            return
                        self.move(AgentState.CONNECTING)
                        await self._session()
            except grpc.RpcError as err:
                if classify(err) is not Failure.FATAL:
                    raise
                raise LinkRefused(
                    f"agent {self.host}/{self.cpu}: the arbiter refused this agent for good "
                    f"({describe(err)}); fix its identity or flags"
                ) from err

    def _before_retry(self, state: RetryCallState) -> None:
        """A failed attempt: one line when the link's state changes, DEBUG while it stays.

        An arbiter that is away for an hour costs a few lines (the stream lost, the
        arbiter unreachable, connected again), not one per attempt: the attempts
        themselves are DEBUG lines.
        """
        exc = state.outcome.exception() if state.outcome is not None else None
        if exc is None:
            return
        if self.route is not None:
            self.route.failed(exc)
        seconds = state.next_action.sleep if state.next_action is not None else 0.0
        kind = classify(exc)
        # The arbiter could not be reached: the next attempt waits for the channel.
        self._unreachable = kind is Failure.BROKEN and isinstance(exc, grpc.RpcError)
        where = f"agent {self.host}/{self.cpu}"
        then = f"retrying in {seconds:.1f} s (attempt {state.attempt_number})"
        if kind is Failure.BROKEN and self._unreachable and self._reported != "lost":
            self._report(
                "unreachable",
                logging.INFO,
                f"{where}: the arbiter at {self.arbiter} is unreachable ({describe(exc)}); "
                f"{then}; further attempts are logged at DEBUG",
            )
        elif kind is Failure.BROKEN:
            self._report(
                "lost",
                logging.INFO,
                f"{where}: lost the arbiter ({describe(exc)}); reconnecting, {then}",
            )
        elif kind is Failure.REFUSED:
            info = error_info(exc)
            self._report(
                f"refused {info.reason if info else describe(exc)}",
                logging.WARNING,
                f"{where}: the arbiter refused this agent: {describe(exc)}; {then}",
            )
        else:
            self._report(
                f"failed {type(exc).__name__}",
                logging.ERROR,
                f"{where}: {describe(exc)}; {then}",
                exc_info=exc,
            )

    def _report(
        self, state: str, level: int, message: str, *, exc_info: BaseException | None = None
    ) -> None:
        """Log ``message`` at ``level`` if the link's reported state changes, else at DEBUG."""
        if state == self._reported:
            log.debug("%s", message)
            return
        self._reported = state
        log.log(level, "%s", message, exc_info=exc_info)

    async def _session(self) -> None:
        if self.route is not None:
            self.channel = self.route.channel(self.cpu)
            self.stub = agent_pb2_grpc.AgentLinkStub(self.channel)
        # With replicas a failure has already moved us to another one: try it at once
        # (waiting for a dead replica's channel would hold the link up to READY_WAIT).
        if self._unreachable and self.route is None:
            self._unreachable = False
            with contextlib.suppress(TimeoutError):
                # Resumes as soon as the channel is up; after READY_WAIT the call is
                # tried anyway, so a channel that cannot connect (TLS refused) is reported.
                await asyncio.wait_for(self.channel.channel_ready(), READY_WAIT)
        self.connects += 1
        self.live_since = None
        self._outbox = asyncio.Queue()
        hello = agent_pb2.Hello(
            host=self.host,
            cpu=self.cpu,
            ncpus=self.ncpus,
            backend=self.backend.name,
            last_applied_generation=self.applied_generation,
            image=convert.image_to(self.backend.image()),
            slots=4,
            installed=[convert.assignment_to(a) for a in _installed(self.backend)],
            features=convert.features_to(getattr(self.backend, "features", DEFAULT_FEATURES)),
            deltas=True,
        )
        self._outbox.put_nowait(agent_pb2.AgentMessage(hello=hello))
        call = self.stub.Connect(self._outgoing())
        watcher = asyncio.create_task(self._watch_backend(), name=f"backend {self.cpu}")
        try:
            async for msg in self._messages(call):
                await self._handle(msg)
        except grpc.RpcError as err:
            if self.state is not AgentState.LIVE or classify(err) is not Failure.BROKEN:
                raise
            ended = describe(err)
        else:
            ended = "the arbiter ended it"
        finally:
            watcher.cancel()
            call.cancel()
            self._outbox.put_nowait(None)
        if self.state in (AgentState.DRAINING, AgentState.CLOSED):
            return
        if self.state is not AgentState.LIVE or self.live_since is None:
            raise StreamLost(
                f"arbiter closed the stream of {self.host}/{self.cpu} before it was live"
            )
        lived = time.monotonic() - self.live_since
        if lived < STABLE_AFTER:
            raise StreamLost(f"stream ended {lived:.1f} s after going live ({ended})")
        self._report(
            "connecting",
            logging.INFO,
            f"agent {self.host}/{self.cpu}: stream ended ({ended}); reconnecting",
        )

    async def _messages(
        self, call: AsyncIterable[agent_pb2.ArbiterMessage]
    ) -> AsyncIterator[agent_pb2.ArbiterMessage]:
        """The stream's messages. Until the CPU is live each wait is bounded by
        ``start_timeout``: a start that hears nothing says so and starts again."""
        stream = aiter(call)
        while True:
            live = self.state is AgentState.LIVE
            try:
                msg = await asyncio.wait_for(anext(stream), None if live else self.start_timeout)
            except StopAsyncIteration:
                return
            except TimeoutError:
                stage = "welcome" if self.state is AgentState.CONNECTING else "resync"
                log.warning(
                    "agent %s/%d: no %s from the arbiter within %g s; reconnecting",
                    self.host,
                    self.cpu,
                    stage,
                    self.start_timeout,
                )
                raise StreamLost(
                    f"no {stage} within {self.start_timeout:g} s of {self.host}/{self.cpu}'s hello"
                ) from None
            yield msg

    async def _outgoing(self) -> AsyncIterator[agent_pb2.AgentMessage]:
        outbox = self._outbox
        while True:
            msg = await outbox.get()
            if msg is None:
                return
            yield msg

    def send(self, msg: agent_pb2.AgentMessage) -> None:
        self._outbox.put_nowait(msg)

    async def _handle(self, msg: agent_pb2.ArbiterMessage) -> None:
        kind = msg.WhichOneof("body")
        if kind == "welcome":
            self.move(AgentState.RESYNCING)
        elif kind == "reload":
            await self._reload(msg.reload)
        elif kind == "control":
            self.send(agent_pb2.AgentMessage(control_result=self._control(msg.control)))

    async def _reload(self, reload: agent_pb2.Reload) -> None:
        if self.ack_delay:
            await asyncio.sleep(self.ack_delay)
        delta = reload.HasField("base_generation")
        if delta and reload.base_generation != self.applied_generation:
            self.send(
                _nack(
                    reload,
                    f"this agent holds generation {self.applied_generation}, not the delta's "
                    f"base {reload.base_generation}",
                    0,
                    needs_full=True,
                )
            )
            return
        try:
            assignments = [convert.assignment_from(a) for a in reload.assignments]
            if delta:
                removed = list(reload.removed)
                image = self._apply_delta(assignments, removed)
            else:
                image = self.backend.apply(assignments)
        except KernelRefused as err:
            self.send(_nack(reload, str(err), err.kernel_errno))
            return
        except Exception as err:
            self.send(_nack(reload, str(err), 0))
            return
        if delta:
            for rid in removed:
                self._held.pop(rid, None)
            self._held.update((a.reservation_id, a) for a in assignments)
        else:
            self._held = {a.reservation_id: a for a in assignments}
        for a in assignments:
            if a.task is not None:
                self.backend.watch_task(a.task)
        self.applied_generation = reload.generation
        self.send(
            agent_pb2.AgentMessage(
                ack=agent_pb2.Ack(
                    generation=reload.generation,
                    image=convert.image_to(image),
                    detail=convert.bounded(getattr(self.backend, "detail", lambda: "")(), "detail"),
                )
            )
        )
        if self.state is AgentState.RESYNCING:
            self.move(AgentState.LIVE)
            self.live_since = time.monotonic()
            self._report(
                "connected",
                logging.INFO,
                f"agent {self.host}/{self.cpu}: connected to the arbiter at {self.arbiter}: "
                f"live at generation {reload.generation}",
            )
            if self.on_live is not None:
                self.on_live(self)

    def _apply_delta(self, upserts: list[Assignment], removed: list[str]) -> RegisterImage:
        """Apply a delta on what is held, all or nothing (the backend's own when it has one)."""
        apply_delta = getattr(self.backend, "apply_delta", None)
        if apply_delta is not None:  # it refuses a delta that names a reservation twice
            image: RegisterImage = apply_delta(upserts, removed)
            return image
        named = {a.reservation_id for a in upserts}
        if len(named) < len(upserts) or not named.isdisjoint(removed):
            raise ValueError("a delta names a reservation twice")
        merged = dict(self._held)
        for rid in removed:
            merged.pop(rid, None)
        merged.update((a.reservation_id, a) for a in upserts)
        return self.backend.apply(list(merged.values()))

    def _control(self, ctl: agent_pb2.Control) -> agent_pb2.ControlResult:
        out = agent_pb2.ControlResult(control_id=ctl.control_id)
        try:
            body = ctl.WhichOneof("body")
            if body == "switch_task":
                task = ctl.switch_task.task if ctl.switch_task.HasField("task") else None
                image = _call(self.backend, "switch", task)
                out.image.CopyFrom(convert.image_to(image))
            elif body == "access":
                acc = ctl.access
                kind = convert.ACCESS.get(acc.type, AccessType.WRITE)
                hits = _call(self.backend, "access", acc.addr, acc.len, kind)
                out.hits.extend(self._hit_pb(h) for h in hits)
                out.image.CopyFrom(convert.image_to(self.backend.image()))
            else:
                raise ValueError(f"unknown control {body!r}")
            out.ok = True
        except (HwbpError, ValueError, NotImplementedError) as err:
            out.ok, out.error = False, convert.bounded(str(err), "error")
        return out

    def _hit_pb(self, hit: HitRecord, tid: int | None = None) -> types_pb2.Hit:
        msg = convert.hit_to(self.host, self.cpu, hit, ptrace_index=None, seq=0)
        if tid:
            msg.tid = tid  # the thread that made the access (a process's: any of them)
        msg.exception = hit.exception  # which hits one debug exception made
        current = self.backend.image().current_task
        if not msg.HasField("task") and current is not None:
            msg.task = current  # a CPU-bound breakpoint: name the task that made the access
        return msg

    async def _watch_backend(self) -> None:
        """Real CPUs report hits and task exits on their own; forward them promptly.

        A failure in one round (a ring buffer that will not read) is logged and the next
        round tries again: this task must not die quietly while the stream lives on."""
        if not self.backend.polls:
            return
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        watched: set[int] = set()
        try:
            while True:
                try:
                    await self._forward_once(loop, ready, watched)
                except Exception:
                    log.exception("agent %s/%d: reading the backend failed", self.host, self.cpu)
                    await asyncio.sleep(0.5)
        finally:
            for fd in watched:
                loop.remove_reader(fd)

    async def _forward_once(
        self, loop: asyncio.AbstractEventLoop, ready: asyncio.Event, watched: set[int]
    ) -> None:
        for fd in set(self.backend.fds()) - watched:
            loop.add_reader(fd, ready.set)
            watched.add(fd)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), 0.5)
        ready.clear()
        hits = [
            (h.record, h.tid) if hasattr(h, "record") else (h, None)
            for h in self.backend.poll_hits()
        ]
        for i in range(0, len(hits), convert.MAX_HITS):  # the arbiter's per-report cap
            chunk = [self._hit_pb(h, tid) for h, tid in hits[i : i + convert.MAX_HITS]]
            self.send(agent_pb2.AgentMessage(hits=agent_pb2.HitReport(hits=chunk)))
        for pid in self.backend.exited_tasks():
            self.send(agent_pb2.AgentMessage(task_exited=agent_pb2.TaskExited(task=pid)))
        for fd in watched - set(self.backend.fds()):
            loop.remove_reader(fd)
            watched.discard(fd)

    def stop(self) -> None:
        self.move(AgentState.DRAINING)
        self._outbox.put_nowait(None)


def _installed(backend: Backend) -> tuple[Assignment, ...]:
    get = getattr(backend, "installed", None)
    return tuple(get()) if get is not None else ()


def _call(backend: Backend, method: str, *args: Any) -> Any:
    fn = getattr(backend, method, None)
    if fn is None:
        raise NotImplementedError(
            f"the {backend.name} backend cannot {method}: a real CPU's scheduler does that"
        )
    return fn(*args)


def _nack(
    reload: agent_pb2.Reload, reason: str, kernel_errno: int, *, needs_full: bool = False
) -> agent_pb2.AgentMessage:
    if kernel_errno:
        name = errno_mod.errorcode.get(kernel_errno, str(kernel_errno))
        reason = reason if name in reason else f"{reason} ({name})"
    reason = convert.bounded(reason, "reason")
    return agent_pb2.AgentMessage(
        nack=agent_pb2.Nack(
            generation=reload.generation,
            reason=reason,
            errno=kernel_errno,
            needs_full=needs_full,
        )
    )
