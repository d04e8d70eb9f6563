"""The kernel's per-slot-class counters (``cpu_pinned``, ``tsk_pinned`` histograms).

Kept apart from the ledger so that ``HostLedger.validate`` can rebuild a fresh copy
from the reservations and compare. A single-CPU admission check costs O(slots), not
O(tasks): the busiest task on a CPU is read off a histogram of per-task counts.
"""

from __future__ import annotations

from hwbp.errors import LedgerCorrupt
from hwbp.model import Scope, Target
from hwbp.processes import task_keys


class _TaskCount:
    """One task's breakpoints: ``every`` with cpu -1, ``on[c]`` pinned to cpu c."""

    __slots__ = ("every", "on")

    def __init__(self) -> None:
        self.every = 0
        self.on: dict[int, int] = {}


CounterState = tuple[list[int], list[int], dict[int, tuple[int, tuple[tuple[int, int], ...]]]]


class SlotCounters:
    """Counters of one slot class on one host, updated incrementally."""

    __slots__ = ("_hist", "_tasks", "_width", "cpu_pinned", "ncpus", "slots")

    def __init__(self, slots: int, ncpus: int) -> None:
        self.slots = slots
        self.ncpus = ncpus
        self.cpu_pinned = [0] * ncpus
        # _hist[c * width + n]: how many tasks have exactly n breakpoints applying to cpu c.
        self._width = slots + 1
        self._hist = [0] * (ncpus * self._width)
        self._tasks: dict[int, _TaskCount] = {}

    def task_on(self, task: int | None, cpu: int) -> int:
        """task_bp_pinned(): the task's breakpoints that apply to ``cpu``."""
        t = self._tasks.get(task) if task is not None else None
        return 0 if t is None else t.every + t.on.get(cpu, 0)

    def max_task(self, cpu: int) -> int:
        """max_task_bp_pinned(): the most breakpoints any one task has on ``cpu``."""
        hist = self._hist
        base = cpu * self._width
        for n in range(self.slots, 0, -1):
            if hist[base + n]:
                return n
        return 0

    def used(self, cpu: int) -> int:
        return self.cpu_pinned[cpu] + self.max_task(cpu)

    def first_full(self, target: Target) -> tuple[int, int] | None:
        """The lowest affected cpu where one more breakpoint would not fit, with its use."""
        cpus: range | tuple[int] = range(self.ncpus) if target.cpu is None else (target.cpu,)
        limit = self.slots - 1  # weight 1: used + 1 must stay <= slots
        pinned = self.cpu_pinned
        if target.cpu_bound:
            for c in cpus:
                used = pinned[c] + self.max_task(c)
                if used > limit:
                    return c, used
            return None
        worst: tuple[int, int] | None = None
        for key in task_keys(target):
            t = self._tasks.get(key)
            every = 0 if t is None else t.every
            on = {} if t is None else t.on
            for c in cpus:
                used = pinned[c] + every + on.get(c, 0)
                if used > limit and (worst is None or (c, -used) < (worst[0], -worst[1])):
                    worst = (c, used)
        return worst

    def fullest_task(self, target: Target, cpu: int) -> int | None:
        """The task key of ``target`` with the most breakpoints on ``cpu`` (the one a
        refusal names), the first such in ``task_keys`` order."""
        keys = task_keys(target)
        if not keys:
            return None
        return max(keys, key=lambda k: (self.task_on(k, cpu), -keys.index(k)))

    def add(self, target: Target, delta: int) -> None:
        """Count (+1) or uncount (-1) one breakpoint of ``target``."""
        if target.cpu_bound:
            if target.cpu is None:
                pinned = self.cpu_pinned
                for c in range(self.ncpus):
                    pinned[c] += delta
            else:
                self.cpu_pinned[target.cpu] += delta
            return
        if target.scope is Scope.PROCESS:
            for key in task_keys(target):
                self._add_task(key, None, delta)
            return
        assert target.task is not None  # a task scope always names its task
        self._add_task(target.task, target.cpu, delta)

    def _add_task(self, task: int, cpu: int | None, delta: int) -> None:
        t = self._tasks.get(task)
        if t is None:
            t = self._tasks[task] = _TaskCount()
        if cpu is None:
            before = t.every
            t.every += delta
            on = t.on
            for c in range(self.ncpus):
                n = before + on.get(c, 0)
                self._move(c, n, n + delta)
        else:
            c = cpu
            mine = t.on.get(c, 0) + delta
            if mine:
                t.on[c] = mine
            else:
                del t.on[c]
            n = t.every + mine - delta
            self._move(c, n, n + delta)
        if not t.every and not t.on:
            del self._tasks[task]

    def _move(self, cpu: int, before: int, after: int) -> None:
        base = cpu * self._width
        if before:
            self._hist[base + before] -= 1
        if after:
            if not 0 < after <= self.slots:
                raise LedgerCorrupt(
                    f"a task would hold {after} breakpoints on cpu {cpu} (slots {self.slots})",
                    cpu=cpu,
                )
            self._hist[base + after] += 1

    def state(self) -> CounterState:
        """Everything, in a comparable form (for ``HostLedger.validate``)."""
        tasks = {k: (t.every, tuple(sorted(t.on.items()))) for k, t in self._tasks.items()}
        return list(self.cpu_pinned), list(self._hist), tasks

    def diff(self, other: SlotCounters) -> list[str]:
        """Human-readable differences between two counter sets (empty when equal)."""
        out: list[str] = []
        mine, theirs = self.state(), other.state()
        for c in range(self.ncpus):
            if mine[0][c] != theirs[0][c]:
                out.append(f"cpu_pinned[{c}] is {mine[0][c]}, recomputed {theirs[0][c]}")
                break
        if mine[1] != theirs[1]:
            c = next(i for i, (a, b) in enumerate(zip(mine[1], theirs[1], strict=True)) if a != b)
            out.append(f"task histogram of cpu {c // self._width} differs from recomputed")
        if mine[2] != theirs[2]:
            bad = sorted(set(mine[2].items()) ^ set(theirs[2].items()))[0][0]
            out.append(f"per-task counts of task {bad} differ from recomputed")
        return out
