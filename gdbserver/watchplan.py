"""What a ``Z`` packet asks of the debug registers: pure planning, no kernel.

gdb asks for a watched range of any length and alignment; an x86 debug register
watches 1, 2, 4 or 8 bytes aligned to their length. A range therefore needs one
register per aligned chunk, as gdbserver's x86-dregs.c splits it, and each chunk is one
reservation in the arbiter's ledger. gdb's read watchpoint (``Z3``) has no x86 form
(R/W = 10 means I/O): answering it "unsupported" makes gdb emulate it with an access
watchpoint and compare values itself, as it does against gdbserver.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from hwbp.dr7 import HBP_NUM
from hwbp.model import BpType
from hwbp.validate import EXEC_LENGTH  # sizeof(long): the only length for execute


class ZType(IntEnum):
    """The first field of ``Z``/``z``."""

    SOFTWARE = 0
    HW_BREAK = 1
    WRITE = 2
    READ = 3
    ACCESS = 4


BP_TYPE = {ZType.HW_BREAK: BpType.EXEC, ZType.WRITE: BpType.WRITE, ZType.ACCESS: BpType.RW}
_REASON = {ZType.HW_BREAK: b"hwbreak", ZType.WRITE: b"watch", ZType.ACCESS: b"awatch"}


class Unsupported(Exception):
    """This register kind does not exist on x86: the reply is empty, not an error."""


class Impossible(ValueError):
    """A request no number of free registers could satisfy (e.g. longer than all four)."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """One debug register's worth: aligned, 1/2/4/8 bytes (8 for execute)."""

    addr: int
    length: int
    type: BpType


def split(addr: int, length: int) -> list[tuple[int, int]]:
    """The aligned 1/2/4/8-byte chunks that cover [addr, addr+length) exactly, in order."""
    out: list[tuple[int, int]] = []
    while length > 0:
        size = next(s for s in (8, 4, 2, 1) if s <= length and addr % s == 0)
        out.append((addr, size))
        addr += size
        length -= size
    return out


def plan(ztype: ZType, addr: int, kind: int) -> tuple[Chunk, ...]:
    """The registers a ``Z1``/``Z2``/``Z4`` needs; ``kind`` is gdb's length field."""
    if ztype is ZType.READ:
        raise Unsupported("x86 has no read-only watchpoint")
    if ztype is ZType.SOFTWARE:
        raise ValueError("a software breakpoint takes no debug register")
    if ztype is ZType.HW_BREAK:
        return (Chunk(addr, EXEC_LENGTH, BpType.EXEC),)
    if kind <= 0:
        raise ValueError(f"watchpoint length {kind} must be at least 1")
    if addr + kind - 1 >= 1 << 64:
        raise ValueError(f"watchpoint at {addr:#x} of {kind} bytes runs past the address space")
    chunks = split(addr, kind)
    if len(chunks) > HBP_NUM:
        raise Impossible(
            f"watching {kind} bytes at {addr:#x} takes {len(chunks)} debug registers; "
            f"x86 has {HBP_NUM}"
        )
    return tuple(Chunk(a, n, BP_TYPE[ztype]) for a, n in chunks)


def stop_reason(ztype: ZType, addr: int) -> bytes:
    """The stop-reply field that makes gdb name the watchpoint: ``watch:ADDR;``..."""
    if ztype is ZType.HW_BREAK:
        return b"hwbreak:;"
    return _REASON[ztype] + b":%x;" % addr
