"""One CPU agent's stream to the arbiter: hello, reloads applied and acknowledged, controls.

The lifecycle is an explicit state machine (connecting -> resyncing -> live -> draining
-> closed). The whole connect-and-resync loop is retried by tenacity with jittered
exponential backoff, and only on transient transport errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as errno_mod
import logging
from collections.abc import AsyncIterator, Callable
from enum import Enum
from typing import Any, Protocol

import grpc
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_never,
    wait_random_exponential,
)

from hwbp.errors import HwbpError, KernelRefused
from hwbp.model import AccessType, Assignment
from hwbp.registers import HitRecord, RegisterImage
from hwbp_pb import agent_pb2, agent_pb2_grpc, types_pb2
from wire import convert

log = logging.getLogger("hwbp.agent")
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class Backend(Protocol):
    name: str
    polls: bool  # reports hits and task exits on its own (fds to watch)

    def apply(self, assignments: Any) -> RegisterImage: ...
    def image(self) -> RegisterImage: ...
    def poll_hits(self) -> list[Any]: ...
    def fds(self) -> list[int]: ...
    def watch_task(self, pid: int) -> None: ...
    def exited_tasks(self) -> list[int]: ...
    def close(self) -> None: ...


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


class StreamLost(Exception):
    """The arbiter closed our stream (restart, replacement): reconnect."""


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, StreamLost):
        return True
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in TRANSIENT


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
    ) -> None:
        self.stub = agent_pb2_grpc.AgentLinkStub(channel)
        self.host, self.cpu, self.ncpus = host, cpu, ncpus
        self.backend = backend
        self.state = AgentState.CONNECTING
        self.applied_generation = 0
        self.ack_delay = ack_delay  # test hook: a slow agent acknowledges late
        self.on_live = on_live
        self.connects = 0
        self._outbox: asyncio.Queue[agent_pb2.AgentMessage | None] = asyncio.Queue()

    def move(self, new: AgentState) -> None:
        if new is not self.state and new not in _MOVES[self.state]:
            raise RuntimeError(f"agent {self.host}/{self.cpu}: illegal {self.state} -> {new}")
        self.state = new

    async def run(self) -> None:
        """Connect, resync and serve until stopped; reconnect on transient failures.

        The backoff starts afresh after every session that went live, so an arbiter
        restart is followed within a fraction of a second, not after a long backoff.
        """
        while self.state not in (AgentState.DRAINING, AgentState.CLOSED):
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_transient),
                wait=wait_random_exponential(multiplier=0.05, max=2.0),
                stop=stop_never,
                reraise=True,
                before_sleep=lambda rs: log.info(
                    "agent %s/%d: arbiter unreachable (%s); retrying",
                    self.host,
                    self.cpu,
                    rs.outcome.exception() if rs.outcome else "?",
                ),
            ):
                with attempt:
                    if self.state in (AgentState.DRAINING, AgentState.CLOSED):
                        return
                    self.move(AgentState.CONNECTING)
                    await self._session()

    async def _session(self) -> None:
        self.connects += 1
        self._outbox = asyncio.Queue()
        hello = agent_pb2.Hello(
            host=self.host,
            cpu=self.cpu,
            ncpus=self.ncpus,
            backend=self.backend.name,
            last_applied_generation=self.applied_generation,
            image=convert.image_to(self.backend.image()),
            slots=4,
            installed=[convert.assignment_to(a) for a in _installed(self.backend)],  # type: ignore[misc]
        )
        self._outbox.put_nowait(agent_pb2.AgentMessage(hello=hello))
        call = self.stub.Connect(self._outgoing())
        watcher = asyncio.create_task(self._watch_backend())
        try:
            async for msg in call:
                await self._handle(msg)
        except grpc.aio.AioRpcError as err:
            if self.state is not AgentState.LIVE or not _transient(err):
                raise
            log.info(
                "agent %s/%d: lost the arbiter (%s); reconnecting",
                self.host,
                self.cpu,
                err.code().name,
            )
            return
        finally:
            watcher.cancel()
            self._outbox.put_nowait(None)
        if self.state is AgentState.LIVE:
            log.info("agent %s/%d: stream ended; reconnecting", self.host, self.cpu)
            return  # went live: the next attempt starts a fresh backoff
        if self.state not in (AgentState.DRAINING, AgentState.CLOSED):
            raise StreamLost(f"arbiter closed the stream of {self.host}/{self.cpu}")

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
        try:
            assignments = [convert.assignment_from(a) for a in reload.assignments]
            image = self.backend.apply(assignments)
        except KernelRefused as err:
            self.send(_nack(reload, str(err), err.kernel_errno))
            return
        except Exception as err:
            self.send(_nack(reload, str(err), 0))
            return
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
            log.info("agent %s/%d live at generation %d", self.host, self.cpu, reload.generation)
            if self.on_live is not None:
                self.on_live(self)

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

    def _hit_pb(self, hit: HitRecord) -> types_pb2.Hit:
        msg = convert.hit_to(self.host, self.cpu, hit, ptrace_index=None, seq=0)
        current = self.backend.image().current_task
        if not msg.HasField("task") and current is not None:
            msg.task = current  # a CPU-bound breakpoint: name the task that made the access
        return msg

    async def _watch_backend(self) -> None:
        """Real CPUs report hits and task exits on their own; forward them promptly."""
        if not self.backend.polls:
            return
        fds = self.backend.fds
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        watched: set[int] = set()
        try:
            while True:
                for fd in set(fds()) - watched:
                    loop.add_reader(fd, ready.set)
                    watched.add(fd)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready.wait(), 0.5)
                ready.clear()
                hits = [h.record if hasattr(h, "record") else h for h in self.backend.poll_hits()]
                for i in range(0, len(hits), convert.MAX_HITS):  # the arbiter's per-report cap
                    chunk = [self._hit_pb(h) for h in hits[i : i + convert.MAX_HITS]]
                    self.send(agent_pb2.AgentMessage(hits=agent_pb2.HitReport(hits=chunk)))
                for pid in self.backend.exited_tasks():
                    self.send(agent_pb2.AgentMessage(task_exited=agent_pb2.TaskExited(task=pid)))
                for fd in watched - set(fds()):
                    loop.remove_reader(fd)
                    watched.discard(fd)
        finally:
            for fd in watched:
                loop.remove_reader(fd)

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


def _nack(reload: agent_pb2.Reload, reason: str, kernel_errno: int) -> agent_pb2.AgentMessage:
    if kernel_errno:
        name = errno_mod.errorcode.get(kernel_errno, str(kernel_errno))
        reason = reason if name in reason else f"{reason} ({name})"
    reason = convert.bounded(reason, "reason")
    return agent_pb2.AgentMessage(
        nack=agent_pb2.Nack(generation=reload.generation, reason=reason, errno=kernel_errno)
    )
