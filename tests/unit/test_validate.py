"""Every x86-64 validation rule (arch/x86 hw_breakpoint.c) with examples and counter-examples."""

from __future__ import annotations

import errno

import pytest

from hwbp.arch import ADDR_MASK, TASK_SIZE_MAX, arm64_like
from hwbp.errors import (
    AddressOverflow,
    HwbpError,
    InvalidLength,
    InvalidType,
    KernelAddressNotAllowed,
    MisalignedAddress,
    ReadOnlyUnsupported,
    UnsupportedSlotClass,
    ValueOutOfRange,
)
from hwbp.model import BpType, Breakpoint, Scope
from hwbp.validate import is_kernel_address, validate_breakpoint

USER = 0x7F00_0000_1000
TASK = Scope.TASK


def refused(bp: Breakpoint, scope: Scope = TASK, **kw: object) -> HwbpError:
    with pytest.raises(HwbpError) as info:
        validate_breakpoint(bp, scope=scope, **kw)  # type: ignore[arg-type]
    return info.value


@pytest.mark.parametrize("bp_type", [BpType.EXEC, BpType.WRITE, BpType.RW])
@pytest.mark.parametrize("scope", list(Scope))
def test_supported_types_in_every_scope(bp_type: BpType, scope: Scope) -> None:
    validate_breakpoint(Breakpoint(USER, 8, bp_type), scope=scope)


def test_read_only_is_refused_naming_the_type() -> None:
    err = refused(Breakpoint(USER, 4, BpType.READ))
    assert isinstance(err, ReadOnlyUnsupported)
    assert err.errno == errno.EINVAL
    assert "read-only" in err.message and err.metadata["type"] == "r"


def test_unknown_type_is_invalid_type() -> None:
    err = refused(Breakpoint(USER, 4, "io"))  # type: ignore[arg-type]
    assert isinstance(err, InvalidType)
    assert "'io'" in err.message


@pytest.mark.parametrize("length", [1, 2, 4, 0, 3, 16])
def test_exec_length_must_be_sizeof_long(length: int) -> None:
    err = refused(Breakpoint(USER, length, BpType.EXEC))
    assert isinstance(err, InvalidLength)
    assert f"length {length}" in err.message


@pytest.mark.parametrize("bp_type", [BpType.WRITE, BpType.RW])
@pytest.mark.parametrize("length", [1, 2, 4, 8])
def test_data_lengths_accepted(bp_type: BpType, length: int) -> None:
    validate_breakpoint(Breakpoint(USER, length, bp_type), scope=TASK)


@pytest.mark.parametrize("length", [0, 3, 5, 6, 7, 16, 32, -1])
def test_other_data_lengths_refused(length: int) -> None:
    err = refused(Breakpoint(USER, length, BpType.WRITE))
    assert isinstance(err, InvalidLength)
    assert f"length {length}" in err.message


@pytest.mark.parametrize("addr", [-1, -0x1000, 1 << 64, (1 << 64) + 8])
def test_address_outside_64_bits(addr: int) -> None:
    err = refused(Breakpoint(addr, 1, BpType.WRITE), scope=Scope.SYSTEM)
    assert isinstance(err, ValueOutOfRange)
    assert f"{addr:#x}" in err.message


@pytest.mark.parametrize(("addr", "length"), [(0x1001, 4), (0x1002, 4), (0x1004, 8), (0x1001, 2)])
def test_misaligned(addr: int, length: int) -> None:
    err = refused(Breakpoint(addr, length, BpType.RW))
    assert isinstance(err, MisalignedAddress)
    assert err.message == f"address {addr:#x} is not aligned to its length {length}"
    assert err.metadata["addr"] == f"{addr:#x}"


def test_exec_needs_no_alignment() -> None:
    """LEN_X equals LEN_1 in the kernel: an instruction may start at any byte."""
    validate_breakpoint(Breakpoint(0x1003, 8, BpType.EXEC), scope=TASK)


@pytest.mark.parametrize(("addr", "length"), [(0x1000, 8), (0x1001, 1), (0x1002, 2), (0, 1)])
def test_aligned(addr: int, length: int) -> None:
    validate_breakpoint(Breakpoint(addr, length, BpType.WRITE), scope=TASK)


def test_overflow_is_checked_before_alignment() -> None:
    err = refused(Breakpoint(ADDR_MASK, 2, BpType.WRITE, kernel=True), scope=Scope.SYSTEM)
    assert isinstance(err, AddressOverflow)
    assert f"{ADDR_MASK:#x}" in err.message


def test_last_byte_of_the_space_is_fine_for_kernel() -> None:
    validate_breakpoint(Breakpoint(ADDR_MASK, 1, BpType.WRITE, kernel=True), scope=Scope.CPU)


def test_kernel_address_predicate() -> None:
    assert not is_kernel_address(TASK_SIZE_MAX - 8, 8)
    assert is_kernel_address(TASK_SIZE_MAX - 4, 8)  # last byte crosses
    assert is_kernel_address(TASK_SIZE_MAX, 1)


