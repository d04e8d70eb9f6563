"""Tasks traced through the ptrace facade, and how their breakpoints enter the ledger.

An attached task's ptrace debug registers are task-scoped reservations in its host's
ledger, so they compete for slots like every other breakpoint and reach the agents in
the same reloads. Kept apart from the services so the Ptrace, Sessions and Simulation
services can all end an attachment without importing one another.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from hwbp.ledger import HostLedger
from hwbp.model import Breakpoint, Reservation, Scope, Target
from hwbp.ptrace import PtraceState


@dataclass
class Attachment:
    """A task's ptrace register state and its reservations by ptrace index, and who
    traces it (or last did: a detached task keeps its state, as the kernel's thread does).

    The state lives until flushed: by the task's exit, an explicit Flush, or the end of
    the session that traced it last (a service rule, so a dead client never leaks slots).
    """

    session: str  # "" for a persistent (CLI) attachment
    owner: str
    state: PtraceState = field(default_factory=PtraceState)
    reservations: dict[int, str] = field(default_factory=dict)
    attached: bool = True  # False after PTRACE_DETACH (persisted with the attachment)


class TracedHost(Protocol):
    name: str
    ledger: HostLedger
    attachments: dict[int, Attachment]
    dirty_tasks: set[int]


class LedgerRegistrar:
    """hwbp.ptrace.Registrar on a host ledger: index i is a task-scoped reservation."""

    def __init__(
        self, new_id: Callable[[], str], host: TracedHost, task: int, att: Attachment
    ) -> None:
        self.new_id, self.host, self.task, self.att = new_id, host, task, att

    def register(self, index: int, bp: Breakpoint) -> None:
        res = Reservation(
            id=self.new_id(),
            host=self.host.name,
            target=Target(Scope.TASK, task=self.task),
            bp=bp,
            owner=self.att.owner,
            session=self.att.session or None,
            ptrace_index=index,
            reserved_at=time.time(),
        )
        self.host.ledger.reserve(res)
        self.att.reservations[index] = res.id

    def modify(self, index: int, bp: Breakpoint) -> None:
        self.host.ledger.modify(self.att.reservations[index], bp)

    def unregister(self, index: int) -> None:
        self.host.ledger.release(self.att.reservations.pop(index))


def flush_attachment(host: TracedHost, task: int) -> int:
    """flush_ptrace_hw_breakpoint(): drop a task's ptrace breakpoints and state (an
    explicit flush, the task's exit, the end of its tracer's session); returns how many.
    A detach does not come here: the kernel keeps a detached task's breakpoints."""
    att = host.attachments.pop(task, None)
    if att is None:
        return 0
    host.dirty_tasks.add(task)
    for rid in att.reservations.values():
        if rid in host.ledger:
            host.ledger.release(rid)
    return len(att.reservations)
