"""HostLedger: the kernel's admission rule for each scope, with counter-examples.

Every mutating call goes through ``CheckedLedger``, which runs ``validate()`` after it
(even when it raised), so each step also checks the ledger's invariants.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from hwbp.arch import X86_64, ArchProfile, arm64_like
from hwbp.errors import (
    InvalidArgument,
    InvalidCpu,
    InvalidLength,
    InvalidScope,
    KernelAddressNotAllowed,
    LedgerCorrupt,
    MisalignedAddress,
    NoFreeSlot,
    ReadOnlyUnsupported,
    ReservationNotFound,
    UnsupportedSlotClass,
)
from hwbp.ledger import HostLedger
from hwbp.model import Assignment, BpType, Breakpoint, Reservation, Scope, SlotClass, Target

HOST = "h1"
NCPUS = 4
_ids = iter(range(1_000_000))


class CheckedLedger(HostLedger):
    """A ledger that validates its own invariants after every change."""

    __slots__ = ()

    def reserve(self, res: Reservation) -> None:
        try:
            super().reserve(res)
        finally:
            self.validate()

    def release(self, res_id: str) -> Reservation:
        try:
            return super().release(res_id)
        finally:
            self.validate()

    def modify(self, res_id: str, bp: Breakpoint) -> Reservation:
        try:
            return super().modify(res_id, bp)
        finally:
            self.validate()

    def rollback(self, token: int) -> None:
        try:
            super().rollback(token)
        finally:
            self.validate()

    def commit(self, token: int) -> None:
        try:
            super().commit(token)
        finally:
            self.validate()


MakeLedger = Callable[..., CheckedLedger]


@pytest.fixture
def make() -> Iterator[MakeLedger]:
    made: list[CheckedLedger] = []

    def factory(ncpus: int = NCPUS, profile: ArchProfile = X86_64) -> CheckedLedger:
        ledger = CheckedLedger(HOST, ncpus, profile)
        made.append(ledger)
        return ledger

    yield factory
    for ledger in made:  # teardown: every ledger a test built must still be consistent
        ledger.validate()


@pytest.fixture
def ledger(make: MakeLedger) -> CheckedLedger:
    return make()


def wp(addr: int = 0x1000, bp_type: BpType = BpType.WRITE, **kw: object) -> Breakpoint:
    return Breakpoint(addr, 8, bp_type, **kw)  # type: ignore[arg-type]


def target(scope: Scope, cpu: int | None = None, task: int | None = None) -> Target:
    return Target(scope, cpu=cpu, task=task)


def res(
    t: Target,
    bp: Breakpoint | None = None,
    *,
    rid: str | None = None,
    session: str | None = None,
) -> Reservation:
    return Reservation(
        id=rid or f"r{next(_ids)}",
        host=HOST,
        target=t,
        bp=bp or wp(),
        owner="alice",
        session=session,
    )


def put(ledger: HostLedger, t: Target, n: int = 1, bp_type: BpType = BpType.WRITE) -> list[str]:
    out = []
    for i in range(n):
        r = res(t, wp(0x1000 + 8 * i, bp_type))
        ledger.reserve(r)
        out.append(r.id)
    return out


def refusal(ledger: HostLedger, t: Target, bp_type: BpType = BpType.WRITE) -> NoFreeSlot:
    before = list(ledger)
    with pytest.raises(NoFreeSlot) as info:
        ledger.reserve(res(t, wp(bp_type=bp_type)))
    assert list(ledger) == before  # a refusal changes nothing
    with pytest.raises(NoFreeSlot):
        ledger.check(t, bp_type)
    return info.value


def cpu(c: int) -> Target:
    return target(Scope.CPU, cpu=c)


def task(t: int, c: int | None = None) -> Target:
    return target(Scope.TASK if c is None else Scope.TASK_CPU, cpu=c, task=t)


SYSTEM = target(Scope.SYSTEM)


# --- CPU-bound -----------------------------------------------------------------------


def test_four_cpu_bound_fill_a_cpu(ledger: CheckedLedger) -> None:
    ids = put(ledger, cpu(1), 4)
    assert ledger.used(1) == 4 and ledger.used(0) == 0
    err = refusal(ledger, cpu(1))
    assert (err.cpu, err.host, err.slot_class) == (1, HOST, "shared")
    assert err.metadata["used"] == "4" and err.metadata["slots"] == "4"
    assert [h.id for h in err.holders] == ids
    assert "cpu 1" in err.message and ids[0] in err.message
    put(ledger, cpu(0), 4)  # other cpus are untouched
    refusal(ledger, task(7, 1))  # cpu-bound ones count against every task
    put(ledger, task(7, 2), 1)
    refusal(ledger, task(7))  # a task on every cpu needs room on cpu 0 and 1 too


def test_disabled_breakpoints_hold_their_slot(ledger: CheckedLedger) -> None:
    for i in range(4):
        ledger.reserve(res(cpu(0), wp(0x2000 + 8 * i, enabled=False)))
    refusal(ledger, cpu(0))


def test_exec_and_data_share_the_x86_pool(ledger: CheckedLedger) -> None:
    put(ledger, cpu(0), 2, BpType.EXEC)
    put(ledger, cpu(0), 2, BpType.RW)
    assert refusal(ledger, cpu(0), BpType.EXEC).slot_class == "shared"


# --- tasks ---------------------------------------------------------------------------


def test_task_on_every_cpu_blocks_cpu_bound_everywhere(ledger: CheckedLedger) -> None:
    mine = put(ledger, task(10), 4)
    for c in range(NCPUS):
        assert ledger.used(c) == 4
        err = refusal(ledger, cpu(c))
        assert [h.id for h in err.holders] == mine
    err = refusal(ledger, SYSTEM)
    assert err.cpu == 0
    err = refusal(ledger, task(10, 3))
    assert err.cpu == 3 and [h.id for h in err.holders] == mine


def test_two_tasks_with_four_each_do_not_block_each_other(ledger: CheckedLedger) -> None:
    a = put(ledger, task(10), 4)
    b = put(ledger, task(11), 4)
    put(ledger, task(12, 2), 4)
    assert ledger.used(2) == 4
    assert [r.id for r in ledger.by_task(10)] == a
    assert [r.id for r in ledger.by_task(11)] == b
    err = refusal(ledger, task(11))
    assert [h.id for h in err.holders] == b  # only the task's own breakpoints


def test_task_on_one_cpu_counts_only_there(ledger: CheckedLedger) -> None:
    put(ledger, task(5, 1), 4)
    put(ledger, task(5, 0), 4)  # same task, other cpu: independent
    refusal(ledger, task(5, 1))
    refusal(ledger, task(5))  # every cpu includes cpu 0 and 1
    put(ledger, cpu(2), 4)  # the task does not run on cpu 2
    err = refusal(ledger, cpu(1))
    assert err.cpu == 1 and len(err.holders) == 4


def test_task_cpu_and_task_all_cpu_interplay(ledger: CheckedLedger) -> None:
    put(ledger, task(5, 2), 3)
    put(ledger, task(5), 1)  # cpu 2: 3 + 1 = 4
    err = refusal(ledger, task(5))
    assert err.cpu == 2 and err.metadata["used"] == "4"
    put(ledger, task(5, 0), 3)  # cpu 0: 1 (all-cpu) + 3 = 4
    refusal(ledger, task(5, 0))
    put(ledger, task(5, 1), 3)
    refusal(ledger, task(5, 1))
    assert ledger.used(3) == 1
    put(ledger, cpu(3), 3)
    refusal(ledger, cpu(3))


def test_cpu_bound_counts_against_tasks(ledger: CheckedLedger) -> None:
    put(ledger, cpu(1), 2)
    put(ledger, task(5), 2)
    err = refusal(ledger, task(5))
    assert err.cpu == 1 and [h.target.cpu_bound for h in err.holders] == [True] * 2 + [False] * 2
    put(ledger, task(5, 0), 2)  # cpu 0 has no cpu-bound breakpoint
    put(ledger, task(6), 2)  # another task has its own budget
    refusal(ledger, cpu(1))


def test_refusal_names_the_busiest_task_and_cpu_bound_holders(ledger: CheckedLedger) -> None:
    pinned = put(ledger, cpu(2), 1)
    put(ledger, task(20, 2), 1)
    busiest = put(ledger, task(21), 3)
    put(ledger, task(22, 1), 3)  # on another cpu: irrelevant
    err = refusal(ledger, cpu(2))
    assert [h.id for h in err.holders] == pinned + busiest
    assert err.metadata["holders"].count("alice") == 4


# --- system scope --------------------------------------------------------------------


def test_system_is_all_or_nothing_naming_the_lowest_full_cpu(ledger: CheckedLedger) -> None:
    put(ledger, cpu(3), 4)
    full1 = put(ledger, cpu(1), 4)
    err = refusal(ledger, SYSTEM)
    assert err.cpu == 1 and [h.id for h in err.holders] == full1
    assert [ledger.used(c) for c in range(NCPUS)] == [0, 4, 0, 4]


def test_system_takes_a_slot_on_every_cpu(ledger: CheckedLedger) -> None:
    [sid] = put(ledger, SYSTEM, 1)
    assert [ledger.used(c) for c in range(NCPUS)] == [1] * NCPUS
    put(ledger, task(9), 3)
    err = refusal(ledger, task(9, 2))
    assert next(h.id for h in err.holders) == sid
    assert all(next(a.reservation_id for a in ledger.for_cpu(c)) == sid for c in range(NCPUS))
    ledger.release(sid)
    put(ledger, task(9, 2), 1)


def test_system_request_invalid_and_partly_full_is_einval(ledger: CheckedLedger) -> None:
    """register_wide_hw_breakpoint() creates one CPU-bound event per online CPU, in CPU
    order, stopping at the first error; each creation reserves, then validates
    (register_perf_hw_breakpoint). So an invalid system request is answered by the first
    CPU: EINVAL if it has room, whatever later CPUs hold; ENOSPC only if it is full."""
    full3 = put(ledger, cpu(3), 4)
    misaligned = Breakpoint(0x1001, 4, BpType.WRITE)
    with pytest.raises(MisalignedAddress):
        ledger.reserve(res(SYSTEM, misaligned))
    with pytest.raises(ReadOnlyUnsupported):
        ledger.reserve(res(SYSTEM, Breakpoint(0x1000, 4, BpType.READ)))
    assert refusal(ledger, SYSTEM).cpu == 3  # a valid one: ENOSPC, naming cpu 3
    put(ledger, cpu(0), 4)
    with pytest.raises(NoFreeSlot) as info:  # cpu 0's reserve fails before any validation
        ledger.reserve(res(SYSTEM, misaligned))
    assert info.value.cpu == 0
    assert len(ledger) == 8 and ledger.holders(3) == [ledger.get(r) for r in full3]


# --- arm64-like profile --------------------------------------------------------------


def test_arm64_like_has_separate_pools(make: MakeLedger) -> None:
    ledger = make(2, arm64_like(6, 4))
    put(ledger, cpu(0), 6, BpType.EXEC)
    put(ledger, cpu(0), 4, BpType.WRITE)
    assert ledger.used(0, SlotClass.INST) == 6 and ledger.used(0, SlotClass.DATA) == 4
    assert ledger.used(0) == 6  # default: the first class
    err = refusal(ledger, cpu(0), BpType.EXEC)
    assert err.slot_class == "inst" and len(err.holders) == 6
    err = refusal(ledger, cpu(0), BpType.RW)
    assert err.slot_class == "data" and len(err.holders) == 4
    put(ledger, task(3, 1), 6, BpType.EXEC)
    put(ledger, task(3, 1), 4, BpType.RW)


def test_zero_slot_class_is_unsupported(make: MakeLedger) -> None:
    ledger = make(2, arm64_like(0, 2))
    with pytest.raises(UnsupportedSlotClass):
        ledger.reserve(res(cpu(0), wp(bp_type=BpType.EXEC)))
    with pytest.raises(UnsupportedSlotClass):
        ledger.check(task(1), BpType.EXEC)
    assert len(ledger) == 0


# --- order of checks -----------------------------------------------------------------


def test_full_table_answers_no_space_even_to_an_invalid_request(ledger: CheckedLedger) -> None:
    put(ledger, cpu(0), 4)
    with pytest.raises(NoFreeSlot):
        ledger.reserve(res(cpu(0), Breakpoint(0x1001, 3, BpType.READ)))
    with pytest.raises(InvalidLength):
        ledger.reserve(res(cpu(1), Breakpoint(0x1001, 3, BpType.WRITE)))
    with pytest.raises(ReadOnlyUnsupported):
        ledger.reserve(res(cpu(1), Breakpoint(0x1000, 4, BpType.READ)))
    with pytest.raises(KernelAddressNotAllowed):  # exclude_kernel set on a kernel address
        ledger.reserve(res(task(3, 1), wp(0xFFFF_FFFF_8000_0000)))
    assert len(ledger) == 4 and ledger.used(1) == 0


def test_cpu_out_of_range(ledger: CheckedLedger) -> None:
    put(ledger, cpu(0), 4)
    for t in (cpu(NCPUS), task(3, NCPUS + 5)):
        with pytest.raises(InvalidCpu):
            ledger.reserve(res(t))
        with pytest.raises(InvalidCpu):
            ledger.check(t, BpType.WRITE)
    for call in (ledger.used, ledger.for_cpu, ledger.holders):
        with pytest.raises(InvalidCpu):
            call(NCPUS)
    with pytest.raises(InvalidCpu):
        ledger.affected_cpus(cpu(NCPUS))


def test_duplicate_id_and_wrong_host(ledger: CheckedLedger) -> None:
    ledger.reserve(res(cpu(0), rid="dup"))
    with pytest.raises(InvalidArgument, match="dup"):
        ledger.reserve(res(cpu(1), rid="dup"))
    other = Reservation("x", "h2", cpu(0), wp())
    with pytest.raises(InvalidArgument, match="h2"):
        ledger.reserve(other)
    assert list(ledger) == [ledger.get("dup")]


def test_no_cpus_is_invalid() -> None:
    with pytest.raises(InvalidArgument):
        HostLedger(HOST, 0)


# --- release and queries -------------------------------------------------------------


def test_release_frees_the_slot(ledger: CheckedLedger) -> None:
    ids = put(ledger, cpu(0), 4)
    released = ledger.release(ids[2])
    assert released.id == ids[2] and ids[2] not in ledger and len(ledger) == 3
    assert ledger.used(0) == 3
    put(ledger, cpu(0), 1)
    with pytest.raises(ReservationNotFound, match=ids[2]):
        ledger.release(ids[2])
    with pytest.raises(ReservationNotFound):
        ledger.get(ids[2])
    with pytest.raises(ReservationNotFound):
        ledger.modify(ids[2], wp())


def test_queries(ledger: CheckedLedger) -> None:
    s = res(SYSTEM, session="s1")
    t_all = res(task(4), wp(0x3000), session="s1")
    c1 = res(cpu(1), session="s2")
    tc2 = res(task(4, 2), wp(0x4000, BpType.EXEC))
    tc1 = res(task(5, 1))
    for r in (s, t_all, c1, tc2, tc1):
        ledger.reserve(r)
    assert list(ledger) == [s, t_all, c1, tc2, tc1]
    assert ledger.holders(1) == [s, t_all, c1, tc1]
    assert ledger.holders(2) == [s, t_all, tc2]
    assert ledger.for_cpu(2) == [
        Assignment(s.id, None, s.bp),
        Assignment(t_all.id, 4, t_all.bp),
        Assignment(tc2.id, 4, tc2.bp),
    ]
    assert ledger.by_task(4) == [t_all, tc2] and ledger.by_task(99) == []
    assert ledger.by_session("s1") == [s, t_all] and ledger.by_session("s2") == [c1]
    assert ledger.affected_cpus(SYSTEM) == range(NCPUS)
    assert ledger.affected_cpus(task(4)) == range(NCPUS)
    assert ledger.affected_cpus(cpu(3)) == (3,)
    assert ledger.affected_cpus(task(4, 2)) == (2,)
    assert (ledger.host, ledger.ncpus, ledger.profile) == (HOST, NCPUS, X86_64)
    assert s.id in ledger and "nope" not in ledger and 3 not in ledger
    assert ledger.used(1) == 3  # system + c1 + one task (4 or 5) at most
    ledger.release(t_all.id)
    assert ledger.by_session("s1") == [s] and ledger.by_task(4) == [tc2]


def test_lookups_cost_what_they_name_not_what_the_host_holds(ledger: CheckedLedger) -> None:
    """A change on a host full of other tasks' breakpoints reads only its own."""
    s, c1 = res(SYSTEM), res(cpu(1))
    mine, mine_on_2 = res(task(4), wp(0x3000)), res(task(4, 2), wp(0x4000))
    for r in (s, c1, mine, mine_on_2):
        ledger.reserve(r)
    others = [res(task(100 + i)) for i in range(200)]
    for r in others:
        ledger.reserve(r)
    a = {r.id: Assignment(r.id, r.target.task, r.bp) for r in (s, c1, mine, mine_on_2)}
    assert ledger.installable(1, None) == [a[s.id], a[c1.id]]
    assert ledger.installable(1, 4) == [a[s.id], a[c1.id], a[mine.id]]
    assert ledger.installable(2, 4) == [a[s.id], a[mine.id], a[mine_on_2.id]]
    # delta: present ones in admission order, the rest (absent, or elsewhere) sorted
    assert ledger.delta(2, [mine_on_2.id, "r-gone", c1.id, s.id]) == (
        [a[s.id], a[mine_on_2.id]],
        sorted([c1.id, "r-gone"]),
    )
    token = ledger.checkpoint()
    ledger.release(c1.id)
    extra = res(task(9, 3))
    ledger.reserve(extra)
    ledger.modify(mine.id, wp(0x3008))
    assert ledger.touched_where(token) == {c1.id: 1, extra.id: 3, mine.id: None}
    ledger.rollback(token)
    with pytest.raises(InvalidArgument, match="not open"):
        ledger.touched_where(token)
    counts = {scope: ledger.count(scope) for scope in Scope}
    assert counts == {
        Scope.SYSTEM: 1,
        Scope.CPU: 1,
        Scope.TASK: 201,
        Scope.TASK_CPU: 1,
        Scope.PROCESS: 0,
    }
    ledger.release(s.id)  # the cpu-bound index follows releases
    assert ledger.installable(0, None) == [] and ledger.count(Scope.SYSTEM) == 0


