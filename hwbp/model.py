"""Values of the domain: breakpoints, scopes, targets and reservations (all frozen)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from hwbp.errors import InvalidCpu, InvalidScope, InvalidTask


class _Member(Enum):
    """Members are singletons compared by identity, so identity hashing is equivalent;
    Enum's own hashes the member's name in Python on every dict lookup, and the ledger,
    the counters and the wire conversions look these up for every breakpoint."""

    __hash__ = object.__hash__


class BpType(_Member):
    """perf's bp_type: what kind of access triggers the breakpoint."""

    EXEC = "x"
    WRITE = "w"
    RW = "rw"
    READ = "r"  # refused on x86; kept so the refusal can name it

    @property
    def is_data(self) -> bool:
        """R or W bit set: the kernel's TYPE_DATA slot class (else TYPE_INST)."""
        return self is not BpType.EXEC


class SlotClass(_Member):
    """The kernel's slot classes (find_slot_idx); x86 shares one pool for both."""

    INST = "inst"
    DATA = "data"


class Scope(_Member):
    """Where a breakpoint applies, as the kernel's (pid, cpu) pair."""

    SYSTEM = "system"  # every CPU of the host, all-or-nothing
    CPU = "cpu"  # pid -1, cpu c
    TASK = "task"  # pid T, cpu -1
    TASK_CPU = "task+cpu"  # pid T, cpu c

    @property
    def is_task(self) -> bool:
        return self in _TASK_SCOPES


_TASK_SCOPES = (Scope.TASK, Scope.TASK_CPU)


class AccessType(_Member):
    READ = "r"
    WRITE = "w"
    EXEC = "x"


@dataclass(frozen=True, slots=True)
class Breakpoint:
    """What a debug register watches. Validated against a profile by ``validate``."""

    addr: int
    length: int
    type: BpType
    enabled: bool = True
    kernel: bool = False  # the request asked for a kernel address explicitly
    # Armed by the task's tracer itself (hwbp-gdbserver), so agents account it but never
    # arm it: one breakpoint, armed once. Task scopes only.
    tracer_applied: bool = False


@dataclass(frozen=True, slots=True)
class Target:
    """Where a reservation applies. The shape (which of cpu/task is set) is checked here."""

    scope: Scope
    cpu: int | None = None
    task: int | None = None

    def __post_init__(self) -> None:
        wants_cpu = self.scope in (Scope.CPU, Scope.TASK_CPU)
        wants_task = self.scope.is_task
        if wants_cpu and self.cpu is None:
            raise InvalidScope(f"scope {self.scope.value} needs a cpu", scope=self.scope.value)
        if not wants_cpu and self.cpu is not None:
            raise InvalidScope(
                f"scope {self.scope.value} takes no cpu (got {self.cpu})", scope=self.scope.value
            )
        if wants_task and self.task is None:
            raise InvalidScope(f"scope {self.scope.value} needs a task", scope=self.scope.value)
        if not wants_task and self.task is not None:
            raise InvalidScope(
                f"scope {self.scope.value} takes no task (got {self.task})", scope=self.scope.value
            )
        if self.cpu is not None and self.cpu < 0:
            raise InvalidCpu(f"cpu must be >= 0, got {self.cpu}", cpu=self.cpu)
        if self.task is not None and self.task <= 0:
            raise InvalidTask(f"task must be a pid > 0, got {self.task}", task=self.task)

    @property
    def cpu_bound(self) -> bool:
        """No task: counts in cpu_pinned and stays installed across context switches."""
        return not self.scope.is_task

    def applies_to(self, cpu: int) -> bool:
        return self.cpu is None or self.cpu == cpu

    def describe(self) -> str:
        if self.scope is Scope.SYSTEM:
            return "system"
        if self.scope is Scope.CPU:
            return f"cpu {self.cpu}"
        if self.scope is Scope.TASK:
            return f"task {self.task}"
        return f"task {self.task} on cpu {self.cpu}"


@dataclass(frozen=True, slots=True)
class Reservation:
    """One admitted breakpoint: who holds it, where, and what it watches."""

    id: str
    host: str
    target: Target
    bp: Breakpoint
    owner: str = ""
    session: str | None = None
    ptrace_index: int | None = None  # 0..3 when made through the ptrace facade
    # When it was admitted (seconds since the epoch, stamped by the shell that made it;
    # None when not known, e.g. restored from a ledger). Not part of its identity.
    reserved_at: float | None = field(default=None, compare=False)

    def describe(self) -> str:
        who = self.owner or "anonymous"
        return f"{self.id} ({who}, {self.target.describe()})"


@dataclass(frozen=True, slots=True)
class Assignment:
    """A breakpoint that applies to one CPU, as sent to that CPU's agent."""

    reservation_id: str
    task: int | None  # None: CPU-bound
    bp: Breakpoint
