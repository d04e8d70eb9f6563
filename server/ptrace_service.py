"""The Ptrace service: PTRACE_POKEUSER / PEEKUSER on u_debugreg, per (host, task).

The register semantics are the core's (hwbp.ptrace) and the operations the host's
(``server/tracing.py``): each traced task's ptrace breakpoints are task-scoped
reservations in the host's ledger. As in the kernel, a detach keeps them; a flush (or the
task's exit) drops them, and so does the end of the session that traced the task last
(the service's own rule: a client that dies must not leak debug registers). This module
converts requests and answers, and checks who may trace what.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpc.aio import ServicerContext

from hwbp.server import authz
from hwbp.server.authz import Action, Peer, Principal
from hwbp.server.errors import rpc, stream_rpc
from hwbp.server.events import TRAPS_ONLY, Item
from hwbp.server.fleet import Fleet, check_open
from hwbp.server.hosts import Host
from hwbp.server.sessions import SessionTable
from hwbp.v1 import ptrace_pb2, ptrace_pb2_grpc
from hwbp.v1.ptrace_pb2 import (
    AttachRequest,
    AttachResponse,
    DetachRequest,
    DetachResponse,
    FlushRequest,
    FlushResponse,
    PeekUserRequest,
    PeekUserResponse,
    PokeUserRequest,
    PokeUserResponse,
    TrapsRequest,
)
from hwbp.wire import convert

__all__ = ["PtraceServicer"]


_Tracing = AttachRequest | DetachRequest | FlushRequest | PokeUserRequest | PeekUserRequest
_Traced = _Tracing | TrapsRequest


class PtraceServicer(ptrace_pb2_grpc.PtraceServicer):
    def __init__(self, fleet: Fleet, sessions: SessionTable) -> None:
        self.fleet = fleet
        self.sessions = sessions

    def _guard(
        self, context: Peer, request: _Traced, action: Action, *, joining: str = ""
    ) -> Principal:
        """The permission hook, naming who holds the task's trace (if anyone) as its owner,
        and (``joining``: the session an attach would join) who owns that session."""
        host = self.fleet.hosts.get(request.host)
        att = host.attachments.get(request.task) if host is not None else None
        owner = att.owner if att is not None else None
        into = self.sessions.sessions.get(joining) if joining else None
        target = authz.Target(
            request.host,
            owner=owner,
            name=f"task {request.task}",
            session_owner=into.owner if into is not None else None,
        )
        return self.fleet.authz.check(context, request.request_id, action, target)

    def _lookup(self, request: _Tracing) -> tuple[Host, int, str]:
        host = self.fleet.host(convert.name(request.host, "host"))
        task = convert.task(request.task)
        session = convert.name(request.session_id, "session_id", required=False)
        if session:
            self.sessions.get(session)
        return host, task, session

    @rpc
    async def Attach(
        self, request: AttachRequest, context: ServicerContext[AttachRequest, AttachResponse]
    ) -> AttachResponse:
        check_open(self.fleet)
        who = self._guard(context, request, Action.PTRACE, joining=request.session_id)
        host, task, session = self._lookup(request)
        owner = who.name
        if session and not owner:
            owner = self.sessions.get(session).owner or session
        already = await host.attach(request.request_id, task, session, owner)
        return AttachResponse(already_attached=already)

    @rpc
    async def Detach(
        self, request: DetachRequest, context: ServicerContext[DetachRequest, DetachResponse]
    ) -> DetachResponse:
        """PTRACE_DETACH keeps the task's breakpoints, DR6 and DR7 (and their slots): the
        kernel flushes them only at exit and exec. Nothing is released here."""
        check_open(self.fleet)
        self._guard(context, request, Action.PTRACE)
        host, task, session = self._lookup(request)
        kept = await host.detach(request.request_id, task, session)
        return DetachResponse(released=0, kept=kept)

    @rpc
    async def Flush(
        self, request: FlushRequest, context: ServicerContext[FlushRequest, FlushResponse]
    ) -> FlushResponse:
        """flush_ptrace_hw_breakpoint(), as the task's exit or exec would."""
        check_open(self.fleet)
        self._guard(context, request, Action.PTRACE)
        host, task, session = self._lookup(request)
        return FlushResponse(released=await host.flush(request.request_id, task, session))

    @rpc
    async def PokeUser(
        self, request: PokeUserRequest, context: ServicerContext[PokeUserRequest, PokeUserResponse]
    ) -> PokeUserResponse:
        check_open(self.fleet)
        who = self._guard(context, request, Action.PTRACE)
        host, task, session = self._lookup(request)
        generation = await host.poke(
            request.request_id, task, session, request.reg, request.value, owner=who.name
        )
        return PokeUserResponse(generation=generation)

    @rpc
    async def PeekUser(
        self, request: PeekUserRequest, context: ServicerContext[PeekUserRequest, PeekUserResponse]
    ) -> PeekUserResponse:
        self._guard(context, request, Action.PTRACE_READ)
        host, task, session = self._lookup(request)
        return PeekUserResponse(value=host.peek(task, session, request.reg))

    @stream_rpc
    async def Traps(
        self, request: TrapsRequest, context: ServicerContext[TrapsRequest, ptrace_pb2.Trap]
    ) -> AsyncIterator[ptrace_pb2.Trap]:
        who = self._guard(context, request, Action.PTRACE_READ)
        host = self.fleet.host(convert.name(request.host, "host"))
        task = convert.task(request.task)

        def accept(item: Item) -> bool:
            return (
                isinstance(item, ptrace_pb2.Trap) and item.host == host.name and item.task == task
            )

        sub = self.fleet.bus.subscribe(accept, TRAPS_ONLY, host=host.name, identity=who.name)
        try:
            while True:
                trap = await sub.get()
                if isinstance(trap, ptrace_pb2.Trap):  # what accept() took
                    yield trap
        finally:
            self.fleet.bus.unsubscribe(sub)