# --- modify --------------------------------------------------------------------------


def test_modify_replaces_the_breakpoint(ledger: CheckedLedger) -> None:
    r = res(task(3), wp(0x1000), session="s")
    ledger.reserve(r)
    put(ledger, task(3), 3)
    new = ledger.modify(r.id, wp(0x2000, BpType.EXEC, enabled=False))
    moved = wp(0x2000, BpType.EXEC, enabled=False)
    assert new == Reservation(r.id, HOST, r.target, moved, "alice", "s")
    assert ledger.get(r.id) == new and next(iter(ledger)) == new  # keeps its admission place
    assert ledger.used(0) == 4


def test_invalid_modify_changes_nothing(ledger: CheckedLedger) -> None:
    r = res(cpu(0), wp(0x1000))
    ledger.reserve(r)
    with pytest.raises(MisalignedAddress):
        ledger.modify(r.id, Breakpoint(0x1002, 4, BpType.WRITE))
    with pytest.raises(ReadOnlyUnsupported):
        ledger.modify(r.id, Breakpoint(0x1000, 4, BpType.READ))
    with pytest.raises(InvalidArgument, match="kernel"):
        ledger.modify(r.id, wp(0x1000, kernel=True))
    assert ledger.get(r.id) is r and ledger.used(0) == 1


