"""The Ptrace service: PTRACE_POKEUSER / PEEKUSER on u_debugreg, per (host, task).

The register semantics are the core's (hwbp.ptrace); here each attached task's ptrace
breakpoints become task-scoped reservations in the host's ledger, so they compete for
slots exactly like every other breakpoint and are broadcast to the agents.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from hwbp import ptrace
from hwbp.errors import AlreadyAttached, HwbpError, NotAttached, NotOwner
from hwbp.server import authz
from hwbp.server.attachments import Attachment, LedgerRegistrar, flush_attachment
from hwbp.server.authz import Action, Principal
from hwbp.server.errors import rpc, stream_rpc
from hwbp.server.events import TRAPS_ONLY
from hwbp.server.fleet import Fleet, check_open
from hwbp.server.hosts import Host
from hwbp.server.sessions import SessionTable
from hwbp.v1 import ptrace_pb2, ptrace_pb2_grpc
from hwbp.wire import convert

__all__ = ["PtraceServicer", "flush_attachment"]

log = logging.getLogger("hwbp.server")


class _Deferred:
    """A poke whose error the kernel reports after keeping part of its effect (DR7 pass 2)."""

    def __init__(self, error: HwbpError) -> None:
        self.error = error


class PtraceServicer(ptrace_pb2_grpc.PtraceServicer):
    def __init__(self, fleet: Fleet, sessions: SessionTable) -> None:
        self.fleet = fleet
        self.sessions = sessions

    def _guard(
        self, context: Any, request: Any, action: Action, *, joining: bool = False
    ) -> Principal:
        """The permission hook, naming who holds the task's trace (if anyone) as its owner,
        and (``joining``: an attach) who owns the session it would join."""
        host = self.fleet.hosts.get(request.host)
        att = host.attachments.get(request.task) if host is not None else None
        owner = att.owner if att is not None else None
        sid = request.session_id if joining else ""
        into = self.sessions.sessions.get(sid) if sid else None
        target = authz.Target(
            request.host,
            owner=owner,
            name=f"task {request.task}",
            session_owner=into.owner if into is not None else None,
        )
        return self.fleet.authz.check(context, request.request_id, action, target)

    def _lookup(self, request: Any) -> tuple[Host, int, str]:
        host = self.fleet.host(convert.name(request.host, "host"))
        task = convert.task(request.task)
        session = convert.name(request.session_id, "session_id", required=False)
        if session:
            self.sessions.get(session)
        return host, task, session

    def _attachment(
        self, host: Host, task: int, session: str, *, create: bool, owner: str = ""
    ) -> Attachment:
        att = host.attachments.get(task)
        if att is None:
            if not create:
                raise NotAttached(
                    f"task {task} on host {host.name} is not attached", host=host.name, task=task
                )
            att = Attachment(session=session, owner=owner or session or "hwbpctl")
            if session and not owner:
                att.owner = self.sessions.get(session).owner or session
            host.attachments[task] = att
            return att
        if att.session != session:
            raise NotOwner(
                f"task {task} on host {host.name} is traced by "
                f"{'session ' + att.session if att.session else 'a persistent attachment'}",
                host=host.name,
                task=task,
            )
        return att

    @rpc
    async def Attach(self, request: Any, context: Any) -> Any:
        check_open(self.fleet)
        who = self._guard(context, request, Action.PTRACE, joining=True)
        host, task, session = self._lookup(request)
        made: list[Attachment] = []

        def apply() -> tuple[bool, range]:
            """Decided in the pipeline, so a racing Attach cannot slip in between."""
            existing = host.attachments.get(task)
            if existing is not None:
                if existing.session == session:
                    return True, range(0)
                raise AlreadyAttached(
                    f"task {task} on host {host.name} is already traced", host=host.name, task=task
                )
            made.append(self._attachment(host, task, session, create=True, owner=who.name))
            host.dirty_tasks.add(task)  # written with the change: an attach is durable
            return False, range(0)  # no register changes until a poke

        def undo() -> None:
            if made and host.attachments.get(task) is made[0]:
                del host.attachments[task]

        if await host.change(request.request_id, apply, undo):
            return ptrace_pb2.AttachResponse(already_attached=True)
        log.info(
            "request %s: attached task %d on %s (session %s)",
            request.request_id,
            task,
            host.name,
            session or "-",
        )
        return ptrace_pb2.AttachResponse(already_attached=False)

    @rpc
    async def Detach(self, request: Any, context: Any) -> Any:
        check_open(self.fleet)
        self._guard(context, request, Action.PTRACE)
        host, task, session = self._lookup(request)
        self._attachment(host, task, session, create=False)
        saved = host.attachments[task]

        def apply() -> tuple[int, range]:
            return flush_attachment(host, task), range(host.ncpus)

        def undo() -> None:
            host.attachments[task] = saved

        released = await host.change(request.request_id, apply, undo)
        log.info(
            "request %s: detached task %d on %s, %d released",
            request.request_id,
            task,
            host.name,
            released,
        )
        return ptrace_pb2.DetachResponse(released=released)

    @rpc
    async def PokeUser(self, request: Any, context: Any) -> Any:
        check_open(self.fleet)
        who = self._guard(context, request, Action.PTRACE)
        host, task, session = self._lookup(request)
        fresh = task not in host.attachments
        att = self._attachment(host, task, session, create=not session, owner=who.name)
        saved_state, saved_res = att.state, dict(att.reservations)
        registrar = LedgerRegistrar(self.fleet.new_id, host, task, att)

        def restore() -> None:
            att.state, att.reservations = saved_state, dict(saved_res)
            if fresh:
                host.attachments.pop(task, None)

        def apply() -> tuple[Any, range]:
            host.dirty_tasks.add(task)
            try:
                att.state = ptrace.poke(att.state, request.reg, request.value, registrar)
            except HwbpError as err:
                partial = ptrace.state_after(err)
                if partial is None or partial == saved_state:
                    restore()
                    raise
                att.state = partial  # the kernel keeps bps its first DR7 pass created
                return _Deferred(err), range(host.ncpus)
            return None, range(host.ncpus)

        try:
            done = await host.commit(request.request_id, apply, restore)
        except HwbpError:
            if fresh and not att.reservations:
                host.attachments.pop(task, None)
            raise
        log.info(
            "request %s: poke task %d on %s reg %d value %#x",
            request.request_id,
            task,
            host.name,
            request.reg,
            request.value,
        )
        if isinstance(done.result, _Deferred):
            raise done.result.error
        return ptrace_pb2.PokeUserResponse(generation=done.generation)

    @rpc
    async def PeekUser(self, request: Any, context: Any) -> Any:
        self._guard(context, request, Action.PTRACE_READ)
        host, task, session = self._lookup(request)
        att = self._attachment(host, task, session, create=False)
        return ptrace_pb2.PeekUserResponse(value=ptrace.peek(att.state, request.reg))

    @stream_rpc
    async def Traps(self, request: Any, context: Any) -> AsyncIterator[Any]:
        who = self._guard(context, request, Action.PTRACE_READ)
        host = self.fleet.host(convert.name(request.host, "host"))
        task = convert.task(request.task)

        def accept(item: Any) -> bool:
            return (
                isinstance(item, ptrace_pb2.Trap) and item.host == host.name and item.task == task
            )

        sub = self.fleet.bus.subscribe(accept, TRAPS_ONLY, host=host.name, identity=who.name)
        try:
            while True:
                yield await sub.get()
        finally:
            self.fleet.bus.unsubscribe(sub)
