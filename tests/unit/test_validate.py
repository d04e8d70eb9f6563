"""Every x86-64 validation rule (arch/x86 hw_breakpoint.c) with examples and counter-examples."""

from __future__ import annotations

import errno

import pytest

from hwbp.arch import ADDR_MASK, TASK_SIZE_MAX, X86_64, ArchProfile, HostFeatures, arm64_like
from hwbp.errors import (
    AddressOverflow,
    HwbpError,
    InvalidLength,
    InvalidType,
    KernelAddressNotAllowed,
    KernelAddressUnprivileged,
    MisalignedAddress,
    RangeUnsupported,
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


@pytest.mark.parametrize("length", [0, 3, 5, 6, 7, 12, 24, -1])
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


# --- 3. range breakpoints and X86_FEATURE_BPEXT ---------------------------------------

BPEXT = X86_64.with_features(HostFeatures(bpext=True))


@pytest.mark.parametrize("length", [16, 32, 64, 4096, 1 << 20])
def test_aligned_power_of_two_range_without_bpext_is_eopnotsupp(length: int) -> None:
    """arch_build_bp_info(): a length other than 1, 2, 4, 8 is an AMD range breakpoint;
    a power of two, aligned, on a CPU without X86_FEATURE_BPEXT is EOPNOTSUPP (observed on
    this machine for 16 and 32), not EINVAL."""
    err = refused(Breakpoint(0x10000 * length, length, BpType.WRITE))
    assert isinstance(err, RangeUnsupported)
    assert err.errno == errno.EOPNOTSUPP
    assert f"{length}" in err.message and "bpext" in err.message.lower()


@pytest.mark.parametrize("bp_type", [BpType.WRITE, BpType.RW])
@pytest.mark.parametrize("length", [16, 32, 4096])
def test_aligned_range_with_bpext_is_accepted(bp_type: BpType, length: int) -> None:
    """With X86_FEATURE_BPEXT the kernel sets hw->mask = bp_len - 1 and hw->len = LEN_1."""
    validate_breakpoint(Breakpoint(0x10000 * length, length, bp_type), scope=TASK, profile=BPEXT)


@pytest.mark.parametrize("profile", [X86_64, BPEXT])
@pytest.mark.parametrize(
    ("addr", "length", "error"),
    [
        (0x10000, 12, InvalidLength),  # not a power of two: EINVAL, bpext or not
        (0x10000, 0, InvalidLength),
        (0x10008, 16, MisalignedAddress),  # misaligned range: EINVAL before the feature
        (0x10010, 32, MisalignedAddress),
    ],
)
def test_range_shape_errors_stay_einval(
    profile: ArchProfile, addr: int, length: int, error: type[HwbpError]
) -> None:
    """is_power_of_2() and the alignment are checked before boot_cpu_has(BPEXT)."""
    err = refused(Breakpoint(addr, length, BpType.WRITE), profile=profile)
    assert isinstance(err, error) and err.errno == errno.EINVAL


def test_exec_range_is_einval_even_with_bpext() -> None:
    """An execute breakpoint's bp_len must be sizeof(long); there is no exec range."""
    err = refused(Breakpoint(0x10000, 16, BpType.EXEC), profile=BPEXT)
    assert isinstance(err, InvalidLength) and err.errno == errno.EINVAL


def test_a_range_checks_one_byte_for_kernel_space() -> None:
    """hw->len is LEN_1 for a range: arch_check_bp_in_kernelspace() looks at its first
    byte (the kernel notes an aligned range cannot straddle into the high half)."""
    validate_breakpoint(Breakpoint(TASK_SIZE_MAX - 16, 16, BpType.WRITE), scope=TASK, profile=BPEXT)
    err = refused(Breakpoint(TASK_SIZE_MAX, 16, BpType.WRITE), profile=BPEXT)
    assert isinstance(err, KernelAddressNotAllowed)


# --- 7. kernel addresses: privilege and kprobes ----------------------------------------

KERNEL = 0xFFFF_FFFF_8100_0000
NO_KPROBES = X86_64.with_features(HostFeatures(kprobes=False))
UNPRIVILEGED = X86_64.with_features(HostFeatures(privileged=False))


@pytest.mark.parametrize("scope", list(Scope))
@pytest.mark.parametrize("bp_type", [BpType.WRITE, BpType.RW, BpType.EXEC])
def test_kernel_address_with_privilege_in_any_scope(scope: Scope, bp_type: BpType) -> None:
    """hw_breakpoint_parse(): a kernel address is refused only when exclude_kernel is set
    (EINVAL) or the caller lacks CAP_SYS_ADMIN (EPERM); the scope does not matter. As
    root, a task-scoped write watchpoint on a kernel address opens (observed here)."""
    validate_breakpoint(Breakpoint(KERNEL, 8, bp_type, kernel=True), scope=scope)


@pytest.mark.parametrize("scope", list(Scope))
def test_kernel_flag_on_a_user_address_is_fine(scope: Scope) -> None:
    """Clearing exclude_kernel also counts kernel-mode accesses to a user address."""
    validate_breakpoint(Breakpoint(USER, 8, BpType.WRITE, kernel=True), scope=scope)


@pytest.mark.parametrize("scope", list(Scope))
def test_kernel_address_without_privilege_is_eperm(scope: Scope) -> None:
    """hw_breakpoint_parse(): !capable(CAP_SYS_ADMIN) on a kernel address is EPERM."""
    err = refused(Breakpoint(KERNEL, 8, BpType.WRITE, kernel=True), scope, profile=UNPRIVILEGED)
    assert isinstance(err, KernelAddressUnprivileged)
    assert err.errno == errno.EPERM and "CAP_SYS_ADMIN" in err.message
    validate_breakpoint(
        Breakpoint(USER, 8, BpType.WRITE, kernel=True), scope=scope, profile=UNPRIVILEGED
    )


@pytest.mark.parametrize("scope", list(Scope))
def test_exec_on_kernel_address_without_kprobes_is_einval(scope: Scope) -> None:
    """arch_build_bp_info(): an execute breakpoint at or above TASK_SIZE_MAX is refused
    when within_kprobe_blacklist() says so, and without CONFIG_KPROBES it always does
    (this machine's kernel: EINVAL even as root with exclude_kernel clear)."""
    err = refused(Breakpoint(KERNEL, 8, BpType.EXEC, kernel=True), scope, profile=NO_KPROBES)
    assert isinstance(err, KernelAddressNotAllowed)
    assert err.errno == errno.EINVAL and "kprobes" in err.message
    # Data breakpoints are not kprobe-checked; exec below TASK_SIZE_MAX neither.
    validate_breakpoint(
        Breakpoint(KERNEL, 8, BpType.RW, kernel=True), scope=scope, profile=NO_KPROBES
    )
    validate_breakpoint(
        Breakpoint(TASK_SIZE_MAX - 1, 8, BpType.EXEC), scope=scope, profile=NO_KPROBES
    )


def test_kprobe_check_comes_before_the_exec_length() -> None:
    """In arch_build_bp_info() the kprobe blacklist is consulted before bp_len."""
    err = refused(Breakpoint(KERNEL, 4, BpType.EXEC, kernel=True), profile=NO_KPROBES)
    assert isinstance(err, KernelAddressNotAllowed)
