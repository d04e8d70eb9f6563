"""Which debug registers a gdb Z packet needs, and how a hit is named back to gdb."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwbp.gdbserver.watchplan import (
    Chunk,
    Impossible,
    Unsupported,
    ZType,
    plan,
    split,
    stop_reason,
)
from hwbp.model import BpType, Breakpoint, Scope
from hwbp.validate import validate_breakpoint


@given(st.integers(min_value=0, max_value=0x7FFF_FFFF_EF00), st.integers(1, 64))
def test_chunks_cover_the_range_exactly_with_valid_x86_registers(addr: int, length: int) -> None:
    chunks = split(addr, length)
    covered = [a + i for a, n in chunks for i in range(n)]
    assert covered == list(range(addr, addr + length))
    for a, n in chunks:
        assert n in (1, 2, 4, 8) and a % n == 0
        # Every chunk is a reservation the arbiter's own validation accepts.
        validate_breakpoint(Breakpoint(a, n, BpType.WRITE, tracer_applied=True), scope=Scope.TASK)


def test_an_aligned_variable_takes_one_register() -> None:
    assert plan(ZType.WRITE, 0x601040, 8) == (Chunk(0x601040, 8, BpType.WRITE),)
    assert plan(ZType.ACCESS, 0x601044, 4) == (Chunk(0x601044, 4, BpType.RW),)


def test_an_unaligned_int_takes_three() -> None:
    assert split(0x1003, 4) == [(0x1003, 1), (0x1004, 2), (0x1006, 1)]


def test_a_hardware_breakpoint_is_one_execute_register_of_the_kernel_length() -> None:
    (chunk,) = plan(ZType.HW_BREAK, 0x401136, 1)
    assert chunk == Chunk(0x401136, 8, BpType.EXEC)
    validate_breakpoint(Breakpoint(chunk.addr, chunk.length, chunk.type), scope=Scope.TASK)


def test_what_x86_cannot_do() -> None:
    with pytest.raises(Unsupported):
        plan(ZType.READ, 0x1000, 4)  # gdb then emulates rwatch with an access watchpoint
    with pytest.raises(Impossible, match="takes 7 debug registers; x86 has 4"):
        plan(ZType.WRITE, 0x1001, 32)
    with pytest.raises(ValueError, match="at least 1"):
        plan(ZType.WRITE, 0x1000, 0)


def test_stop_reasons_gdb_understands() -> None:
    assert stop_reason(ZType.WRITE, 0x601040) == b"watch:601040;"
    assert stop_reason(ZType.ACCESS, 0x601040) == b"awatch:601040;"
    assert stop_reason(ZType.HW_BREAK, 0x401136) == b"hwbreak:;"
