"""Random reserve/release/modify/checkpoint/rollback against a brute-force reference.

The reference recomputes the kernel's ``max_bp_pinned_slots`` from the full list of
reservations on every request; the ledger must admit exactly when it does, refuse
naming the same (lowest) cpu, and keep ``validate()`` passing after every step.
"""

from __future__ import annotations

from collections import Counter

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from hwbp.arch import X86_64, ArchProfile, arm64_like
from hwbp.errors import HwbpError, InvalidCpu, NoFreeSlot, ReservationNotFound
from hwbp.ledger import HostLedger
from hwbp.model import BpType, Breakpoint, Reservation, Scope, SlotClass, Target
from hwbp.validate import validate_breakpoint

HOST = "h"
TASKS = (1, 2, 3)
# Processes and the threads each may have: process 1 has threads 1 and 2, process 3 has 3.
PROCESSES = {1: (1, 2), 3: (3,)}


def counted_on(r: Reservation) -> list[tuple[str, int]]:
    """The kernel's tasks a reservation counts on, spelled out: a task breakpoint on its
    task; a process-wide one on each thread it had, and on every thread it creates later
    (one more task, which starts with the process-wide breakpoints alone)."""
    if r.target.scope is Scope.PROCESS:
        assert r.target.task is not None
        return [("tid", t) for t in r.target.threads] + [("new", r.target.task)]
    assert r.target.task is not None
    return [("tid", r.target.task)]


def per_task(here: list[Reservation]) -> Counter[tuple[str, int]]:
    return Counter(k for r in here if not r.target.cpu_bound for k in counted_on(r))


def reference_full_cpu(
    live: list[Reservation], target: Target, cls: SlotClass, profile: ArchProfile, ncpus: int
) -> int | None:
    """The lowest cpu where one more breakpoint of ``cls`` at ``target`` would not fit."""
    slots = profile.slots(cls)
    cpus = range(ncpus) if target.cpu is None else [target.cpu]
    for c in cpus:
        here = [r for r in live if profile.slot_class(r.bp.type) is cls and r.target.applies_to(c)]
        pinned = sum(1 for r in here if r.target.cpu_bound)
        tasks = per_task(here)
        if target.cpu_bound:
            others = max(tasks.values(), default=0)
        else:
            probe = Reservation("probe", HOST, target, Breakpoint(0, 1, BpType.WRITE))
            others = max(tasks[k] for k in counted_on(probe))
        if pinned + others + 1 > slots:
            return c
    return None


def reference_used(live: list[Reservation], c: int, cls: SlotClass, profile: ArchProfile) -> int:
    here = [r for r in live if profile.slot_class(r.bp.type) is cls and r.target.applies_to(c)]
    tasks = per_task(here)
    return sum(1 for r in here if r.target.cpu_bound) + max(tasks.values(), default=0)


def targets(ncpus: int) -> st.SearchStrategy[Target]:
    cpus = st.integers(0, ncpus)  # ncpus itself is out of range on purpose
    tasks = st.sampled_from(TASKS)
    return st.one_of(
        st.just(Target(Scope.SYSTEM)),
        cpus.map(lambda c: Target(Scope.CPU, cpu=c)),
        tasks.map(lambda t: Target(Scope.TASK, task=t)),
        st.tuples(tasks, cpus).map(lambda tc: Target(Scope.TASK_CPU, cpu=tc[1], task=tc[0])),
        processes(),
    )


@st.composite
def processes(draw: st.DrawFn) -> Target:
    pid = draw(st.sampled_from(sorted(PROCESSES)))
    threads = draw(st.sets(st.sampled_from(PROCESSES[pid]), min_size=1))
    return Target(Scope.PROCESS, task=pid, threads=tuple(threads))


@st.composite
def breakpoints(draw: st.DrawFn) -> Breakpoint:
    bp_type = draw(st.sampled_from([BpType.EXEC, BpType.WRITE, BpType.RW, BpType.READ]))
    length = 8 if bp_type is BpType.EXEC else draw(st.sampled_from([1, 2, 4, 8]))
    addr = draw(st.sampled_from([0x1000, 0x2008, 0x3001]))  # 0x3001: misaligned unless len 1
    return Breakpoint(addr, length, bp_type, enabled=draw(st.booleans()))


