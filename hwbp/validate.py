"""Breakpoint validation: the x86 ``hw_breakpoint_arch_parse`` rules, raised as typed errors.

The checks run in the kernel's order (slot class, type, length, overflow, alignment,
then the kernel-address rule of ``hw_breakpoint_parse``) so a request with several
faults is refused for the same reason the kernel would give.
"""

from __future__ import annotations

from hwbp.arch import ADDR_MASK, TASK_SIZE_MAX, X86_64, ArchProfile
from hwbp.errors import (
    AddressOverflow,
    InvalidLength,
    InvalidScope,
    InvalidType,
    KernelAddressNotAllowed,
    MisalignedAddress,
    ReadOnlyUnsupported,
    UnsupportedSlotClass,
    ValueOutOfRange,
)
from hwbp.model import BpType, Breakpoint, Scope

EXEC_LENGTH = 8  # sizeof(long) on x86-64: LEN bits 00
DATA_LENGTHS = (1, 2, 4, 8)
_KERNEL_SCOPES = (Scope.SYSTEM, Scope.CPU)


def validate_breakpoint(bp: Breakpoint, *, scope: Scope, profile: ArchProfile = X86_64) -> None:
    """Raise the error the kernel would give for ``bp`` in ``scope``; return if it is valid."""
    _check_type(bp, profile)
    _check_length(bp)
    _check_address(bp)
    _check_kernel(bp, scope)
    _check_tracer(bp, scope)


def is_kernel_address(addr: int, length: int) -> bool:
    """arch_check_bp_in_kernelspace(): any byte at or above TASK_SIZE_MAX."""
    return addr >= TASK_SIZE_MAX or addr + length - 1 >= TASK_SIZE_MAX


def _check_type(bp: Breakpoint, profile: ArchProfile) -> None:
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
    if bp.type is BpType.READ:
        raise ReadOnlyUnsupported(
            f"type {bp.type.value} (read-only) is not supported on {profile.name}; use rw",
            type=bp.type.value,
        )


def _check_length(bp: Breakpoint) -> None:
    if bp.type is BpType.EXEC:
        if bp.length != EXEC_LENGTH:
            raise InvalidLength(
                f"execute breakpoint length {bp.length} is invalid: it must be {EXEC_LENGTH}",
                length=bp.length,
                type=bp.type.value,
            )
    elif bp.length not in DATA_LENGTHS:
        raise InvalidLength(
            f"watchpoint length {bp.length} is invalid: it must be one of 1, 2, 4, 8",
            length=bp.length,
            type=bp.type.value,
        )


def _check_address(bp: Breakpoint) -> None:
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
    # Exec breakpoints use LEN 00 (X86_BREAKPOINT_LEN_X == LEN_1): the kernel checks no
    # alignment for them, since an instruction may start at any byte.
    if bp.type is not BpType.EXEC and addr & (length - 1):
        raise MisalignedAddress(
            f"address {addr:#x} is not aligned to its length {length}",
            addr=f"{addr:#x}",
            length=length,
        )


def _check_kernel(bp: Breakpoint, scope: Scope) -> None:
    if bp.kernel and scope not in _KERNEL_SCOPES:
        raise KernelAddressNotAllowed(
            f"kernel breakpoint at {bp.addr:#x} needs a system or cpu scope, not {scope.value}",
            addr=f"{bp.addr:#x}",
            scope=scope.value,
        )
    if not bp.kernel and is_kernel_address(bp.addr, bp.length):
        raise KernelAddressNotAllowed(
            f"address {bp.addr:#x} (length {bp.length}) is a kernel address "
            f"(>= {TASK_SIZE_MAX:#x}) but the breakpoint does not ask for kernel",
            addr=f"{bp.addr:#x}",
            length=bp.length,
            scope=scope.value,
        )


def _check_tracer(bp: Breakpoint, scope: Scope) -> None:
    """Only a task has a tracer: a CPU-bound breakpoint must be armed by its agents."""
    if bp.tracer_applied and not scope.is_task:
        raise InvalidScope(
            f"a tracer-applied breakpoint needs a task scope (task or task+cpu), "
            f"not {scope.value}: only a task's tracer can arm it",
            scope=scope.value,
        )
