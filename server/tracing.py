"""A host's traced tasks: PTRACE_POKEUSER / PEEKUSER on u_debugreg, attach, detach, flush.

The register semantics are the core's (hwbp.ptrace); here each traced task's ptrace
breakpoints become task-scoped reservations in the host's ledger, so they compete for
slots exactly like every other breakpoint and reach the agents in the same reloads. As in
the kernel, a detach keeps them; a flush (or the task's exit) drops them. Each operation
is one change through the pipeline: what it did to an attachment is undone with it if the
change is rolled back, and written with it when it commits.
"""

from __future__ import annotations

import logging

from hwbp import ptrace
from hwbp.errors import AlreadyAttached, HwbpError, NotAttached, NotOwner
from hwbp.server.attachments import Attachment, LedgerRegistrar, flush_attachment
from hwbp.server.host_shell import HostShell

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


class TracingHost(HostShell):
    """The ptrace operations of a host (``Host`` has them all)."""

    def attachment(self, task: int, session: str, *, create: bool, owner: str = "") -> Attachment:
        """The task's attachment, traced by ``session``; with ``create``, attach it (a
        task detached earlier is re-attached with its registers as they were)."""
        att = self.attachments.get(task)
        if att is None or not att.attached:
            if not create:
                raise NotAttached(
                    f"task {task} on host {self.name} is not attached", host=self.name, task=task
                )
            if att is None:
                att = self.attachments[task] = Attachment(session=session, owner="")
            else:
                self.dirty_tasks.add(task)  # its kept state changes hands: write that
            att.session, att.owner, att.attached = session, owner or "hwbpctl", True
            return att
        if att.session != session:
            raise NotOwner(
                f"task {task} on host {self.name} is traced by "
                f"{'session ' + att.session if att.session else 'a persistent attachment'}",
                host=self.name,
                task=task,
            )
        return att

    async def attach(self, request_id: str, task: int, session: str, owner: str) -> bool:
        """Trace ``task`` for ``session`` (``owner`` names the tracer); True if that
        session already traced it. Decided in the pipeline, so a racing attach cannot
        slip in between, and written with the change: an acknowledged attach survives a
        restart."""
        made: list[Attachment] = []  # a new attachment, to drop on rollback
        retraced: list[tuple[Attachment, _Tracer]] = []  # a kept one re-attached, as it was

        def apply() -> tuple[bool, tuple[int, ...]]:
            existing = self.attachments.get(task)
            if existing is not None and existing.attached:
                if existing.session == session:
                    return True, ()
                raise AlreadyAttached(
                    f"task {task} on host {self.name} is already traced", host=self.name, task=task
                )
            if existing is not None:  # detached, state kept: its new tracer now covers it
                retraced.append((existing, _who(existing)))
            att = self.attachment(task, session, create=True, owner=owner)
            if existing is None:
                made.append(att)
            self.dirty_tasks.add(task)
            return False, ()  # no register changes until a poke

        def undo() -> None:
            if made and self.attachments.get(task) is made[0]:
                del self.attachments[task]
            for att, before in retraced:
                _restore(att, before)

        if await self.change(request_id, apply, undo):
            return True
        log.info(
            "request %s: attached task %d on %s (session %s)",
            request_id,
            task,
            self.name,
            session or "-",
        )
        return False

    async def detach(self, request_id: str, task: int, session: str) -> int:
        """PTRACE_DETACH keeps the task's breakpoints, DR6 and DR7 (and their slots): the
        kernel flushes them only at exit and exec. Nothing is released; returns how many
        ptrace breakpoints are kept."""
        att = self.attachment(task, session, create=False)

        def apply() -> tuple[int, tuple[int, ...]]:
            att.attached = False
            self.dirty_tasks.add(task)
            if not att.reservations and att.state == ptrace.PtraceState():
                del self.attachments[task]  # nothing to keep
            return len(att.reservations), ()

        def undo() -> None:
            att.attached = True
            self.attachments[task] = att

        kept = await self.change(request_id, apply, undo)
        log.info(
            "request %s: detached task %d on %s, %d ptrace breakpoints kept",
            request_id,
            task,
            self.name,
            kept,
        )
        return kept

    async def flush(self, request_id: str, task: int, session: str) -> int:
        """flush_ptrace_hw_breakpoint(), as the task's exit or exec would: all four ptrace
        breakpoints go, DR6 and DR7 are cleared, and the task is no longer traced.
        Returns how many were released."""
        att = self.attachments.get(task)
        if att is None:
            raise NotAttached(
                f"task {task} on host {self.name} has no ptrace state to flush",
                host=self.name,
                task=task,
            )
        if att.attached and att.session != session:
            self.attachment(task, session, create=False)  # names the tracer

        def apply() -> tuple[int, range]:
            return flush_attachment(self, task), range(self.ncpus)

        def undo() -> None:
            self.attachments[task] = att

        released = await self.change(request_id, apply, undo)
        log.info(
            "request %s: flushed task %d on %s, %d released", request_id, task, self.name, released
        )
        return released

    async def poke(
        self, request_id: str, task: int, session: str, reg: int, value: int, *, owner: str
    ) -> int:
        """PTRACE_POKEUSER of debug register ``reg``; returns the generation that carries
        it. Without a session it attaches the task (``owner`` names the tracer)."""
        fresh = task not in self.attachments
        known = self.attachments.get(task)
        before = _who(known) if known is not None else None
        att = self.attachment(task, session, create=not session, owner=owner)
        saved_state, saved_res = att.state, dict(att.reservations)
        registrar = LedgerRegistrar(self.new_id, self, task, att)

        def restore() -> None:
            att.state, att.reservations = saved_state, dict(saved_res)
            if fresh:
                self.attachments.pop(task, None)
            elif before is not None:
                _restore(att, before)  # a re-attach by this poke is undone too

        def apply() -> tuple[_Deferred | None, range]:
            self.dirty_tasks.add(task)
            try:
                att.state = ptrace.poke(att.state, reg, value, registrar)
            except HwbpError as err:
                partial = ptrace.state_after(err)
                if partial is None or partial == saved_state:
                    restore()
                    raise
                att.state = partial  # the kernel keeps bps its first DR7 pass created
                return _Deferred(err), range(self.ncpus)
            return None, range(self.ncpus)

        try:
            done = await self.commit(request_id, apply, restore)
        except HwbpError:
            if fresh and not att.reservations:
                self.attachments.pop(task, None)
            raise
        log.info(
            "request %s: poke task %d on %s reg %d value %#x",
            request_id,
            task,
            self.name,
            reg,
            value,
        )
        if done.result is not None:
            raise done.result.error
        return done.generation

    def peek(self, task: int, session: str, reg: int) -> int:
        """PTRACE_PEEKUSER of debug register ``reg`` (or DR6, DR7) of a traced task."""
        return ptrace.peek(self.attachment(task, session, create=False).state, reg)
