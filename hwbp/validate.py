"""Breakpoint validation: the x86 ``hw_breakpoint_arch_parse`` rules, raised as typed errors.

The checks run in the kernel's order, so a request with several faults is refused for
the same reason (and errno) the kernel would give: ``arch_build_bp_info`` (overflow,
type, the kprobe check of an execute breakpoint in kernel space, length, range
breakpoints), the alignment of ``hw_breakpoint_arch_parse``, then the kernel-space rule
of ``hw_breakpoint_parse``. Some answers depend on the host (``HostFeatures`` in the
profile): a range length needs X86_FEATURE_BPEXT, an execute breakpoint in kernel space
needs kprobes, and any kernel address needs CAP_SYS_ADMIN.
"""

from __future__ import annotations

from hwbp.arch import ADDR_MASK, TASK_SIZE_MAX, X86_64, ArchProfile
from hwbp.errors import (
    AddressOverflow,
    InvalidLength,
    InvalidScope,
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

EXEC_LENGTH = 8  # sizeof(long) on x86-64: LEN bits 00
DATA_LENGTHS = (1, 2, 4, 8)


def validate_breakpoint(bp: Breakpoint, *, scope: Scope, profile: ArchProfile = X86_64) -> None:
    """Raise the error the kernel would give for ``bp``; return if it is valid.

    ``scope`` names where it applies; the kernel's rules do not depend on it (a task
    breakpoint may watch a kernel address, given the privilege), but errors name it. Our
    one rule of our own does: only a task's breakpoint can be armed by its tracer.
    """
    _check_slot_class(bp, profile)
    _check_overflow(bp)
    _check_type(bp, profile)
    _check_length(bp, profile)
    _check_kernel(bp, scope, profile)
    _check_tracer(bp, scope)


def is_kernel_address(addr: int, length: int) -> bool:
    """arch_check_bp_in_kernelspace(): any of ``length`` bytes at or above TASK_SIZE_MAX."""
    return addr >= TASK_SIZE_MAX or addr + length - 1 >= TASK_SIZE_MAX


def is_range(bp: Breakpoint) -> bool:
    """An AMD range watchpoint: a data length other than 1, 2, 4 or 8."""
    return bp.type is not BpType.EXEC and bp.length not in DATA_LENGTHS


def kernel_check_length(bp: Breakpoint) -> int:
    """How many bytes arch_check_bp_in_kernelspace() looks at: arch_bp_generic_len(hw->len).

    An execute breakpoint's hw->len is X86_BREAKPOINT_LEN_X, which equals LEN_1: one byte,
    whatever its generic length (sizeof(long)); so an execute breakpoint at
    TASK_SIZE_MAX-1 is a user breakpoint. A range's hw->len is LEN_1 too (its extent is
    in the address mask).
    """
    return 1 if bp.type is BpType.EXEC or is_range(bp) else bp.length


def _check_slot_class(bp: Breakpoint, profile: ArchProfile) -> None:
    """hw_breakpoint_event_init(): a type whose class has no slots is EOPNOTSUPP."""
    if not isinstance(bp.type, BpType):
        raise InvalidType(f"breakpoint type {bp.type!r} is not a known type", type=bp.type)
    if not profile.mixed:
        cls = profile.slot_class(bp.type)
        if profile.slots(cls) == 0:
            raise UnsupportedSlotClass(
                f"{profile.name} has no {cls.value} debug registers for type {bp.type.value}",
                type=bp.type.value,
                slot_class=cls.value,
            )


def _check_overflow(bp: Breakpoint) -> None:
    """arch_build_bp_info(): bp_addr + bp_len - 1 must not wrap (first of all)."""
    addr, length = bp.addr, bp.length
    if not 0 <= addr <= ADDR_MASK:
        raise ValueOutOfRange(
            f"address {addr:#x} is outside 0..{ADDR_MASK:#x}", addr=f"{addr:#x}", length=length
        )
    if addr + length - 1 > ADDR_MASK:
        raise AddressOverflow(
            f"address {addr:#x} with length {length} runs past the end of the 64-bit space",
            addr=f"{addr:#x}",
            length=length,
        )


def _check_type(bp: Breakpoint, profile: ArchProfile) -> None:
    """arch_build_bp_info(): W, W|R and X only; an execute breakpoint in kernel space must
    pass within_kprobe_blacklist(), which refuses every address without CONFIG_KPROBES."""
    if bp.type is BpType.READ:
        raise ReadOnlyUnsupported(
            f"type {bp.type.value} (read-only) is not supported on {profile.name}; use rw",
            type=bp.type.value,
        )
    if bp.type is BpType.EXEC and bp.addr >= TASK_SIZE_MAX and not profile.features.kprobes:
        raise KernelAddressNotAllowed(
            f"execute breakpoint at {bp.addr:#x} is in kernel space, and this host's kernel "
            "has no kprobes (CONFIG_KPROBES), so it refuses every one there",
            addr=f"{bp.addr:#x}",
            kprobes=False,
        )


def _check_length(bp: Breakpoint, profile: ArchProfile) -> None:
    """arch_build_bp_info()'s lengths, then hw_breakpoint_arch_parse()'s alignment."""
    addr, length = bp.addr, bp.length
    if bp.type is BpType.EXEC:
        # LEN_X == LEN_1: no alignment, since an instruction may start at any byte.
        if length != EXEC_LENGTH:
            raise InvalidLength(
                f"execute breakpoint length {length} is invalid: it must be {EXEC_LENGTH}",
                length=length,
                type=bp.type.value,
            )
        return
    if is_range(bp):
        _check_range(bp, profile)
    elif addr & (length - 1):
        raise MisalignedAddress(
            f"address {addr:#x} is not aligned to its length {length}",
            addr=f"{addr:#x}",
            length=length,
        )


def _check_range(bp: Breakpoint, profile: ArchProfile) -> None:
    """An AMD range breakpoint: a power of two, aligned (EINVAL), then the CPU feature."""
    addr, length = bp.addr, bp.length
    if length < 1 or length & (length - 1):
        raise InvalidLength(
            f"watchpoint length {length} is invalid: it must be one of 1, 2, 4, 8 "
            "(or an aligned power of two on a CPU with AMD's breakpoint extension)",
            length=length,
            type=bp.type.value,
        )
    if addr & (length - 1):
        raise MisalignedAddress(
            f"address {addr:#x} is not aligned to its length {length}",
            addr=f"{addr:#x}",
            length=length,
        )
    if not profile.features.bpext:
        raise RangeUnsupported(
            f"a {length}-byte range watchpoint needs AMD's breakpoint extension "
            "(X86_FEATURE_BPEXT, cpuinfo flag bpext), which this host's CPU does not offer",
            length=length,
            type=bp.type.value,
        )


def _check_kernel(bp: Breakpoint, scope: Scope, profile: ArchProfile) -> None:
    """hw_breakpoint_parse(): a kernel address is EINVAL with exclude_kernel set, EPERM
    without CAP_SYS_ADMIN, and fine otherwise, in any scope."""
    length = kernel_check_length(bp)
    if not is_kernel_address(bp.addr, length):
        return
    if not bp.kernel:
        raise KernelAddressNotAllowed(
            f"address {bp.addr:#x} (length {bp.length}) is a kernel address "
            f"(>= {TASK_SIZE_MAX:#x}) but the breakpoint does not ask for kernel",
            addr=f"{bp.addr:#x}",
            length=bp.length,
            scope=scope.value,
        )
    if not profile.features.privileged:
        raise KernelAddressUnprivileged(
            f"address {bp.addr:#x} is a kernel address, and this host's agent runs without "
            "CAP_SYS_ADMIN, so its kernel refuses it (EPERM)",
            addr=f"{bp.addr:#x}",
            scope=scope.value,
        )


def _check_tracer(bp: Breakpoint, scope: Scope) -> None:
    """Only a task has a tracer: a CPU-bound breakpoint must be armed by its agents."""
    if bp.tracer_applied and scope not in (Scope.TASK, Scope.TASK_CPU):
        raise InvalidScope(
            f"a tracer-applied breakpoint needs a task scope (task or task+cpu), "
            f"not {scope.value}: only a task's tracer can arm it",
            scope=scope.value,
        )
