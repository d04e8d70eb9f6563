"""The Ptrace service: PTRACE_POKEUSER / PEEKUSER on u_debugreg, per (host, task).

The register semantics are the core's (hwbp.ptrace); here each traced task's ptrace
breakpoints become task-scoped reservations in the host's ledger, so they compete for
slots exactly like every other breakpoint and are broadcast to the agents. As in the
kernel, a detach keeps them; a flush (or the task's exit) drops them, and so does the
end of the session that traced the task last (the service's own rule: a client that
dies must not leak debug registers).
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


_Tracer = tuple[str, str, bool]  # an attachment's session, owner and attached


def _who(att: Attachment) -> _Tracer:
    return att.session, att.owner, att.attached


def _restore(att: Attachment, before: _Tracer) -> None:
    att.session, att.owner, att.attached = before


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
        """The task's attachment, traced by ``session``; with ``create``, attach it (a
        task detached earlier is re-attached with its registers as they were)."""
        att = host.attachments.get(task)
        if att is None or not att.attached:
            if not create:
                raise NotAttached(
                    f"task {task} on host {host.name} is not attached", host=host.name, task=task
                )
            if session and not owner:
                owner = self.sessions.get(session).owner or session
            if att is None:
                att = host.attachments[task] = Attachment(session=session, owner="")
            else:
                host.dirty_tasks.add(task)  # its kept state changes hands: write that
            att.session, att.owner, att.attached = session, owner or "hwbpctl", True
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
        made: list[Attachment] = []  # a new attachment, to drop on rollback
        retraced: list[tuple[Attachment, _Tracer]] = []  # a kept one re-attached, as it was

        def apply() -> tuple[bool, tuple[int, ...]]:
            """Decided in the pipeline, so a racing Attach cannot slip in between, and
            written with the change: an acknowledged attach survives a restart."""
            existing = host.attachments.get(task)
            if existing is not None and existing.attached:
                if existing.session == session:
                    return True, ()
                raise AlreadyAttached(
                    f"task {task} on host {host.name} is already traced", host=host.name, task=task
                )
            if existing is not None:  # detached, state kept: its new tracer now covers it
                retraced.append((existing, _who(existing)))
            att = self._attachment(host, task, session, create=True, owner=who.name)
            if existing is None:
                made.append(att)
            host.dirty_tasks.add(task)
            return False, ()  # no register changes until a poke

        def undo() -> None:
            if made and host.attachments.get(task) is made[0]:
                del host.attachments[task]
            for att, before in retraced:
                _restore(att, before)

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
        """PTRACE_DETACH keeps the task's breakpoints, DR6 and DR7 (and their slots): the
        kernel flushes them only at exit and exec. Nothing is released here."""
        check_open(self.fleet)
        self._guard(context, request, Action.PTRACE)
        host, task, session = self._lookup(request)
        att = self._attachment(host, task, session, create=False)

        def apply() -> tuple[int, tuple[int, ...]]:
            att.attached = False
            host.dirty_tasks.add(task)
            if not att.reservations and att.state == ptrace.PtraceState():
                del host.attachments[task]  # nothing to keep
            return len(att.reservations), ()

        def undo() -> None:
            att.attached = True
            host.attachments[task] = att

        kept = await host.change(request.request_id, apply, undo)
        log.info(
            "request %s: detached task %d on %s, %d ptrace breakpoints kept",
            request.request_id,
            task,
            host.name,
            kept,
        )
        return ptrace_pb2.DetachResponse(released=0, kept=kept)

    @rpc
    async def Flush(self, request: Any, context: Any) -> Any:
        """flush_ptrace_hw_breakpoint(), as the task's exit or exec would: all four ptrace
        breakpoints go, DR6 and DR7 are cleared, and the task is no longer traced."""
        check_open(self.fleet)
        self._guard(context, request, Action.PTRACE)
        host, task, session = self._lookup(request)
        att = host.attachments.get(task)
        if att is None:
            raise NotAttached(
                f"task {task} on host {host.name} has no ptrace state to flush",
                host=host.name,
                task=task,
            )
        if att.attached and att.session != session:
            self._attachment(host, task, session, create=False)  # names the tracer

        def apply() -> tuple[int, range]:
            return flush_attachment(host, task), range(host.ncpus)

        def undo() -> None:
            host.attachments[task] = att

        released = await host.change(request.request_id, apply, undo)
        log.info(
            "request %s: flushed task %d on %s, %d released",
            request.request_id,
            task,
            host.name,
            released,
        )
        return ptrace_pb2.FlushResponse(released=released)

    @rpc
    async def PokeUser(self, request: Any, context: Any) -> Any:
        check_open(self.fleet)
        who = self._guard(context, request, Action.PTRACE)
        host, task, session = self._lookup(request)
        fresh = task not in host.attachments
        known = host.attachments.get(task)
        before = _who(known) if known is not None else None
        att = self._attachment(host, task, session, create=not session, owner=who.name)
        saved_state, saved_res = att.state, dict(att.reservations)
        registrar = LedgerRegistrar(self.fleet.new_id, host, task, att)

        def restore() -> None:
            att.state, att.reservations = saved_state, dict(saved_res)
            if fresh:
                host.attachments.pop(task, None)
            elif before is not None:
                _restore(att, before)  # a re-attach by this poke is undone too

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
