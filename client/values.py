"""What the SDK hands back: frozen dataclasses, never raw protobufs.

Scopes and breakpoint types reuse the core enums (``hwbp.model``), so ``info.scope`` is
``Scope.TASK_CPU`` and ``info.type.value`` is the CLI's spelling ("x", "w", "rw").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from hwbp.model import BpType, Scope
from hwbp.registers import RegisterImage

__all__ = [
    "AccessResult",
    "BpType",
    "Change",
    "CpuInfo",
    "EventInfo",
    "EventKind",
    "HitInfo",
    "HolderInfo",
    "RegisterImage",
    "ReservationFields",
    "ReservationInfo",
    "Scope",
    "SessionSummary",
    "SlotHolder",
    "TrapInfo",
]


class EventKind(Enum):
    """What a watch event reports (the proto's EventKind without its prefix)."""

    HIT = "hit"
    RESERVED = "reserved"
    RELEASED = "released"
    MODIFIED = "modified"
    RELOAD = "reload"
    NACK = "nack"
    AGENT_ONLINE = "agent_online"
    AGENT_OFFLINE = "agent_offline"
    LEASE_EXPIRED = "lease_expired"
    TASK_EXITED = "task_exited"
    CONTEXT_SWITCH = "context_switch"
    AGENT_FENCED = "agent_fenced"  # missed its ack deadline: its stream was closed
    RESYNC_REFUSED = "resync_refused"  # the agent (its kernel) refused the resynced state
    SUBSCRIBED = "subscribed"  # first of a watch that asked: every later event reaches it
    UNSPECIFIED = "unspecified"


@dataclass(frozen=True, slots=True)
class ReservationInfo:
    """One reservation as the arbiter holds it."""

    id: str
    host: str
    scope: Scope
    cpu: int | None
    task: int | None
    addr: int
    len: int
    type: BpType
    owner: str
    enabled: bool
    generation: int  # host generation that committed its latest change
    session_id: str  # "" when it persists until released
    kernel: bool = False
    ptrace_index: int | None = None  # 0..3 when made through the ptrace facade
    threads: tuple[int, ...] = ()  # a process's threads when it was reserved
    tracer_applied: bool = False  # armed by its holder (a debugger), accounted by the agents


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """One open session: its owner, its lease, and how much it holds."""

    session_id: str
    owner: str
    ttl: float  # seconds: the lease each keep-alive renews
    lease_left: float  # seconds until it expires unless renewed
    reservations: int  # committed reservations it holds, on every host
    ending: bool  # expired or closing: what it holds is being released
    hosts: tuple[str, ...]  # the hosts it holds something on


@dataclass(frozen=True, slots=True)
class HolderInfo:
    """Who holds one slot of a CPU."""

    reservation_id: str
    owner: str
    scope: Scope
    cpu: int | None
    task: int | None


@dataclass(frozen=True, slots=True)
class SlotHolder:
    """Who holds one slot of a CPU that refused a reservation (``NoFreeSlot.holders``).

    ``str()`` reads like the arbiter's own description: ``r34 (gdb-alice, cpu 1, session
    s-9, held 12s, lease 8.0s left)``.
    """

    reservation_id: str
    owner: str  # "" when none was given
    session_id: str  # "" when it persists until released (or the arbiter did not say)
    scope: Scope
    cpu: int | None
    task: int | None
    age: float | None = None  # seconds since it was reserved; None: not known
    lease_left: float | None = None  # seconds its session's lease has left; None: no lease

    @property
    def where(self) -> str:
        if self.scope is Scope.SYSTEM:
            return "system"
        if self.scope is Scope.CPU:
            return f"cpu {self.cpu}"
        if self.scope is Scope.TASK:
            return f"task {self.task}"
        if self.scope is Scope.PROCESS:
            return f"process {self.task}"
        return f"task {self.task} on cpu {self.cpu}"

    def __str__(self) -> str:
        parts = [self.owner or "anonymous", self.where]
        if self.session_id:
            parts.append(f"session {self.session_id}")
        if self.age is not None:
            parts.append(f"held {seconds(self.age)}")
        if self.lease_left is not None:
            parts.append(f"lease {seconds(self.lease_left)} left")
        return f"{self.reservation_id} ({', '.join(parts)})"


def seconds(value: float) -> str:
    """A duration for people: 0.4s, 12s, 5m, 2.5h."""
    if value < 10:
        return f"{value:.1f}s"
    if value < 120:
        return f"{value:.0f}s"
    if value < 7200:
        return f"{value / 60:.0f}m"
    return f"{value / 3600:.1f}h"


@dataclass(frozen=True, slots=True)
class CpuInfo:
    """One CPU of the inventory: who holds its slots, reported against expected registers."""

    host: str
    cpu: int
    online: bool
    generation: int
    acked_generation: int
    current_task: int | None
    reported: RegisterImage
    expected: RegisterImage
    mismatch: bool
    used: int
    slots: int
    holders: tuple[HolderInfo, ...]
    backend: str
    detail: str
    link: str = ""  # "live", "resyncing", "fenced" or "offline"
    link_reason: str = ""  # why it is fenced or offline, when the arbiter knows
    pending: bool = False  # a change touching this CPU is admitted but not committed

    @property
    def dr(self) -> tuple[int, int, int, int]:
        return self.reported.dr

    @property
    def dr7(self) -> int:
        return self.reported.dr7


@dataclass(frozen=True, slots=True)
class ForgottenHost:
    """A host retired from the inventory and the ledger (``forget_host``), as it was."""

    host: str
    ncpus: int
    generation: int


@dataclass(frozen=True, slots=True)
class HitInfo:
    """One breakpoint that fired."""

    host: str
    cpu: int
    task: int | None
    reservation_id: str
    register: int  # the physical DRi it came through
    ptrace_index: int | None
    addr: int  # the breakpoint's address
    access_addr: int
    ip: int
    dr6: int
    seq: int
    tid: int | None = None  # the thread that made the access, when the kernel said (perf)


@dataclass(frozen=True, slots=True)
class AccessResult:
    """What a simulated memory access did: the hits and DR6 after them."""

    hit: bool
    dr6: int
    hits: tuple[HitInfo, ...]

    @property
    def reservation_id(self) -> str | None:
        return self.hits[0].reservation_id if self.hits else None

    @property
    def register(self) -> int | None:
        return self.hits[0].register if self.hits else None


@dataclass(frozen=True, slots=True)
class EventInfo:
    """One event of ``watch``: a hit, a reload, a NACK, a release, ..."""

    kind: EventKind
    host: str
    cpu: int | None
    task: int | None
    generation: int
    request_id: str
    seq: int
    reason: str = ""
    reservation: ReservationInfo | None = None
    hit: HitInfo | None = None
    session: str = ""  # whose session (released, lease_expired)
    owner: str = ""  # whose reservations (released, lease_expired)
    reservation_ids: tuple[str, ...] = ()  # what was released (lease_expired, task_exited)


@dataclass(frozen=True, slots=True)
class TrapInfo:
    """A ptrace breakpoint that fired in a traced task (what waitpid would report)."""

    host: str
    task: int
    ptrace_index: int
    addr: int
    cpu: int
    dr6: int  # the task's virtual DR6 after the hit
    ip: int
    seq: int


class ReservationFields:
    """Read-only views of ``info`` so a handle (or a change) reads like its reservation."""

    @property
    def info(self) -> ReservationInfo:
        raise NotImplementedError

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def host(self) -> str:
        return self.info.host

    @property
    def scope(self) -> Scope:
        return self.info.scope

    @property
    def cpu(self) -> int | None:
        return self.info.cpu

    @property
    def task(self) -> int | None:
        return self.info.task

    @property
    def addr(self) -> int:
        return self.info.addr

    @property
    def len(self) -> int:
        return self.info.len

    @property
    def type(self) -> BpType:
        return self.info.type

    @property
    def owner(self) -> str:
        return self.info.owner

    @property
    def enabled(self) -> bool:
        return self.info.enabled

    @property
    def generation(self) -> int:
        return self.info.generation

    @property
    def session_id(self) -> str:
        return self.info.session_id

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.info!r}>"


@dataclass(frozen=True)
class Change(ReservationFields):
    """What a committed reserve, release or modify did, and where it is not yet applied.

    It reads like the reservation it changed (``change.addr``, ``change.generation``: the
    host generation that committed it). A change commits once every connected agent
    acknowledged it; CPUs whose agent is offline or fenced get it when they resync, so
    ``pending_cpus`` is where the registers do not yet say what the arbiter says.
    """

    reservation: ReservationInfo
    applied_cpus: tuple[int, ...] = ()
    pending_cpus: tuple[int, ...] = ()

    @property
    def info(self) -> ReservationInfo:
        return self.reservation

    @property
    def pending(self) -> bool:
        return bool(self.pending_cpus)