def test_a_tracer_applied_breakpoint_is_counted_like_any_task_breakpoint(
    ledger: CheckedLedger,
) -> None:
    traced = res(task(3), wp(0x1000, tracer_applied=True))
    ledger.reserve(traced)
    assert ledger.used(0) == ledger.used(1) == 1
    assert ledger.for_cpu(0)[0].bp.tracer_applied  # the agents are told who arms it
    with pytest.raises(InvalidArgument, match="who arms it"):
        ledger.modify(traced.id, wp(0x2000))
    assert ledger.get(traced.id) is traced


def test_only_a_task_breakpoint_can_be_tracer_applied(ledger: CheckedLedger) -> None:
    with pytest.raises(InvalidScope, match="tracer-applied"):
        ledger.reserve(res(cpu(0), wp(0x1000, tracer_applied=True)))
    assert len(ledger) == 0 and ledger.used(0) == 0


def test_modify_type_change_into_a_full_class_keeps_the_slot(make: MakeLedger) -> None:
    ledger = make(2, arm64_like(6, 4))
    [x] = put(ledger, task(8, 1), 1, BpType.EXEC)
    data = put(ledger, task(8, 1), 4, BpType.WRITE)
    before = ledger.get(x)
    with pytest.raises(NoFreeSlot) as info:
        ledger.modify(x, wp(0x5000, BpType.WRITE))
    assert info.value.slot_class == "data" and [h.id for h in info.value.holders] == data
    assert ledger.get(x) is before
    assert ledger.used(1, SlotClass.INST) == 1 and ledger.used(1, SlotClass.DATA) == 4
    ledger.release(data[0])
    assert ledger.modify(x, wp(0x5000, BpType.RW)).bp.type is BpType.RW
    assert ledger.used(1, SlotClass.INST) == 0 and ledger.used(1, SlotClass.DATA) == 4
    put(ledger, task(8, 1), 6, BpType.EXEC)  # the instruction slot came back


