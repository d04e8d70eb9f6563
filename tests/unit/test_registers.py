"""RegisterFile: stable placement, context switches that rebuild DR7, hits and invariants."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwbp import dr7
from hwbp.arch import ArchProfile, arm64_like
from hwbp.errors import (
    ErrorClass,
    InvalidArgument,
    LedgerCorrupt,
    ReadOnlyUnsupported,
    RegisterFileFull,
)
from hwbp.model import AccessType, Assignment, BpType, Breakpoint
from hwbp.registers import HitRecord, RegisterFile, RegisterImage

A, B = 101, 202


def cpu(rid: str, addr: int, length: int = 4, kind: BpType = BpType.WRITE) -> Assignment:
    return Assignment(rid, None, Breakpoint(addr, length, kind))


def task(rid: str, pid: int, addr: int, length: int = 4, kind: BpType = BpType.WRITE) -> Assignment:
    return Assignment(rid, pid, Breakpoint(addr, length, kind))


def expect_dr7(rf: RegisterFile) -> tuple[dr7.DecodedSlot | None, ...]:
    """What DR7 must decode to: exactly the installed breakpoints, G bits only."""
    return tuple(
        None if a is None else dr7.DecodedSlot(i, False, True, a.bp.length, a.bp.type)
        for i, a in enumerate(rf.installed)
    )


@pytest.fixture
def rf() -> Iterator[RegisterFile]:
    """A fresh x86-64 register file whose invariants are checked again at teardown."""
    regs = RegisterFile()
    yield regs
    regs.validate()


def test_empty(rf: RegisterFile) -> None:
    rf.validate()
    assert rf.image() == RegisterImage(
        dr=(0, 0, 0, 0), dr7=0x400, dr6=0xFFFF0FF0, current_task=None, slots=(None,) * 4
    )
    assert rf.current_task is None
    assert rf.assignments == ()


def test_load_places_cpu_bound_first_in_order(rf: RegisterFile) -> None:
    a1, c1, c2 = task("a1", A, 0x1000), cpu("c1", 0x2000), cpu("c2", 0x3000, 8, BpType.RW)
    rf.switch(A)
    image = rf.load([a1, c1, c2])
    rf.validate()
    assert image.slots == ("c1", "c2", "a1", None)
    assert image.dr == (0x2000, 0x3000, 0x1000, 0)
    assert dr7.decode(image.dr7) == expect_dr7(rf)
    assert image.dr7 == 0x400 | 0x200 | 0b101010 | 0xD << 16 | 0xB << 20 | 0xD << 24
    assert rf.assignments == (a1, c1, c2)


def test_load_ignores_disabled_and_other_tasks(rf: RegisterFile) -> None:
    off = Assignment("off", None, Breakpoint(0x1000, 1, BpType.WRITE, enabled=False))
    image = rf.load([off, task("b1", B, 0x2000), cpu("c1", 0x3000)])
    rf.validate()
    assert image.slots == ("c1", None, None, None)
    assert rf.switch(B).slots == ("c1", "b1", None, None)
    rf.validate()


def test_load_is_stable(rf: RegisterFile) -> None:
    rf.load([cpu("c1", 0x1000), cpu("c2", 0x2000), cpu("c3", 0x3000)])
    image = rf.load([cpu("c3", 0x3000), cpu("c4", 0x4000), cpu("c1", 0x1000)])
    rf.validate()
    # c1 and c3 keep DR0 and DR2; c2 leaves DR1 free, where the new c4 goes.
    assert image.slots == ("c1", "c4", "c3", None)
    assert image.dr == (0x1000, 0x4000, 0x3000, 0)


def test_load_updates_address_and_type_in_place(rf: RegisterFile) -> None:
    rf.load([cpu("c1", 0x1000), cpu("c2", 0x2000)])
    image = rf.load([cpu("c1", 0x1000), cpu("c2", 0x2008, 8, BpType.RW)])
    rf.validate()
    assert image.slots == ("c1", "c2", None, None)
    assert image.dr[1] == 0x2008
    assert dr7.decode(image.dr7)[1] == dr7.DecodedSlot(1, False, True, 8, BpType.RW)


def test_disabling_frees_the_register(rf: RegisterFile) -> None:
    rf.load([cpu("c1", 0x1000), cpu("c2", 0x2000)])
    off = Assignment("c1", None, Breakpoint(0x1000, 4, BpType.WRITE, enabled=False))
    image = rf.load([off, cpu("c2", 0x2000)])
    rf.validate()
    assert image.slots == (None, "c2", None, None)
    assert image.dr == (0, 0x2000, 0, 0)
    write4 = dr7.DecodedSlot(1, False, True, 4, BpType.WRITE)
    assert dr7.decode(image.dr7) == (None, write4, None, None)


def test_removing_everything_clears_dr7_except_fixed_bit(rf: RegisterFile) -> None:
    rf.load([cpu("c1", 0x1000)])
    assert rf.load([]).dr7 == 0x400


def test_load_too_many_raises_and_changes_nothing(rf: RegisterFile) -> None:
    rf.switch(A)
    rf.load([cpu("c1", 0x1000), task("a1", A, 0x2000)])
    before = rf.image()
    too_many = [cpu(f"c{i}", 0x1000 * (i + 1)) for i in range(4)] + [task("a1", A, 0x2000)]
    with pytest.raises(RegisterFileFull) as info:
        rf.load(too_many)
    assert info.value.errno == errno.EBUSY
    assert info.value.reason == "REGISTERS_FULL"
    assert info.value.error_class is ErrorClass.FAILED_PRECONDITION
    assert info.value.metadata["needed"] == "5"
    assert rf.image() == before
    assert len(rf.assignments) == 2
    rf.validate()


def test_load_refuses_a_read_only_bp_and_changes_nothing(rf: RegisterFile) -> None:
    rf.load([cpu("c1", 0x1000)])
    before = rf.image()
    with pytest.raises(ReadOnlyUnsupported):
        rf.load([cpu("c1", 0x1000), cpu("r", 0x2000, 4, BpType.READ)])
    assert rf.image() == before


def test_load_refuses_duplicate_reservation(rf: RegisterFile) -> None:
    with pytest.raises(InvalidArgument):
        rf.load([cpu("c1", 0x1000), cpu("c1", 0x2000)])
    assert rf.assignments == ()


def test_switch_moves_task_breakpoints_in_and_out(rf: RegisterFile) -> None:
    rf.load([cpu("c1", 0x1000), task("a1", A, 0x2000), task("b1", B, 0x3000, 2, BpType.RW)])
    rf.validate()
    assert rf.switch(A).slots == ("c1", "a1", None, None)
    rf.validate()
    image = rf.switch(B)
    rf.validate()
    assert image.slots == ("c1", "b1", None, None)
    assert image.current_task == B
    assert image.dr == (0x1000, 0x3000, 0, 0)
    assert dr7.decode(image.dr7) == expect_dr7(rf)
    assert rf.switch(None).slots == ("c1", None, None, None)
    rf.validate()


def test_switch_too_many_raises_and_changes_nothing(rf: RegisterFile) -> None:
    rf.load(
        [
            cpu("c1", 0x1000),
            cpu("c2", 0x2000),
            cpu("c3", 0x3000),
            task("b1", B, 0x4000),
            task("b2", B, 0x5000),
        ]
    )
    before = rf.image()
    with pytest.raises(RegisterFileFull):
        rf.switch(B)
    assert rf.image() == before
    assert rf.current_task is None
    rf.validate()


def test_seed_case_task_switched_back_in_after_balance_changed(rf: RegisterFile) -> None:
    """Stern, March 2009: the next context switch must pick up DR7 too, not only DR0-3.

    Task A with two breakpoints runs, is switched out; two CPU-bound breakpoints arrive
    and take DR0/DR1, where A's were; A switches back in and must land in DR2/DR3 with
    DR7 describing exactly that: no slot of A's old layout left enabled.
    """
    a1 = task("a1", A, 0x7000, 8, BpType.RW)
    a2 = task("a2", A, 0x7100, 1, BpType.WRITE)
    rf.load([a1, a2])
    rf.validate()
    image = rf.switch(A)
    rf.validate()
    assert image.slots == ("a1", "a2", None, None)
    old_dr7 = image.dr7

    image = rf.switch(None)
    rf.validate()
    assert image.slots == (None,) * 4
    assert image.dr7 == 0x400

    c1 = cpu("c1", 0x9000, 4, BpType.WRITE)
    c2 = Assignment("c2", None, Breakpoint(0xFFFF_8000_0000_1000, 8, BpType.EXEC, kernel=True))
    image = rf.load([a1, a2, c1, c2])
    rf.validate()
    assert image.slots == ("c1", "c2", None, None)

    image = rf.switch(A)
    rf.validate()
    assert image.slots == ("c1", "c2", "a1", "a2")
    assert image.dr == (0x9000, 0xFFFF_8000_0000_1000, 0x7000, 0x7100)
    assert dr7.decode(image.dr7) == (
        dr7.DecodedSlot(0, False, True, 4, BpType.WRITE),
        dr7.DecodedSlot(1, False, True, 8, BpType.EXEC),
        dr7.DecodedSlot(2, False, True, 8, BpType.RW),
        dr7.DecodedSlot(3, False, True, 1, BpType.WRITE),
    )
    # A's old DR7 would have described DR0/DR1 as A's RW/W watchpoints: not any more.
    assert dr7.decode(old_dr7)[0] != dr7.decode(image.dr7)[0]
    # A write to A's variable hits A's watchpoint in its new register, not c1's DR0.
    hits = rf.access(0x7100, 1, AccessType.WRITE)
    assert [(h.reservation_id, h.index) for h in hits] == [("a2", 3)]

    # A CPU-bound one leaves while A runs; A's stay where they are.
    image = rf.load([a1, a2, c2])
    rf.validate()
    assert image.slots == (None, "c2", "a1", "a2")
    assert dr7.decode(image.dr7)[0] is None


def ids(hits: list[HitRecord]) -> list[str]:
    return [h.reservation_id for h in hits]


def test_access_write_read_exec_rules(rf: RegisterFile) -> None:
    rf.switch(A)
    rf.load(
        [
            task("w", A, 0x1000, 4, BpType.WRITE),
            task("rw", A, 0x2000, 8, BpType.RW),
            task("x", A, 0x3000, 8, BpType.EXEC),
        ]
    )
    assert ids(rf.access(0x1000, 4, AccessType.WRITE)) == ["w"]
    assert ids(rf.access(0x1000, 4, AccessType.READ)) == []
    assert ids(rf.access(0x2004, 1, AccessType.READ)) == ["rw"]
    assert ids(rf.access(0x2007, 2, AccessType.WRITE)) == ["rw"]
    assert ids(rf.access(0x3000, 1, AccessType.EXEC)) == ["x"]
    assert ids(rf.access(0x3000, 8, AccessType.READ)) == []
    assert ids(rf.access(0x3004, 1, AccessType.EXEC)) == []  # fetch at the first byte only


def test_access_range_edges(rf: RegisterFile) -> None:
    rf.load([cpu("w", 0x1000, 4)])
    assert rf.access(0x0FFC, 4, AccessType.WRITE) == []
    assert rf.access(0x1004, 4, AccessType.WRITE) == []
    assert len(rf.access(0x0FFD, 4, AccessType.WRITE)) == 1
    assert len(rf.access(0x1003, 8, AccessType.WRITE)) == 1


def test_access_sets_dr6_by_physical_register(rf: RegisterFile) -> None:
    rf.switch(A)
    rf.load([cpu("c1", 0x1000), task("a1", A, 0x1000, 8, BpType.RW)])
    hits = rf.access(0x1000, 4, AccessType.WRITE)
    assert hits == [  # one access, one debug exception: both records share its number
        HitRecord("c1", 0, Breakpoint(0x1000, 4, BpType.WRITE), None, 0xFFFF0FF3, 0x1000, 0, 1),
        HitRecord("a1", 1, Breakpoint(0x1000, 8, BpType.RW), A, 0xFFFF0FF3, 0x1000, 0, 1),
    ]
    assert rf.image().dr6 == 0xFFFF0FF3
    rf.validate()
    rf.clear_dr6()
    assert rf.image().dr6 == 0xFFFF0FF0
    (again,) = rf.access(0x1004, 1, AccessType.READ)
    assert again.dr6 == 0xFFFF0FF2 and again.exception == 2


def test_dr6_bits_stay_until_cleared(rf: RegisterFile) -> None:
    rf.load([cpu("c1", 0x1000), cpu("c2", 0x2000)])
    rf.access(0x1000, 1, AccessType.WRITE)
    assert rf.access(0x2000, 1, AccessType.WRITE)[0].dr6 == 0xFFFF0FF3


def test_access_refuses_empty_range(rf: RegisterFile) -> None:
    with pytest.raises(InvalidArgument):
        rf.access(0x1000, 0, AccessType.WRITE)


def test_smaller_profile() -> None:
    rf = RegisterFile(ArchProfile("tiny", inst_slots=2, data_slots=2, mixed=True))
    rf.load([cpu("c1", 0x1000), cpu("c2", 0x2000)])
    rf.validate()
    with pytest.raises(RegisterFileFull):
        rf.load([cpu("c1", 0x1000), cpu("c2", 0x2000), cpu("c3", 0x3000)])


def test_refuses_split_pool_profile() -> None:
    with pytest.raises(InvalidArgument):
        RegisterFile(arm64_like())


# --- validate() catches corruption -------------------------------------------------------


def test_update_adds_replaces_and_removes_all_or_nothing(rf: RegisterFile) -> None:
    rf.load([cpu("c1", 0x1000), task("a1", A, 0x2000), task("b1", B, 0x3000)])
    rf.switch(A)
    image = rf.update([cpu("c2", 0x4000), task("a1", A, 0x2008, 8)], ["b1", "never-held"])
    assert image.slots == ("c1", "a1", "c2", None)
    assert image.dr == (0x1000, 0x2008, 0x4000, 0)
    assert {a.reservation_id for a in rf.assignments} == {"c1", "a1", "c2"}
    with pytest.raises(RegisterFileFull):  # a fifth for the running task: nothing changes
        rf.update([task("a2", A, 0x5000), task("a3", A, 0x6000)], ["c2"] * 0)
    assert rf.image() == image and len(rf.assignments) == 3
    with pytest.raises(InvalidArgument, match="named twice"):
        rf.update([cpu("c3", 0x7000)], ["c3"])
    assert rf.image() == image
    rf.switch(B)  # another task's breakpoints never count against the running one's
    assert rf.image().slots == ("c1", None, "c2", None)


def test_validate_catches_stale_dr7(rf: RegisterFile) -> None:
    rf.load([cpu("c1", 0x1000)])
    rf._dr7 |= dr7.encode_slot(2, Breakpoint(0, 4, BpType.WRITE))
    with pytest.raises(LedgerCorrupt, match="slot 2"):
        rf.validate()
    rf.load([cpu("c1", 0x1000)])  # recomputed: healthy again for teardown


def test_validate_catches_a_register_used_twice(rf: RegisterFile) -> None:
    c1 = cpu("c1", 0x1000)
    rf.load([c1])
    rf._slots = (c1, c1, None, None)
    rf._dr = (0x1000, 0x1000, 0, 0)
    with pytest.raises(LedgerCorrupt, match="both DR0 and DR1"):
        rf.validate()
    rf._slots, rf._dr = (c1, None, None, None), (0x1000, 0, 0, 0)


def test_validate_catches_wrong_address_and_foreign_task(rf: RegisterFile) -> None:
    rf.load([cpu("c1", 0x1000), task("b1", B, 0x2000)])
    rf._dr = (0x1004, 0, 0, 0)
    with pytest.raises(LedgerCorrupt, match="DR0 holds 0x1004"):
        rf.validate()
    rf._dr = (0x1000, 0, 0, 0)
    rf._slots = (rf._slots[0], task("b1", B, 0x2000), None, None)
    with pytest.raises(LedgerCorrupt, match="task 202"):
        rf.validate()
    rf._slots = (rf._slots[0], None, None, None)


def test_validate_catches_missing_breakpoint(rf: RegisterFile) -> None:
    rf.load([cpu("c1", 0x1000)])
    rf._slots = (None,) * 4
    rf._dr = (0, 0, 0, 0)
    with pytest.raises(LedgerCorrupt, match="not installed: c1"):
        rf.validate()
    rf.load([])


# --- random sequences against a brute-force model ----------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("switch"), st.sampled_from([None, A, B])),
        st.tuples(
            st.just("load"),
            st.lists(
                st.tuples(
                    st.sampled_from(["c1", "c2", "c3", "a1", "a2", "a3", "b1", "b2"]),
                    st.booleans(),
                    st.sampled_from([(4, BpType.WRITE), (8, BpType.RW), (8, BpType.EXEC)]),
                ),
                unique_by=lambda t: t[0],
                max_size=8,
            ),
        ),
        st.tuples(
            st.just("update"),
            st.tuples(
                st.lists(
                    st.tuples(
                        st.sampled_from(["c1", "c2", "c3", "a1", "a2", "a3", "b1", "b2"]),
                        st.booleans(),
                        st.sampled_from([(4, BpType.WRITE), (8, BpType.RW)]),
                    ),
                    unique_by=lambda t: t[0],
                    max_size=3,
                ),
                st.lists(st.sampled_from(["c1", "c2", "a1", "a3", "b2", "x9"]), max_size=3),
            ),
        ),
    ),
    max_size=25,
)


def _assignment(rid: str, enabled: bool, shape: tuple[int, BpType]) -> Assignment:
    owner = {"c": None, "a": A, "b": B}[rid[0]]
    addr = 0x10000 + 0x100 * int(rid[1])
    return Assignment(rid, owner, Breakpoint(addr, shape[0], shape[1], enabled=enabled))


@settings(max_examples=200, deadline=None)
@given(_ops)
def test_random_sequences_keep_invariants(ops: list[tuple[object, object]]) -> None:
    """Loads, switches and updates keep every invariant, and an update leaves the CPU
    exactly as loading the whole resulting set would (``ref`` only ever loads)."""
    rf, ref = RegisterFile(), RegisterFile()
    for op, arg in ops:
        before = rf.installed
        try:
            if op == "switch":
                assert arg is None or isinstance(arg, int)
                rf.switch(arg)
                ref.switch(arg)
            elif op == "load":
                assert isinstance(arg, list)
                rf.load(_assignment(*item) for item in arg)
                ref.load(_assignment(*item) for item in arg)
            else:
                assert isinstance(arg, tuple)
                items, removed = arg
                upserts = [_assignment(*item) for item in items]
                removed = [r for r in removed if r not in {a.reservation_id for a in upserts}]
                merged = {a.reservation_id: a for a in rf.assignments}
                for rid in removed:
                    merged.pop(rid, None)
                merged.update((a.reservation_id, a) for a in upserts)
                rf.update(upserts, removed)
                ref.load(merged.values())
        except RegisterFileFull:
            assert rf.installed == before
            assert ref.installed == before
        assert set(rf.assignments) == set(ref.assignments)
        assert rf.installed == ref.installed and rf.image() == ref.image()
        rf.validate()
        image = rf.image()
        assert dr7.decode(image.dr7) == expect_dr7(rf)
        # Stability: whatever stayed installed kept its register.
        now = {a.reservation_id: i for i, a in enumerate(rf.installed) if a is not None}
        for i, a in enumerate(before):
            if a is not None and a.reservation_id in now:
                assert now[a.reservation_id] == i


def test_range_breakpoint_fires_over_its_whole_extent() -> None:
    """A 32-byte range (AMD bpext): DR7 holds LEN 00 for it (hw->len == LEN_1), the
    address mask makes every byte of the aligned range match."""
    rf = RegisterFile()
    image = rf.load([cpu("range", 0x20000, 32)])
    rf.validate()
    decoded = dr7.decode(image.dr7)[0]
    assert decoded is not None and decoded.length == 1
    assert [h.reservation_id for h in rf.access(0x2001F, 1, AccessType.WRITE)] == ["range"]
    rf.clear_dr6()
    assert rf.access(0x20020, 1, AccessType.WRITE) == []
    assert rf.access(0x1FFF8, 8, AccessType.WRITE) == []
