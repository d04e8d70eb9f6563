"""The ptrace debug-register facade, rule by rule (the x86 ptrace.c semantics)."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from hwbp import dr7
from hwbp.arch import TASK_SIZE_MAX
from hwbp.errors import (
    HwbpError,
    InvalidLength,
    InvalidRegister,
    InvalidType,
    KernelAddressNotAllowed,
    MisalignedAddress,
    NoFreeSlot,
    PtraceIOError,
    ValueOutOfRange,
)
from hwbp.ledger import HostLedger
from hwbp.model import BpType, Breakpoint, Reservation, Scope, Target
from hwbp.ptrace import (
    PtraceState,
    debugreg_offset,
    flush,
    on_hit,
    peek,
    peek_offset,
    poke,
    poke_offset,
    state_after,
)


@dataclass
class Budget:
    """Debug registers left on the (one) CPU: shared by every registrar and CPU-bound user."""

    free: int = 4


@dataclass
class FakeRegistrar:
    """The arbiter's side, reduced: reserve first, then validate (so ENOSPC wins), modify
    in place or not at all. Records every call that succeeded.
    """

    budget: Budget = field(default_factory=Budget)
    held: dict[int, Breakpoint] = field(default_factory=dict)
    calls: list[tuple[str, int, Breakpoint | None]] = field(default_factory=list)

    def register(self, index: int, bp: Breakpoint) -> None:
        assert index not in self.held
        if self.budget.free == 0:
            raise NoFreeSlot(host="h", cpu=0, slot_class="data", used=4, slots=4, holders=())
        _check(bp)
        self.budget.free -= 1
        self.held[index] = bp
        self.calls.append(("register", index, bp))

    def modify(self, index: int, bp: Breakpoint) -> None:
        assert index in self.held
        _check(bp)
        self.held[index] = bp
        self.calls.append(("modify", index, bp))

    def unregister(self, index: int) -> None:
        del self.held[index]
        self.budget.free += 1
        self.calls.append(("unregister", index, None))


def _check(bp: Breakpoint) -> None:
    """hw_breakpoint_arch_parse for a user breakpoint (exec has no alignment check)."""
    if bp.addr >= TASK_SIZE_MAX or bp.addr + bp.length - 1 >= TASK_SIZE_MAX:
        raise KernelAddressNotAllowed(f"{bp.addr:#x} is a kernel address")
    if bp.type is not BpType.EXEC and bp.addr & (bp.length - 1):
        raise MisalignedAddress(f"{bp.addr:#x} is not aligned to {bp.length}")


@pytest.fixture
def reg() -> FakeRegistrar:
    return FakeRegistrar()


S0 = PtraceState()
W4 = 0b1101  # LEN 11 (4 bytes), R/W 01 (write)
RW8 = 0b1011  # LEN 10 (8 bytes), R/W 11 (read/write)
IO = 0b0010  # R/W 10: I/O


def dr7_value(*slots: tuple[int, int], local: bool = True) -> int:
    """DR7 as breakpoint_test.c writes it: L bit 2n + LE (or G 2n+1 + GE) and the nibble."""
    value = 0
    for n, nibble in slots:
        value |= (1 << 2 * n | 0x100) if local else (2 << 2 * n | 0x200)
        value |= nibble << 16 + 4 * n
    return value


def test_initial_state_reads() -> None:
    assert [peek(S0, n) for n in range(8)] == [0, 0, 0, 0, 0, 0, 0xFFFF0FF0, 0]


# --- DR0-DR3 ----------------------------------------------------------------------------


def test_address_write_registers_a_disabled_one_byte_write(reg: FakeRegistrar) -> None:
    st = poke(S0, 2, 0x1000, reg)
    stub = Breakpoint(0x1000, 1, BpType.WRITE, enabled=False)
    assert st.bps == (None, None, stub, None)
    assert reg.calls == [("register", 2, stub)]
    assert reg.budget.free == 3  # disabled, yet it holds a slot
    assert peek(st, 2) == 0x1000
    assert peek(st, 7) == 0
    assert S0.bps == (None,) * 4  # the old state object is untouched


def test_address_write_enospc(reg: FakeRegistrar) -> None:
    reg.budget.free = 0
    with pytest.raises(NoFreeSlot) as info:
        poke(S0, 0, 0x1000, reg)
    assert info.value.errno == errno.ENOSPC
    assert state_after(info.value) == S0
    assert reg.calls == []


def test_address_write_kernel_address_is_einval(reg: FakeRegistrar) -> None:
    with pytest.raises(KernelAddressNotAllowed) as info:
        poke(S0, 0, 0xFFFF_FFFF_8100_0000, reg)
    assert info.value.errno == errno.EINVAL
    assert reg.held == {}
    assert reg.budget.free == 4


def test_second_address_write_modifies_keeping_len_type_enabled(reg: FakeRegistrar) -> None:
    st = poke(S0, 0, 0x1000, reg)
    st = poke(st, 7, dr7_value((0, W4)), reg)
    st = poke(st, 0, 0x2000, reg)
    assert st.bps[0] == Breakpoint(0x2000, 4, BpType.WRITE, enabled=True)
    assert reg.calls[-1] == ("modify", 0, st.bps[0])
    assert [c[0] for c in reg.calls] == ["register", "modify", "modify"]
    assert reg.budget.free == 3
    assert peek(st, 0) == 0x2000


def test_misaligned_address_write_leaves_everything_unchanged(reg: FakeRegistrar) -> None:
    st = poke(S0, 0, 0x1000, reg)
    st = poke(st, 7, dr7_value((0, W4)), reg)
    with pytest.raises(MisalignedAddress) as info:
        poke(st, 0, 0x1002, reg)
    assert info.value.errno == errno.EINVAL
    assert state_after(info.value) == st
    assert peek(st, 0) == 0x1000
    assert reg.held[0] == Breakpoint(0x1000, 4, BpType.WRITE)


# --- DR4, DR5, DR6 and beyond -----------------------------------------------------------


@pytest.mark.parametrize("n", [4, 5])
def test_dr4_dr5(n: int, reg: FakeRegistrar) -> None:
    with pytest.raises(PtraceIOError) as info:
        poke(S0, n, 1, reg)
    assert info.value.errno == errno.EIO
    assert peek(S0, n) == 0
    assert reg.calls == []


@pytest.mark.parametrize("n", [8, 9, -1])
def test_no_such_register(n: int, reg: FakeRegistrar) -> None:
    with pytest.raises(PtraceIOError):
        poke(S0, n, 0, reg)
    with pytest.raises(PtraceIOError):
        peek(S0, n)


def test_value_must_be_an_unsigned_long(reg: FakeRegistrar) -> None:
    with pytest.raises(ValueOutOfRange):
        poke(S0, 0, -1, reg)
    with pytest.raises(ValueOutOfRange):
        poke(S0, 7, 1 << 64, reg)


@pytest.mark.parametrize("value", [0, 0x1234, 0xFFFF0FF0, 0xFFFF4FF1, 2**64 - 1])
def test_dr6_write_reads_back_unchanged(value: int, reg: FakeRegistrar) -> None:
    st = poke(S0, 6, value, reg)
    assert st.virtual_dr6 == value ^ 0xFFFF0FF0
    assert peek(st, 6) == value
    assert reg.calls == []


def test_dr6_hit_is_by_ptrace_index(reg: FakeRegistrar) -> None:
    st = poke(S0, 1, 0x1000, reg)
    st = poke(st, 7, dr7_value((1, W4)), reg)
    assert peek(on_hit(st, 1), 6) == 0xFFFF0FF2
    # A #DB restarts virtual_dr6: whatever was written (or fired) before is gone.
    st = poke(st, 6, 0xFFFF0FF8, reg)
    assert peek(on_hit(st, 1), 6) == 0xFFFF0FF2
    assert peek(on_hit(st, 1, step=True), 6) == 0xFFFF4FF2


def test_dr6_two_indices_in_one_exception(reg: FakeRegistrar) -> None:
    st = poke(S0, 0, 0x1000, reg)
    st = poke(st, 3, 0x2000, reg)
    st = poke(st, 7, dr7_value((0, W4), (3, RW8)), reg)
    assert peek(on_hit(st, 0, 3), 6) == 0xFFFF0FF9


def test_hit_needs_an_enabled_breakpoint(reg: FakeRegistrar) -> None:
    st = poke(S0, 0, 0x1000, reg)  # disabled stub
    with pytest.raises(InvalidRegister):
        on_hit(st, 0)
    with pytest.raises(InvalidRegister):
        on_hit(st, 4)


# --- DR7 --------------------------------------------------------------------------------


def test_dr7_enables_and_reads_back_raw(reg: FakeRegistrar) -> None:
    st = poke(S0, 0, 0x1000, reg)
    value = dr7_value((0, W4)) | 0x400 | 0x2000 | 0xFFFF_FFFF_0000_0000  # reserved bits too
    st = poke(st, 7, value, reg)
    assert st.bps[0] == Breakpoint(0x1000, 4, BpType.WRITE, enabled=True)
    assert reg.calls[-1] == ("modify", 0, st.bps[0])
    assert peek(st, 7) == value  # bit for bit, reserved bits included
    assert st.dr7 == value


def test_dr7_global_bits_enable_too(reg: FakeRegistrar) -> None:
    st = poke(S0, 3, 0x1008, reg)
    st = poke(st, 7, dr7_value((3, RW8), local=False), reg)
    assert st.bps[3] == Breakpoint(0x1008, 8, BpType.RW, enabled=True)


def test_dr7_execute_breakpoint_is_sizeof_long(reg: FakeRegistrar) -> None:
    st = poke(S0, 1, 0x401003, reg)  # no alignment for execute
    st = poke(st, 7, dr7_value((1, 0b0000)), reg)
    assert st.bps[1] == Breakpoint(0x401003, 8, BpType.EXEC, enabled=True)


def test_dr7_enabled_slot_without_breakpoint_registers_at_address_0(reg: FakeRegistrar) -> None:
    st = poke(S0, 7, dr7_value((2, RW8)), reg)
    new = Breakpoint(0, 8, BpType.RW, enabled=True)
    assert st.bps == (None, None, new, None)
    assert reg.calls == [("register", 2, new)]
    assert peek(st, 2) == 0


def test_dr7_disabled_slot_without_breakpoint_is_skipped(reg: FakeRegistrar) -> None:
    # Slot 1 carries I/O bits but is disabled and has no breakpoint: nothing looks at it.
    value = IO << 20
    st = poke(S0, 7, value, reg)
    assert st.bps == (None,) * 4
    assert reg.calls == []
    assert peek(st, 7) == value


def test_dr7_disabling_modifies_to_the_decoded_len_type(reg: FakeRegistrar) -> None:
    st = poke(S0, 0, 0x1000, reg)
    st = poke(st, 7, dr7_value((0, W4)), reg)
    st = poke(st, 7, 0, reg)
    # Clear bits decode as LEN 00 / R/W 00: a disabled execute breakpoint, slot kept.
    assert st.bps[0] == Breakpoint(0x1000, 8, BpType.EXEC, enabled=False)
    assert reg.held[0] == st.bps[0]
    assert reg.budget.free == 3
    assert peek(st, 0) == 0x1000
    assert peek(st, 7) == 0


def test_dr7_disabled_slot_with_breakpoint_still_takes_its_len(reg: FakeRegistrar) -> None:
    st = poke(S0, 0, 0x1001, reg)
    # Disabled (no L0/G0) yet LEN 4: modified anyway, and 0x1001 is misaligned for 4.
    with pytest.raises(MisalignedAddress):
        poke(st, 7, W4 << 16, reg)


@pytest.mark.parametrize(
    ("nibble", "error"),
    [(IO, InvalidType), (0b1000 | 0b00, InvalidLength), (0b0100, InvalidLength)],
)
def test_dr7_invalid_encodings(nibble: int, error: type[HwbpError], reg: FakeRegistrar) -> None:
    with pytest.raises(error) as info:
        poke(S0, 7, dr7_value((0, nibble)), reg)
    assert info.value.errno == errno.EINVAL
    assert reg.calls == []
    assert state_after(info.value) == S0


def test_dr7_rollback_restores_earlier_indices(reg: FakeRegistrar) -> None:
    st = poke(S0, 0, 0x1000, reg)
    st = poke(st, 2, 0x3001, reg)
    good = dr7_value((0, W4))
    st = poke(st, 7, good, reg)
    assert reg.budget.free == 2
    reg.calls.clear()

    # Slot 0 changes, slot 1 is created, slot 2 is misaligned for 8 bytes: EINVAL.
    bad = dr7_value((0, 0b0111), (1, W4), (2, RW8))  # 0b0111: LEN 01, R/W 11
    with pytest.raises(MisalignedAddress) as info:
        poke(st, 7, bad, reg)
    after = state_after(info.value)
    assert after is not None
    # Slot 0 is back to what the old DR7 said; the new slot 1 stays registered, disabled;
    # slot 2 was re-applied from clear bits (a disabled execute breakpoint).
    assert after.bps == (
        Breakpoint(0x1000, 4, BpType.WRITE, enabled=True),
        Breakpoint(0, 8, BpType.EXEC, enabled=False),
        Breakpoint(0x3001, 8, BpType.EXEC, enabled=False),
        None,
    )
    assert reg.held == {i: bp for i, bp in enumerate(after.bps) if bp is not None}
    assert reg.budget.free == 1
    assert [c[:2] for c in reg.calls] == [
        ("modify", 0),  # first pass: slot 0 to RW len 2
        ("register", 1),  # first pass: slot 1 created at address 0
        ("modify", 0),  # second pass: slot 0 back
        ("modify", 1),  # second pass: slot 1 disabled
        ("modify", 2),  # second pass: slot 2 from clear bits
    ]
    assert reg.calls[0][2] == Breakpoint(0x1000, 2, BpType.RW)
    assert peek(after, 7) == good  # DR7 is only stored on success
    assert after.dr7 == st.dr7


def test_dr7_rollback_on_enospc(reg: FakeRegistrar) -> None:
    reg.budget.free = 1
    with pytest.raises(NoFreeSlot) as info:
        poke(S0, 7, dr7_value((0, W4), (1, W4)), reg)
    after = state_after(info.value)
    assert after is not None
    assert after.bps == (Breakpoint(0, 8, BpType.EXEC, enabled=False), None, None, None)
    assert reg.held == {0: after.bps[0]}
    assert after.dr7 == 0
    # Retrying after a slot frees up reuses the breakpoint that stayed.
    reg.budget.free = 1
    st = poke(after, 7, dr7_value((0, W4), (1, W4)), reg)
    assert st.bps[0] == Breakpoint(0, 4, BpType.WRITE) == st.bps[1]
    assert reg.budget.free == 0


def test_breakpoint_test_c_sequence(reg: FakeRegistrar) -> None:
    """The selftest's pattern: POKE the address, read-modify-write DR7, then clear it."""
    st = S0
    for local in (True, False):
        for n in range(4):
            st = poke(st, n, 0x10000 + 0x100 * n, reg)
            enable = dr7_value((n, W4), local=local)
            st = poke(st, 7, peek(st, 7) | enable, reg)
            assert st.bps[n] == Breakpoint(0x10000 + 0x100 * n, 4, BpType.WRITE)
            assert peek(on_hit(st, n), 6) == 0xFFFF0FF0 | 1 << n
            st = poke(st, 7, peek(st, 7) & ~enable, reg)
            cleared = st.bps[n]
            assert cleared is not None
            assert not cleared.enabled
    assert reg.budget.free == 0  # four ptrace breakpoints hold four slots, even disabled


