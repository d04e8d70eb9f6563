"""DR7 encode/decode against the kernel's encodings (arch/x86/kernel/hw_breakpoint.c)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwbp import dr7
from hwbp.errors import InvalidLength, InvalidRegister, InvalidType, ReadOnlyUnsupported
from hwbp.model import BpType, Breakpoint

# The kernel's X86_BREAKPOINT_* constants: encode_dr7 takes ((len | type) & 0xf).
X86_LEN = {1: 0x40, 2: 0x44, 4: 0x4C, 8: 0x48}
X86_TYPE = {BpType.EXEC: 0x80, BpType.WRITE: 0x81, BpType.RW: 0x83}
X86_LEN_X = 0x40


def kernel_encode_dr7(index: int, length: int, bp_type: BpType) -> int:
    """encode_dr7() transcribed: control nibble, Gi and GE."""
    x86_len = X86_LEN_X if bp_type is BpType.EXEC else X86_LEN[length]
    bits = ((x86_len | X86_TYPE[bp_type]) & 0xF) << (16 + 4 * index)
    return bits | 2 << (index * 2) | dr7.DR_GLOBAL_SLOWDOWN


def test_constants() -> None:
    assert dr7.DR7_FIXED_1 == 0x400
    assert dr7.DR_LOCAL_SLOWDOWN == 0x100
    assert dr7.DR_GLOBAL_SLOWDOWN == 0x200
    assert dr7.DR_CONTROL_RESERVED == 0xFFFFFFFF0000FC00
    assert dr7.DR_LOCAL_ENABLE_MASK == 0x55
    assert dr7.DR_GLOBAL_ENABLE_MASK == 0xAA
    assert dr7.DR6_RESERVED == 0xFFFF0FF0


@pytest.mark.parametrize(("length", "bits"), [(1, 0b00), (2, 0b01), (4, 0b11), (8, 0b10)])
def test_len_bits(length: int, bits: int) -> None:
    assert dr7.len_bits(length) == bits


@pytest.mark.parametrize("length", [0, 3, 5, 16, -1])
def test_len_bits_refuses_other_lengths(length: int) -> None:
    with pytest.raises(InvalidLength):
        dr7.len_bits(length)


def test_type_bits() -> None:
    assert dr7.type_bits(BpType.EXEC) == 0b00
    assert dr7.type_bits(BpType.WRITE) == 0b01
    assert dr7.type_bits(BpType.RW) == 0b11
    with pytest.raises(ReadOnlyUnsupported):
        dr7.type_bits(BpType.READ)


def test_encode_slot_write_len4_in_slot0() -> None:
    # (0x4c | 0x81) & 0xf = 0xd at bits 16..19, G0 = bit 1; the kernel never sets L0.
    assert dr7.encode_slot(0, Breakpoint(0x1000, 4, BpType.WRITE)) == 0xD0002


def test_encode_slot_exec_uses_len_00() -> None:
    assert dr7.encode_slot(3, Breakpoint(0x1003, 8, BpType.EXEC)) == 0x80
    with pytest.raises(InvalidLength):
        dr7.encode_slot(0, Breakpoint(0x1000, 1, BpType.EXEC))


def test_encode_slot_bad_index() -> None:
    with pytest.raises(InvalidRegister):
        dr7.encode_slot(4, Breakpoint(0x1000, 1, BpType.WRITE))


@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("length", [1, 2, 4, 8])
@pytest.mark.parametrize("bp_type", [BpType.WRITE, BpType.RW, BpType.EXEC])
def test_encode_matches_kernel(index: int, length: int, bp_type: BpType) -> None:
    if bp_type is BpType.EXEC:
        length = 8
    slots: list[Breakpoint | None] = [None] * 4
    slots[index] = Breakpoint(0x1000, length, bp_type)
    expected = dr7.DR7_FIXED_1 | kernel_encode_dr7(index, length, bp_type)
    assert dr7.encode(slots) == expected


def test_encode_empty_is_fixed_bit_only() -> None:
    assert dr7.encode([]) == 0x400
    assert dr7.encode([None, None, None, None]) == 0x400


def test_encode_skips_disabled() -> None:
    assert dr7.encode([Breakpoint(0x1000, 4, BpType.WRITE, enabled=False)]) == 0x400


def test_encode_several_slots() -> None:
    value = dr7.encode(
        [Breakpoint(0x1000, 4, BpType.WRITE), None, Breakpoint(0x2000, 8, BpType.RW), None]
    )
    # slot 0: 0xd, slot 2: LEN 10 R/W 11 = 0xb; G0|G2; GE; fixed bit.
    assert value == 0xD << 16 | 0xB << 24 | 0b100010 | 0x200 | 0x400


def test_encode_refuses_five_slots() -> None:
    with pytest.raises(InvalidRegister):
        dr7.encode([None] * 5)


def test_decode_local_and_global_bits() -> None:
    # What breakpoint_test.c writes: L0 | LE with a 2-byte RW watchpoint.
    value = 1 | 0x100 | (0b01 << 2 | 0b11) << 16
    slots = dr7.decode(value)
    assert slots == (dr7.DecodedSlot(0, True, False, 2, BpType.RW), None, None, None)
    both = dr7.decode(0b11 << 6 | 0b1001 << 28)
    assert both[3] == dr7.DecodedSlot(3, True, True, 8, BpType.WRITE)


def test_decode_exec_reports_sizeof_long() -> None:
    assert dr7.decode(0b10 << 2)[1] == dr7.DecodedSlot(1, False, True, 8, BpType.EXEC)


def test_decode_refuses_io_and_long_exec() -> None:
    with pytest.raises(InvalidType):
        dr7.decode(1 | 0b10 << 16)
    with pytest.raises(InvalidLength):
        dr7.decode(1 | 0b0100 << 16)


def test_decode_ignores_control_bits_of_disabled_slots() -> None:
    # An I/O nibble in a disabled slot is not an error: nothing is installed there.
    assert dr7.decode(0b10 << 16) == (None, None, None, None)


def test_generic_fields() -> None:
    assert dr7.generic_fields(0b11, 0b01) == (4, BpType.WRITE)
    assert dr7.generic_fields(0b00, 0b00) == (8, BpType.EXEC)
    with pytest.raises(InvalidType):
        dr7.generic_fields(0, 0b10)


# --- round trips ------------------------------------------------------------------------

_breakpoints = st.one_of(
    st.builds(
        Breakpoint,
        addr=st.integers(0, 2**47),
        length=st.sampled_from([1, 2, 4, 8]),
        type=st.sampled_from([BpType.WRITE, BpType.RW]),
    ),
    st.builds(Breakpoint, addr=st.integers(0, 2**47), length=st.just(8), type=st.just(BpType.EXEC)),
)
_slot_lists = st.lists(st.none() | _breakpoints, min_size=0, max_size=4)


@given(_slot_lists)
def test_round_trip_encode_decode(slots: list[Breakpoint | None]) -> None:
    value = dr7.encode(slots)
    decoded = dr7.decode(value)
    padded = slots + [None] * (4 - len(slots))
    for index, (bp, got) in enumerate(zip(padded, decoded, strict=True)):
        if bp is None:
            assert got is None
        else:
            assert got == dr7.DecodedSlot(index, False, True, bp.length, bp.type)
    assert value & dr7.DR7_FIXED_1
    assert bool(value & dr7.DR_GLOBAL_SLOWDOWN) == any(bp is not None for bp in slots)
    assert value & dr7.DR_LOCAL_ENABLE_MASK == 0
    assert value & dr7.DR_CONTROL_RESERVED == dr7.DR7_FIXED_1  # 0xFC00 covers bit 10


@given(_slot_lists)
def test_round_trip_decode_encode(slots: list[Breakpoint | None]) -> None:
    value = dr7.encode(slots)
    rebuilt = [None if s is None else Breakpoint(0, s.length, s.type) for s in dr7.decode(value)]
    assert dr7.encode(rebuilt) == value


@given(st.integers(0, 2**64 - 1))
def test_decode_any_value_is_consistent(value: int) -> None:
    try:
        decoded = dr7.decode(value)
    except (InvalidType, InvalidLength):
        return
    for index, slot in enumerate(decoded):
        assert (slot is not None) == bool(value >> 2 * index & 3)
        if slot is not None:
            lenbits, rwbits = dr7.control_bits(value, index)
            assert dr7.generic_fields(lenbits, rwbits) == (slot.length, slot.type)


@pytest.mark.parametrize("length", [16, 32, 4096])
def test_encode_slot_range_uses_len_1(length: int) -> None:
    """An AMD range breakpoint (X86_FEATURE_BPEXT): arch_build_bp_info() sets hw->len to
    X86_BREAKPOINT_LEN_1 and the extent goes to the address mask, so encode_dr7() writes
    LEN 00 for it."""
    bp = Breakpoint(0x10000, length, BpType.WRITE)
    assert dr7.encode_slot(1, bp) == (0b0001 << 20) | dr7.enable_bits(1)
    assert dr7.slot_length(bp) == 1
    with pytest.raises(InvalidLength):
        dr7.encode_slot(1, Breakpoint(0x10000, 12, BpType.WRITE))
