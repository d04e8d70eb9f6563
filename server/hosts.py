"""One host in the arbiter: its committed reads and its typed operations.

The pipeline's shell (``server/host_shell.py``) runs every change; ``server/tracing.py``
adds the ptrace operations. The operations here are what the services call: each is one
change through the pipeline (its ledger update, and what it undoes if the change is rolled
back), logs it and publishes its event, so a servicer only converts protobuf to core
values and back, checks authorization and calls one method. Readers use ``committed()``,
``holders()`` and ``used()``, which never show a change that is still waiting for
acknowledgements.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from dataclasses import dataclass

from hwbp.errors import HostShrinkBlocked, HwbpError, InvalidArgument
from hwbp.model import Assignment, BpType, Breakpoint, Reservation, Scope, Target
from hwbp.pipeline import AgentConnected, AgentGone, Answered, Link, Outcome
from hwbp.processes import task_keys
from hwbp.registers import RegisterFile, RegisterImage
from hwbp.server.attachments import Attachment, flush_attachment
from hwbp.server.links import AckResult, AgentChannel
from hwbp.server.store.base import id_order
from hwbp.server.tracing import TracingHost
from hwbp.v1 import types_pb2
from hwbp.wire import convert

__all__ = ["ENOSPC", "Attachment", "Edit", "Host", "Outcome"]

log = logging.getLogger("hwbp.server")
ENOSPC = 28


@dataclass(frozen=True, slots=True)
class Edit:
    """What a modify changes in a breakpoint (None: kept as it is)."""

    addr: int | None = None
    length: int | None = None
    type: BpType | None = None
    enabled: bool | None = None

    def fields(self) -> dict[str, object]:
        """The fields it changes, by name (empty: it changes nothing)."""
        named: dict[str, object] = {
            "addr": self.addr,
            "length": self.length,
            "type": self.type,
            "enabled": self.enabled,
        }
        return {k: v for k, v in named.items() if v is not None}

    def applied_to(self, bp: Breakpoint) -> Breakpoint:
        return dataclasses.replace(
            bp,
            addr=bp.addr if self.addr is None else self.addr,
            length=bp.length if self.length is None else self.length,
            type=bp.type if self.type is None else self.type,
            enabled=bp.enabled if self.enabled is None else self.enabled,
        )


class Host(TracingHost):
    """One host: its ledger, agents and pipeline, read and changed through typed calls."""

    # --- agents ------------------------------------------------------------------

    def link_state(self, cpu: int) -> tuple[Link, str]:
        """The CPU's link, and why it is down: an offline CPU whose agent's hello was
        refused says why (the operator sees it in the inventory, the agent in its log)."""
        state = self.pipeline.cpus[cpu]
        if state.state is Link.OFFLINE and cpu in self.refusals:
            return state.state, f"hello refused: {self.refusals[cpu]}"
        return state.state, state.reason

    def resize(self, ncpus: int) -> None:
        """Its agents now report ``ncpus`` CPUs: more are added offline (their agents
        resync them), fewer are refused while a removed CPU holds a reservation or still
        has an agent stream (``HostShrinkBlocked`` names which)."""
        old = self.ncpus
        streams = [i for i in range(ncpus, old) if self.channels[i] is not None]
        if streams:
            raise HostShrinkBlocked(
                f"host {self.name} cannot shrink from {old} to {ncpus} cpus: cpu "
                f"{', '.join(map(str, streams))} still {'has' if len(streams) == 1 else 'have'} "
                "an agent stream",
                host=self.name,
                known=old,
                said=ncpus,
            )
        self.pipeline.resize(ncpus)
        self.ncpus = ncpus
        if ncpus < old:
            del self.channels[ncpus:], self.backends[ncpus:]
        else:
            self.channels += [None] * (ncpus - old)
            self.backends += [""] * (ncpus - old)
        self.refusals.clear()

    def live_channel(self, cpu: int) -> AgentChannel | None:
        """The CPU's agent, if its stream is open and the pipeline still counts on it."""
        channel = self.channels[cpu]
        if channel is None or not channel.open:
            return None
        state = self.pipeline.cpus[cpu]
        if state.link != channel.link or state.state not in (Link.RESYNCING, Link.LIVE):
            return None
        return channel

    def connect(self, channel: AgentChannel) -> None:
        """A hello was accepted: register the stream and resync its CPU."""
        old = self.channels[channel.cpu]
        if old is not None and old is not channel:
            old.close("replaced by a new connection")
        self.refusals.pop(channel.cpu, None)
        self.channels[channel.cpu] = channel
        self.backends[channel.cpu] = channel.backend
        self._feed(AgentConnected(channel.cpu, channel.link, _now(), deltas=channel.deltas))

    def disconnect(self, channel: AgentChannel, reason: str) -> bool:
        """The stream ended; returns whether it was the CPU's current one."""
        channel.close()
        if not self.current(channel):
            return False
        self.channels[channel.cpu] = None
        self._feed(AgentGone(channel.cpu, channel.link, reason, _now()))
        return True

    def answered(self, channel: AgentChannel, result: AckResult) -> None:
        channel.answered(result)
        if self.current(channel):
            self._feed(
                Answered(
                    channel.cpu,
                    channel.link,
                    result.generation,
                    result.ok,
                    _now(),
                    result.reason,
                    result.errno,
                    needs_full=result.needs_full,
                )
            )

    def busy(self) -> list[str]:
        """What keeps this host from being forgotten, in words (empty: nothing)."""
        held = list(self.ledger)
        why = []
        if held:
            names = ", ".join(r.describe() for r in held[:16])
            more = f" and {len(held) - 16} more" if len(held) > 16 else ""
            why.append(f"it holds {names}{more}; release them first")
        if self.attachments:
            tasks = ", ".join(
                f"task {t} (session {a.session or '-'}, {a.owner})"
                for t, a in sorted(self.attachments.items())
            )
            why.append(f"ptrace keeps {tasks}; flush them first")
        streams = [i for i, c in enumerate(self.channels) if c is not None]
        if streams:
            cpus = ", ".join(map(str, streams))
            have = "has" if len(streams) == 1 else "have"
            why.append(f"cpu {cpus} still {have} an agent; stop its agents first")
        if not self.settled:
            why.append("a change is in flight")
        return why

    # --- committed reads ---------------------------------------------------------

    def committed(self) -> list[Reservation]:
        """Every committed reservation in admission order (not the change in flight)."""
        view = self.pipeline.committed_view()
        if not view:
            return list(self.ledger)
        out = []
        for res in self.ledger:
            if res.id in view:
                old = view[res.id]
                if old is not None:
                    out.append(old)
            else:
                out.append(res)
        shown = {r.id for r in out}
        released = [r for rid, r in view.items() if r is not None and rid not in shown]
        if released:
            out = sorted(out + released, key=lambda r: id_order(r.id))
        return out

    def holders(self, cpu: int) -> list[Reservation]:
        """Committed reservations that count on ``cpu``."""
        if cpu not in self.pipeline.pending_cpus():
            return self.ledger.holders(cpu)
        return [r for r in self.committed() if r.target.applies_to(cpu)]

    def used(self, cpu: int, holders: list[Reservation] | None = None) -> int:
        """The kernel's formula (CPU-bound + busiest task) over committed holders."""
        if cpu not in self.pipeline.pending_cpus():
            return self.ledger.used(cpu)
        cls = self.profile.classes[0]
        here = [
            r
            for r in (self.holders(cpu) if holders is None else holders)
            if self.profile.slot_class(r.bp.type) is cls
        ]
        # Each thread is a task; a process-wide breakpoint counts on every one of them.
        per_task = Counter(k for r in here if not r.target.cpu_bound for k in task_keys(r.target))
        return sum(1 for r in here if r.target.cpu_bound) + max(per_task.values(), default=0)

    def expected_image(self, cpu: int) -> RegisterImage:
        """What the CPU should hold (committed state) for the task its agent reports."""
        regs = RegisterFile(self.profile)
        channel = self.channels[cpu]
        current = channel.image.current_task if channel and channel.image else None
        regs.switch(current)
        if cpu not in self.pipeline.pending_cpus():
            return regs.load(self.ledger.installable(cpu, current))
        return regs.load(
            [
                Assignment(r.id, r.target.task, r.bp, r.target.scope is Scope.PROCESS)
                for r in self.holders(cpu)
            ]
        )

    # --- reservations --------------------------------------------------------------

    async def reserve(
        self,
        request_id: str,
        target: Target,
        bp: Breakpoint,
        *,
        owner: str,
        session: str | None = None,
        key: str = "",
        fingerprint: str = "",
    ) -> Outcome[Reservation]:
        """Admit a breakpoint. ``key`` (already scoped to the caller) makes a retry join
        this change, or get its outcome once it committed; ``fingerprint`` is the request
        the key was first used with."""

        def apply() -> tuple[Reservation, range | tuple[int, ...]]:
            res = Reservation(
                id=self.new_id(),
                host=self.name,
                target=target,
                bp=bp,
                owner=owner,
                session=session,
                reserved_at=time.time(),
            )
            self.ledger.reserve(res)
            self.draft(self._change_event(types_pb2.EVENT_KIND_RESERVED, request_id, res))
            return res, self.ledger.affected_cpus(target)

        try:
            outcome = await self.commit(request_id, apply, key=key, fingerprint=fingerprint)
        except HwbpError as err:
            log.info(
                "request %s: reserve on %s %s refused: %s",
                request_id,
                self.name,
                target.describe(),
                err.reason,
            )
            raise
        res = outcome.result
        log.info(
            "request %s: reserve %s on %s %s addr=%#x len=%d type=%s -> generation %d%s",
            request_id,
            res.id,
            self.name,
            target.describe(),
            bp.addr,
            bp.length,
            bp.type.value,
            outcome.generation,
            f", pending on cpus {list(outcome.pending)}" if outcome.pending else "",
        )
        return outcome

    async def release(self, request_id: str, res_id: str) -> Outcome[Reservation]:
        """Release a reservation; the outcome carries it as it was."""

        def apply() -> tuple[Reservation, range | tuple[int, ...]]:
            gone = self.ledger.release(res_id)
            self.draft(self._change_event(types_pb2.EVENT_KIND_RELEASED, request_id, gone))
            return gone, self.ledger.affected_cpus(gone.target)

        outcome = await self.commit(request_id, apply)
        log.info(
            "request %s: release %s on %s -> generation %d",
            request_id,
            res_id,
            self.name,
            outcome.generation,
        )
        return outcome

    async def modify(self, request_id: str, res_id: str, edit: Edit) -> Outcome[Reservation]:
        """Change a reservation in place; on any failure it stays as it was."""
        if not edit.fields():
            raise InvalidArgument("modify names no field to change (addr, len, type, enabled)")

        def apply() -> tuple[Reservation, range | tuple[int, ...]]:
            new = self.ledger.modify(res_id, edit.applied_to(self.ledger.get(res_id).bp))
            self.draft(self._change_event(types_pb2.EVENT_KIND_MODIFIED, request_id, new))
            return new, self.ledger.affected_cpus(new.target)

        outcome = await self.commit(request_id, apply)
        log.info(
            "request %s: modify %s on %s %s -> generation %d",
            request_id,
            res_id,
            self.name,
            edit.fields(),
            outcome.generation,
        )
        return outcome

    # --- sessions and tasks that end -----------------------------------------------

    def holds_session(self, sid: str) -> bool:
        """Whether anything here belongs to session ``sid`` (a reservation, a trace)."""
        return bool(self.ledger.by_session(sid)) or any(
            a.session == sid for a in self.attachments.values()
        )

    async def release_session(self, sid: str, reason: str, owner: str = "") -> int:
        """Release what session ``sid`` holds here, and every task it traced (as their
        tracer's exit would); returns how many breakpoints were released. The
        lease_expired event names the session, its ``owner`` and the reservation ids."""
        request_id = f"session:{sid}"

        def apply() -> tuple[int, range]:
            mine = [r for r in self.ledger.by_session(sid) if r.ptrace_index is None]
            traced = [t for t, a in self.attachments.items() if a.session == sid]
            # The session's owner; without one, whoever owned what it held.
            held = {r.owner for r in mine} | {self.attachments[t].owner for t in traced}
            owners = {owner} if owner else {o for o in held if o}
            ids = [r.id for r in mine] + _ptrace_ids(self, traced)
            for res in mine:
                self.ledger.release(res.id)
            count = len(mine)
            for task in traced:
                count += flush_attachment(self, task)
            ev = types_pb2.Event(
                kind=types_pb2.EVENT_KIND_LEASE_EXPIRED,
                host=self.name,
                request_id=request_id,
                reason=reason,
                session=sid,
                owner=",".join(sorted(owners)),
                reservation_ids=ids,
            )
            self.draft(ev)
            return count, range(self.ncpus)

        return await self.change(request_id, apply)

    async def exit_task(self, request_id: str, task: int) -> int:
        """A task exited: its task breakpoints and ptrace state go, like the kernel's
        flush. Returns how many breakpoints were released."""
        mine = [r.id for r in self.ledger.by_task(task) if r.ptrace_index is None]
        saved = self.attachments.get(task)

        def apply() -> tuple[int, range]:
            gone = [rid for rid in mine if rid in self.ledger]
            ids = gone + _ptrace_ids(self, [task])
            for rid in gone:
                self.ledger.release(rid)
            released = len(mine) + flush_attachment(self, task)
            ev = types_pb2.Event(
                kind=types_pb2.EVENT_KIND_TASK_EXITED,
                host=self.name,
                task=task,
                request_id=request_id,
                reason=f"{released} released",
                reservation_ids=ids,
            )
            self.draft(ev)
            return released, range(self.ncpus)

        def undo() -> None:
            if saved is not None:
                self.attachments[task] = saved

        released = await self.change(request_id, apply, undo)
        log.info(
            "request %s: task %d on %s exited, %d released", request_id, task, self.name, released
        )
        return released

    def _change_event(
        self, kind: types_pb2.EventKind.ValueType, request_id: str, res: Reservation
    ) -> types_pb2.Event:
        """A reservation reserved, modified or released, naming whose it is."""
        ev = types_pb2.Event(
            kind=kind,
            host=self.name,
            request_id=request_id,
            task=res.target.task,
            cpu=res.target.cpu,
            session=res.session or "",
            owner=res.owner,
            reservation_ids=[res.id],
        )
        ev.reservation.CopyFrom(convert.reservation_to(res))
        return ev


def _ptrace_ids(host: Host, tasks: list[int]) -> list[str]:
    """The reservations behind the ptrace breakpoints of traced ``tasks`` (flushed next)."""
    return [
        rid
        for task in tasks
        if (att := host.attachments.get(task)) is not None
        for _, rid in sorted(att.reservations.items())
        if rid in host.ledger
    ]


def _now() -> float:
    return asyncio.get_running_loop().time()