# --- offsets and teardown ---------------------------------------------------------------


def test_debugreg_offsets() -> None:
    assert [debugreg_offset(n) for n in range(8)] == [848 + 8 * n for n in range(8)]
    with pytest.raises(PtraceIOError):
        debugreg_offset(8)


def test_offsets_reach_the_registers(reg: FakeRegistrar) -> None:
    st = poke_offset(S0, 848 + 8 * 1, 0x1000, reg)
    assert st.bps[1] == Breakpoint(0x1000, 1, BpType.WRITE, enabled=False)
    assert peek_offset(st, 848 + 8) == 0x1000
    st = poke_offset(st, 848 + 8 * 6, 0, reg)
    assert peek_offset(st, 848 + 8 * 6) == 0
    assert peek_offset(st, 848 + 8 * 6) == peek(st, 6)
    with pytest.raises(PtraceIOError):
        poke_offset(st, 848 + 8 * 4, 0, reg)


@pytest.mark.parametrize("offset", [849, 852, 928, 936, 4096, -8])
def test_bad_offsets_are_eio(offset: int, reg: FakeRegistrar) -> None:
    with pytest.raises(PtraceIOError) as info:
        peek_offset(S0, offset)
    assert info.value.errno == errno.EIO
    with pytest.raises(PtraceIOError) as info:
        poke_offset(S0, offset, 0, reg)
    assert state_after(info.value) == S0