def test_modify_into_a_zero_slot_class(make: MakeLedger) -> None:
    ledger = make(1, arm64_like(0, 4))
    [x] = put(ledger, cpu(0), 1)
    with pytest.raises(UnsupportedSlotClass):
        ledger.modify(x, wp(bp_type=BpType.EXEC))
    assert ledger.get(x).bp.type is BpType.WRITE


# --- checkpoint / rollback -----------------------------------------------------------


def snapshot(ledger: HostLedger) -> object:
    return (
        list(ledger),
        [ledger.for_cpu(c) for c in range(ledger.ncpus)],
        [ledger.used(c, k) for c in range(ledger.ncpus) for k in ledger.profile.classes],
    )


def test_rollback_restores_exactly(make: MakeLedger) -> None:
    ledger = make(3, arm64_like(2, 2))
    a, b, c = put(ledger, task(1), 1), put(ledger, cpu(0), 1, BpType.EXEC), put(ledger, SYSTEM)
    before = snapshot(ledger)
    token = ledger.checkpoint()
    ledger.release(a[0])
    ledger.release(c[0])
    ledger.modify(b[0], wp(0x7000, BpType.RW))
    put(ledger, task(1, 2), 1)
    put(ledger, cpu(1), 1, BpType.EXEC)
    ledger.reserve(res(task(2), rid=a[0]))  # the released id, reused
    assert snapshot(ledger) != before
    ledger.rollback(token)
    assert snapshot(ledger) == before
    assert [r.id for r in ledger] == a + b + c
    put(ledger, cpu(2), 1, BpType.EXEC)  # new admissions go after the restored ones
    assert list(ledger)[-1].target == cpu(2)
    with pytest.raises(InvalidArgument, match="checkpoint"):
        ledger.rollback(token)