@pytest.mark.parametrize("scope", [Scope.SYSTEM, Scope.CPU])
def test_kernel_address_allowed_when_asked_in_cpu_scopes(scope: Scope) -> None:
    validate_breakpoint(Breakpoint(TASK_SIZE_MAX, 8, BpType.RW, kernel=True), scope=scope)
    validate_breakpoint(Breakpoint(USER, 8, BpType.RW, kernel=True), scope=scope)


@pytest.mark.parametrize("scope", list(Scope))
def test_kernel_address_without_kernel_flag(scope: Scope) -> None:
    err = refused(Breakpoint(0xFFFF_FFFF_8100_0000, 8, BpType.EXEC), scope=scope)
    assert isinstance(err, KernelAddressNotAllowed)
    assert "0xffffffff81000000" in err.message


def test_boundary_of_task_size_max() -> None:
    # TASK_SIZE_MAX is page aligned, so an aligned breakpoint cannot straddle it:
    # alignment is what refuses the straddling one.
    err = refused(Breakpoint(TASK_SIZE_MAX - 4, 8, BpType.WRITE))
    assert isinstance(err, MisalignedAddress)
    validate_breakpoint(Breakpoint(TASK_SIZE_MAX - 1, 1, BpType.WRITE), scope=TASK)
    err = refused(Breakpoint(TASK_SIZE_MAX, 1, BpType.WRITE))
    assert isinstance(err, KernelAddressNotAllowed)


@pytest.mark.parametrize("scope", [Scope.TASK, Scope.TASK_CPU])
@pytest.mark.parametrize("addr", [USER, TASK_SIZE_MAX])
def test_kernel_flag_refused_in_task_scopes(scope: Scope, addr: int) -> None:
    err = refused(Breakpoint(addr, 8, BpType.WRITE, kernel=True), scope=scope)
    assert isinstance(err, KernelAddressNotAllowed)
    assert scope.value in err.message


def test_arm64_like_zero_slot_class_is_unsupported() -> None:
    powerpc_like = arm64_like(inst=0, data=1)
    err = refused(Breakpoint(USER, 8, BpType.EXEC), profile=powerpc_like)
    assert isinstance(err, UnsupportedSlotClass)
    assert err.errno == errno.EOPNOTSUPP and "inst" in err.message
    validate_breakpoint(Breakpoint(USER, 8, BpType.WRITE), scope=TASK, profile=powerpc_like)


def test_arm64_like_keeps_the_other_rules() -> None:
    arm = arm64_like()
    validate_breakpoint(Breakpoint(USER, 8, BpType.EXEC), scope=TASK, profile=arm)
    assert isinstance(refused(Breakpoint(0x1001, 4, BpType.WRITE), profile=arm), MisalignedAddress)
    assert isinstance(refused(Breakpoint(USER, 3, BpType.RW), profile=arm), InvalidLength)


def test_x86_never_says_unsupported_class() -> None:
    # Mixed registers: EXEC lands in the shared pool even though inst would have slots anyway.
    validate_breakpoint(Breakpoint(USER, 8, BpType.EXEC), scope=TASK)


# --- fidelity to the kernel (issue 19) --------------------------------------------------


@pytest.mark.parametrize("scope", list(Scope))
@pytest.mark.parametrize("addr", [TASK_SIZE_MAX - 8, TASK_SIZE_MAX - 4, TASK_SIZE_MAX - 1])
def test_exec_just_below_task_size_max_is_a_user_address(addr: int, scope: Scope) -> None:
    """arch_check_bp_in_kernelspace() checks arch_bp_generic_len(hw->len) bytes, and an
    execute breakpoint's hw->len is X86_BREAKPOINT_LEN_X == X86_BREAKPOINT_LEN_1: one byte,
    whatever its generic length (sizeof(long)). The kernel accepts an execute breakpoint
    at TASK_SIZE_MAX-4 and TASK_SIZE_MAX-1 (observed on this machine: perf_event_open and
    PTRACE_POKEUSER both take them)."""
    validate_breakpoint(Breakpoint(addr, 8, BpType.EXEC, enabled=False), scope=scope)
    validate_breakpoint(Breakpoint(addr, 8, BpType.EXEC), scope=scope)


@pytest.mark.parametrize("scope", list(Scope))
def test_exec_at_task_size_max_is_a_kernel_address(scope: Scope) -> None:
    """The first byte at TASK_SIZE_MAX is kernel space: without exclude_kernel cleared,
    hw_breakpoint_parse() answers EINVAL."""
    err = refused(Breakpoint(TASK_SIZE_MAX, 8, BpType.EXEC), scope=scope)
    assert isinstance(err, KernelAddressNotAllowed)
    assert err.errno == errno.EINVAL


def test_data_breakpoints_still_check_every_byte() -> None:
    """For data breakpoints hw->len is the real length (LEN_1/2/4/8), so an aligned
    watchpoint below TASK_SIZE_MAX never straddles it and one at it is refused."""
    validate_breakpoint(Breakpoint(TASK_SIZE_MAX - 8, 8, BpType.WRITE), scope=TASK)
    assert isinstance(refused(Breakpoint(TASK_SIZE_MAX, 8, BpType.RW)), KernelAddressNotAllowed)