def test_general_register_offsets_are_not_modelled(reg: FakeRegistrar) -> None:
    with pytest.raises(PtraceIOError, match="only u_debugreg"):
        peek_offset(S0, 0)
    with pytest.raises(PtraceIOError, match="only u_debugreg"):
        poke_offset(S0, 208, 0, reg)


@pytest.mark.parametrize("offset", [216, 840, 912, 920])
def test_other_user_fields_read_0_and_refuse_writes(offset: int, reg: FakeRegistrar) -> None:
    assert peek_offset(S0, offset) == 0
    with pytest.raises(PtraceIOError):
        poke_offset(S0, offset, 1, reg)
    assert reg.calls == []


def test_flush_unregisters_all(reg: FakeRegistrar) -> None:
    st = poke(S0, 0, 0x1000, reg)
    st = poke(st, 3, 0x2000, reg)
    st = poke(st, 7, dr7_value((3, W4)), reg)
    st = poke(st, 6, 0x1, reg)
    reg.calls.clear()
    st = flush(st, reg)
    assert st == PtraceState()
    assert reg.calls == [("unregister", 0, None), ("unregister", 3, None)]
    assert reg.held == {}
    assert reg.budget.free == 4
    assert peek(st, 6) == 0xFFFF0FF0


def test_slots_are_shared_with_other_users(reg: FakeRegistrar) -> None:
    """ENOSPC comes from the shared budget: CPU-bound users took three registers."""
    reg.budget.free = 1
    st = poke(S0, 0, 0x1000, reg)
    with pytest.raises(NoFreeSlot):
        poke(st, 1, 0x2000, reg)
    st = flush(st, reg)
    assert reg.budget.free == 1