def test_nested_checkpoints_and_commit(ledger: CheckedLedger) -> None:
    put(ledger, cpu(0), 1)
    start = snapshot(ledger)
    outer = ledger.checkpoint()
    put(ledger, cpu(1), 1)
    middle = snapshot(ledger)
    inner = ledger.checkpoint()
    put(ledger, cpu(2), 1)
    ledger.rollback(inner)
    assert snapshot(ledger) == middle
    inner2 = ledger.checkpoint()
    put(ledger, cpu(3), 1)
    ledger.commit(inner2)  # committing inside an outer checkpoint keeps what it needs
    ledger.rollback(outer)
    assert snapshot(ledger) == start
    token = ledger.checkpoint()
    put(ledger, cpu(3), 2)
    ledger.commit(token)
    with pytest.raises(InvalidArgument):
        ledger.rollback(token)
    assert ledger.used(3) == 2
    assert ledger._journal == []  # nothing open: nothing kept


def test_no_journal_without_a_checkpoint(ledger: CheckedLedger) -> None:
    ids = put(ledger, cpu(0), 3)
    ledger.release(ids[0])
    assert ledger._journal == []


# --- validate ------------------------------------------------------------------------


def test_validate_detects_drift(ledger: CheckedLedger) -> None:
    put(ledger, task(4, 1), 2)
    ledger._counters[SlotClass.DATA].cpu_pinned[2] += 1
    with pytest.raises(LedgerCorrupt, match=r"cpu_pinned\[2\]"):
        ledger.validate()
    ledger._counters[SlotClass.DATA].cpu_pinned[2] -= 1
    ledger._by_task[4].clear()
    with pytest.raises(LedgerCorrupt, match="per-task index"):
        ledger.validate()
    ledger._by_task.clear()
    ledger._counters[SlotClass.DATA] = type(ledger._counters[SlotClass.DATA])(4, NCPUS)
    with pytest.raises(LedgerCorrupt, match="task 4"):
        HostLedger.validate(ledger)
    ledger._entries.clear()
    ledger._on_cpu[1].clear()
    ledger.validate()  # consistent again (empty)