class LedgerMachine(RuleBasedStateMachine):
    profile: ArchProfile = X86_64
    ncpus = 3

    def __init__(self) -> None:
        super().__init__()
        self.ledger = HostLedger(HOST, self.ncpus, self.profile)
        self.live: list[Reservation] = []  # admission order
        self.marks: list[tuple[int, list[Reservation]]] = []
        self.serial = 0

    @initialize()
    def start(self) -> None:
        assert len(self.ledger) == 0

    def full_cpu(self, live: list[Reservation], target: Target, bp_type: BpType) -> int | None:
        cls = self.profile.slot_class(bp_type)
        return reference_full_cpu(live, target, cls, self.profile, self.ncpus)

    @rule(data=st.data(), bp=breakpoints())
    def reserve(self, data: st.DataObject, bp: Breakpoint) -> None:
        target = data.draw(targets(self.ncpus))
        self.serial += 1
        res = Reservation(f"r{self.serial}", HOST, target, bp)
        if target.cpu is not None and target.cpu >= self.ncpus:
            with pytest.raises(InvalidCpu):
                self.ledger.reserve(res)
            return
        full = self.full_cpu(self.live, target, bp.type)
        try:
            validate_breakpoint(bp, scope=target.scope, profile=self.profile)
            invalid: HwbpError | None = None
        except HwbpError as expected:
            invalid = expected
        # A system request is made CPU by CPU (register_wide_hw_breakpoint), each
        # reserving then validating: with room on cpu 0, an invalid one is EINVAL.
        answered_by_cpu0 = target.scope is Scope.SYSTEM and invalid is not None
        if full is not None and not (answered_by_cpu0 and full > 0):
            with pytest.raises(NoFreeSlot) as info:
                self.ledger.check(target, bp.type)
            assert info.value.cpu == full
            with pytest.raises(NoFreeSlot) as info:
                self.ledger.reserve(res)
            assert info.value.cpu == full
            self.holders_fill(info.value, target)
            return
        if invalid is not None:
            with pytest.raises(type(invalid)):
                self.ledger.reserve(res)
            return
        self.ledger.check(target, bp.type)
        self.ledger.reserve(res)
        self.live.append(res)

    def holders_fill(self, refused: NoFreeSlot, target: Target) -> None:
        """The holders named are the cpu's breakpoints counting on one task that is full:
        exactly what fills the slots (CPU-bound ones plus that task's)."""
        c = refused.cpu
        cls = self.profile.slot_class(refused.holders[0].bp.type) if refused.holders else None
        assert len(refused.holders) == refused.used
        assert set(refused.holders) <= set(self.live)
        assert all(
            r.target.applies_to(c) and self.profile.slot_class(r.bp.type) is cls
            for r in refused.holders
        )
        tasks = per_task([r for r in refused.holders if not r.target.cpu_bound])
        if tasks:  # one task accounts for all of them
            assert max(tasks.values()) == sum(1 for r in refused.holders if not r.target.cpu_bound)
        if not target.cpu_bound and tasks:
            probe = Reservation("probe", HOST, target, Breakpoint(0, 1, BpType.WRITE))
            assert set(counted_on(probe)) & {
                k for k, n in tasks.items() if n == max(tasks.values())
            }

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        res = data.draw(st.sampled_from(self.live))
        assert self.ledger.release(res.id) == res
        self.live.remove(res)
        with pytest.raises(ReservationNotFound):
            self.ledger.release(res.id)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), bp=breakpoints())
    def modify(self, data: st.DataObject, bp: Breakpoint) -> None:
        i = data.draw(st.integers(0, len(self.live) - 1))
        old = self.live[i]
        try:
            validate_breakpoint(bp, scope=old.target.scope, profile=self.profile)
        except HwbpError as expected:
            with pytest.raises(type(expected)):
                self.ledger.modify(old.id, bp)
            assert self.ledger.get(old.id) == old
            return
        others = self.live[:i] + self.live[i + 1 :]
        changes = self.profile.slot_class(bp.type) is not self.profile.slot_class(old.bp.type)
        full = self.full_cpu(others, old.target, bp.type) if changes else None
        if full is not None:
            with pytest.raises(NoFreeSlot) as info:
                self.ledger.modify(old.id, bp)
            assert info.value.cpu == full
            assert self.ledger.get(old.id) == old
            return
        new = self.ledger.modify(old.id, bp)
        assert new == Reservation(old.id, HOST, old.target, bp)
        self.live[i] = new

    @precondition(lambda self: len(self.marks) < 4)
    @rule()
    def checkpoint(self) -> None:
        self.marks.append((self.ledger.checkpoint(), list(self.live)))

    @precondition(lambda self: bool(self.marks))
    @rule(data=st.data())
    def rollback(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.marks) - 1))
        token, saved = self.marks[i]
        self.ledger.rollback(token)
        self.live = list(saved)
        del self.marks[i:]

    @precondition(lambda self: bool(self.marks))
    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.marks) - 1))
        self.ledger.commit(self.marks[i][0])
        del self.marks[i:]

    @invariant()
    def matches_reference(self) -> None:
        self.ledger.validate()
        assert list(self.ledger) == self.live
        for c in range(self.ncpus):
            for cls in self.profile.classes:
                assert self.ledger.used(c, cls) == reference_used(self.live, c, cls, self.profile)
            expected = [r for r in self.live if r.target.applies_to(c)]
            assert self.ledger.holders(c) == expected
        for t in TASKS:
            assert self.ledger.by_task(t) == [r for r in self.live if r.target.task == t]


class Arm64Machine(LedgerMachine):
    """Separate, small pools so type changes move a breakpoint between classes."""

    profile = arm64_like(2, 2)
    ncpus = 2


_settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TestLedgerX86 = LedgerMachine.TestCase
TestLedgerX86.settings = _settings
TestLedgerArm64 = Arm64Machine.TestCase
TestLedgerArm64.settings = _settings