def test_state_shape() -> None:
    with pytest.raises(InvalidRegister):
        PtraceState(bps=(None,) * 3)
    assert len(S0.bps) == dr7.HBP_NUM


# --- fidelity to the kernel (issue 19) --------------------------------------------------

TSM = TASK_SIZE_MAX
USER_WORD = 0x7F00_0000_1018


class LedgerRegistrar:
    """The arbiter's registrar, on the real core: a task-scoped reservation per index,
    admitted and validated by the host ledger exactly as the Ptrace service does."""

    def __init__(self, ledger: HostLedger, task: int = 42) -> None:
        self.ledger, self.task = ledger, task
        self.ids: dict[int, str] = {}

    def register(self, index: int, bp: Breakpoint) -> None:
        rid = f"p{len(self.ledger) + 1}-{index}"
        target = Target(Scope.TASK, task=self.task)
        self.ledger.reserve(Reservation(rid, "h", target, bp, ptrace_index=index))
        self.ids[index] = rid

    def modify(self, index: int, bp: Breakpoint) -> None:
        self.ledger.modify(self.ids[index], bp)

    def unregister(self, index: int) -> None:
        self.ledger.release(self.ids.pop(index))

    def held(self) -> tuple[Breakpoint | None, ...]:
        return tuple(self.ledger.get(self.ids[i]).bp if i in self.ids else None for i in range(4))


