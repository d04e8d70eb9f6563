"""DR7 encode/decode, bit for bit as arch/x86 does it.

The kernel only ever sets G bits (plus GE) for the breakpoints it installs, and
``RegisterFile`` recomputes DR7 from the installed set after every change, so that a
context switch rebuilds DR7 as well as DR0-DR3 (see the 2009 hw-breakpoint thread).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hwbp.errors import InvalidLength, InvalidRegister, InvalidType, ReadOnlyUnsupported
from hwbp.model import BpType, Breakpoint

HBP_NUM = 4  # DR0-DR3

DR7_FIXED_1 = 0x400  # bit 10 reads as 1
DR_LOCAL_SLOWDOWN = 0x100  # LE
DR_GLOBAL_SLOWDOWN = 0x200  # GE
DR_CONTROL_RESERVED = 0xFFFFFFFF0000FC00  # 64-bit; ptrace masks these off
DR_LOCAL_ENABLE_MASK = 0x55  # L0..L3 at bits 0, 2, 4, 6
DR_GLOBAL_ENABLE_MASK = 0xAA  # G0..G3 at bits 1, 3, 5, 7
DR_ENABLE_SIZE = 2  # bits per slot in the enable field
DR_CONTROL_SHIFT = 16  # R/W0 starts at bit 16
DR_CONTROL_SIZE = 4  # R/W (2 bits) + LEN (2 bits) per slot

DR6_RESERVED = 0xFFFF0FF0  # DR6 reads with these bits set when nothing fired
DR_TRAP_BITS = 0xF  # B0..B3
DR_STEP = 0x4000  # BS: single-step

# R/W field (low two bits of a slot's control nibble).
RW_EXEC = 0b00
RW_WRITE = 0b01
RW_IO = 0b10  # I/O breakpoints: never used by Linux
RW_RW = 0b11

# LEN field (high two bits of a slot's control nibble): bytes <-> bits.
_LEN_TO_BITS = {1: 0b00, 2: 0b01, 4: 0b11, 8: 0b10}
_BITS_TO_LEN = {bits: length for length, bits in _LEN_TO_BITS.items()}
_TYPE_TO_BITS = {BpType.EXEC: RW_EXEC, BpType.WRITE: RW_WRITE, BpType.RW: RW_RW}
_BITS_TO_TYPE = {bits: bp_type for bp_type, bits in _TYPE_TO_BITS.items()}
EXEC_LENGTH = 8  # sizeof(long): the generic length of an x86-64 execute breakpoint


def len_bits(length: int) -> int:
    """LEN field for a data breakpoint length (1, 2, 4 or 8 bytes)."""
    try:
        return _LEN_TO_BITS[length]
    except KeyError:
        raise InvalidLength(
            f"x86 debug registers watch 1, 2, 4 or 8 bytes, not {length}", length=length
        ) from None


def type_bits(bp_type: BpType) -> int:
    """R/W field for a breakpoint type; x86 has no read-only watchpoint."""
    if bp_type is BpType.READ:
        raise ReadOnlyUnsupported(
            "x86 cannot watch reads alone; use rw (R/W = 10 means I/O)", type=bp_type.value
        )
    return _TYPE_TO_BITS[bp_type]


def _check_index(index: int) -> None:
    if not 0 <= index < HBP_NUM:
        raise InvalidRegister(f"debug register index must be 0..3, got {index}", index=index)


def enable_bits(index: int, *, local: bool = False, global_: bool = True) -> int:
    """The Li/Gi bits of slot ``index``."""
    _check_index(index)
    return (int(local) | int(global_) << 1) << (DR_ENABLE_SIZE * index)


def slot_length(bp: Breakpoint) -> int:
    """The length DR7 describes for ``bp`` (what ``decode`` reads back).

    An AMD range breakpoint (an aligned power of two above 8 bytes, X86_FEATURE_BPEXT)
    is LEN 00 in DR7, as the kernel's hw->len = X86_BREAKPOINT_LEN_1: its extent lives
    in the CPU's address-mask register, not in DR7.
    """
    if bp.type is not BpType.EXEC and bp.length > EXEC_LENGTH:
        if bp.length & (bp.length - 1):
            raise InvalidLength(
                f"x86 debug registers watch 1, 2, 4 or 8 bytes or an aligned power-of-two "
                f"range, not {bp.length}",
                length=bp.length,
            )
        return 1
    return bp.length


def encode_slot(index: int, bp: Breakpoint) -> int:
    """Slot bits as encode_dr7(): control nibble plus Gi (the kernel never sets Li).

    Execute breakpoints use LEN 00 and must have the generic length sizeof(long); range
    breakpoints use LEN 00 too (``slot_length``).
    """
    _check_index(index)
    if bp.type is BpType.EXEC:
        if bp.length != EXEC_LENGTH:
            raise InvalidLength(
                f"an execute breakpoint has length {EXEC_LENGTH} (LEN 00), not {bp.length}",
                length=bp.length,
            )
        control = type_bits(bp.type)
    else:
        control = len_bits(slot_length(bp)) << 2 | type_bits(bp.type)
    shift = DR_CONTROL_SHIFT + DR_CONTROL_SIZE * index
    return (control & 0xF) << shift | enable_bits(index)


def encode(slots: Sequence[Breakpoint | None]) -> int:
    """DR7 for the breakpoints installed in DR0.. (None, or a disabled one, is a free slot).

    Bit 10 is always set; GE is set when anything is installed, as the kernel does.
    """
    if len(slots) > HBP_NUM:
        raise InvalidRegister(f"DR7 describes at most {HBP_NUM} registers, got {len(slots)}")
    dr7 = DR7_FIXED_1
    for index, bp in enumerate(slots):
        if bp is not None and bp.enabled:
            dr7 |= encode_slot(index, bp) | DR_GLOBAL_SLOWDOWN
    return dr7


@dataclass(frozen=True, slots=True)
class DecodedSlot:
    """One enabled slot of a DR7 value, in generic terms (bytes, BpType)."""

    index: int
    local: bool
    global_: bool
    length: int
    type: BpType


def control_bits(dr7: int, index: int) -> tuple[int, int]:
    """(LEN bits, R/W bits) of slot ``index``, whether or not it is enabled."""
    _check_index(index)
    nibble = dr7 >> (DR_CONTROL_SHIFT + DR_CONTROL_SIZE * index) & 0xF
    return nibble >> 2, nibble & 0b11


def generic_fields(lenbits: int, rwbits: int) -> tuple[int, BpType]:
    """arch_bp_generic_fields(): (length, type) for LEN/R/W bits, or EINVAL.

    R/W = 10 (I/O) is refused, and so is an execute slot with LEN other than 00.
    """
    if rwbits == RW_IO:
        raise InvalidType("R/W = 10 (I/O breakpoint) is not supported", rw=bin(rwbits))
    bp_type = _BITS_TO_TYPE[rwbits]
    if bp_type is BpType.EXEC:
        if lenbits != 0:
            raise InvalidLength(
                "an execute breakpoint needs LEN 00", len_bits=format(lenbits, "02b")
            )
        return EXEC_LENGTH, bp_type
    return _BITS_TO_LEN[lenbits], bp_type


def slot_enabled(dr7: int, index: int) -> bool:
    """decode_dr7(): a slot is enabled when its L or G bit is set."""
    _check_index(index)
    return bool(dr7 >> (DR_ENABLE_SIZE * index) & 0b11)


def decode(dr7: int) -> tuple[DecodedSlot | None, ...]:
    """The four slots of ``dr7``: None for a disabled slot, else what it watches."""
    out: list[DecodedSlot | None] = []
    for index in range(HBP_NUM):
        if not slot_enabled(dr7, index):
            out.append(None)
            continue
        length, bp_type = generic_fields(*control_bits(dr7, index))
        enable = dr7 >> (DR_ENABLE_SIZE * index)
        out.append(
            DecodedSlot(
                index=index,
                local=bool(enable & 1),
                global_=bool(enable & 2),
                length=length,
                type=bp_type,
            )
        )
    return tuple(out)
