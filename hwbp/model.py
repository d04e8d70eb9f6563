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
    # Every thread of process T, present and future: one (tid, cpu -1) breakpoint per
    # thread with perf's inherit, so each thread counts it as one of its own.
    PROCESS = "process"

    @property
    def is_task(self) -> bool:
        return self in _TASK_SCOPES


_TASK_SCOPES = (Scope.TASK, Scope.TASK_CPU, Scope.PROCESS)


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
    # PROCESS: the threads (tids) that existed when it was reserved, sorted; the ledger
    # counts the breakpoint on each of them and on every thread created later.
    threads: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self._check_threads()
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

    def _check_threads(self) -> None:
        if self.scope is not Scope.PROCESS:
            if self.threads:
                raise InvalidScope(
                    f"scope {self.scope.value} takes no threads (got {len(self.threads)})",
                    scope=self.scope.value,
                )
            return
        bad = [t for t in self.threads if t <= 0]
        if bad:
            raise InvalidTask(f"a thread id must be > 0, got {bad[0]}", task=bad[0])
        threads = tuple(sorted(set(self.threads)))
        if not threads and self.task is not None:
            threads = (self.task,)  # not told: its main thread, whose tid is the pid
        if threads != self.threads:
            object.__setattr__(self, "threads", threads)

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
        if self.scope is Scope.PROCESS:
            return f"process {self.task}"
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
    process: bool = False  # task is a process: every thread of it, present and future