def armed_matches_dr7(st: PtraceState, registrar: LedgerRegistrar) -> None:
    """What the registers hold equals what a PEEK says: the same breakpoints, and armed
    exactly where the DR7 that PEEKUSER returns enables a slot."""
    assert registrar.held() == st.bps
    armed = [bp is not None and bp.enabled for bp in st.bps]
    assert armed == [dr7.slot_enabled(peek(st, 7), i) for i in range(4)]


def test_dr7_second_pass_near_task_size_max_disarms_slot_0() -> None:
    """ptrace_write_dr7(): the first pass enables slot 0 (write, 1 byte) and fails on
    slot 2 (R/W=10, EINVAL); the second pass re-applies old_dr7 (0), so slot 0 becomes a
    disabled exec/len-8 breakpoint at TASK_SIZE_MAX-4, which the kernel accepts (one byte
    is checked). Moving DR0 to a watched word afterwards arms nothing: the task's write
    there does not trap, DR7 reads 0 (observed on this machine)."""
    ledger = HostLedger("h", 2)
    reg = LedgerRegistrar(ledger)
    st = poke(S0, 0, TSM - 4, reg)
    with pytest.raises(InvalidType) as info:
        poke(st, 7, 0x02010011, reg)
    after = state_after(info.value)
    assert after is not None
    assert after.bps[0] == Breakpoint(TSM - 4, 8, BpType.EXEC, enabled=False)
    armed_matches_dr7(after, reg)
    st = poke(after, 0, USER_WORD, reg)
    assert st.bps[0] == Breakpoint(USER_WORD, 8, BpType.EXEC, enabled=False)
    assert [peek(st, n) for n in (0, 6, 7)] == [USER_WORD, 0xFFFF0FF0, 0]
    armed_matches_dr7(st, reg)
    ledger.validate()


@dataclass
class RefusesRestore(FakeRegistrar):
    """A registrar whose second-pass restore of ``index`` fails (the kernel's WARN_ON
    case: with the kernel's own validation it cannot happen on x86-64)."""

    index: int = 0
    modifies: int = 0

    def modify(self, index: int, bp: Breakpoint) -> None:
        if index == self.index:
            self.modifies += 1
            if self.modifies == 2:
                raise KernelAddressNotAllowed(f"{bp.addr:#x} refused on restore")
        super().modify(index, bp)


def test_a_failed_restore_is_never_dropped() -> None:
    """ptrace_write_dr7() returns the first error; when its second pass fails too the
    kernel WARNs and stops restoring there. The arbiter must not keep that half-restored
    state (DR0 armed while DR7 reads back as before): the first error is raised, it names
    the failed restore, and it carries no state to keep (``state_after`` is None), so the
    caller rolls the whole write back."""
    reg = RefusesRestore()
    st = poke(S0, 0, 0x1000, reg)
    bad = dr7_value((0, W4), (2, IO))
    with pytest.raises(InvalidType) as info:
        poke(st, 7, bad, reg)
    assert state_after(info.value) is None
    assert "restoring" in info.value.message and "DR0" in info.value.message
    assert info.value.metadata["restore_failed"] == "0"


_ADDRS = st.sampled_from(
    [0, 0x1000, 0x1001, USER_WORD, TSM - 8, TSM - 4, TSM - 1, TSM, 0xFFFF_FFFF_8100_0000]
)
_DR7 = st.builds(
    lambda enables, nibbles, extra: (
        enables | sum(n << 16 + 4 * i for i, n in enumerate(nibbles)) | extra
    ),
    st.integers(0, 0xFF),
    st.lists(st.integers(0, 0xF), min_size=4, max_size=4),
    st.sampled_from([0, 0x100, 0x200, 0x400, 0xFFFF_FFFF_0000_2000]),
)
_POKES = st.lists(
    st.one_of(
        st.tuples(st.integers(0, 3), _ADDRS),
        st.tuples(st.just(7), _DR7),
        st.tuples(st.just(6), st.integers(0, 0xFFFF_FFFF)),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(pokes=_POKES, busy=st.integers(0, 4))
def test_registers_always_equal_what_peek_says(pokes: list[tuple[int, int]], busy: int) -> None:
    """Whatever a POKEUSER sequence does, and wherever it fails (EINVAL, or ENOSPC when
    ``busy`` CPU-bound breakpoints share the CPU), what the registrar holds is what
    PEEKUSER shows: the same addresses, and a breakpoint is armed exactly where the DR7
    that PEEKUSER returns enables its slot (ptrace_write_dr7's two passes keep that)."""
    ledger = HostLedger("h", 1)
    for i in range(busy):
        bp = Breakpoint(0x2000 + 8 * i, 8, BpType.WRITE)
        ledger.reserve(Reservation(f"c{i}", "h", Target(Scope.CPU, cpu=0), bp))
    reg = LedgerRegistrar(ledger)
    state = S0
    for n, value in pokes:
        try:
            state = poke(state, n, value, reg)
        except HwbpError as err:
            after = state_after(err)
            assert after is not None  # the kernel's own validation never fails a restore
            state = after
        armed_matches_dr7(state, reg)
        ledger.validate()
