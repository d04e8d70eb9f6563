"""The x86-64 ptrace debug-register interface, as a pure per-task state machine.

Reproduces arch/x86/kernel/ptrace.c: PEEKUSR/POKEUSR on ``u_debugreg``, the breakpoint
created (disabled, slot reserved) by a DR0-DR3 write, the transactional DR7 write with
its second pass, and DR6 virtualisation. The host side of each breakpoint (reserving a
slot, validating, modifying in place) is a ``Registrar``; the arbiter implements it with
its ledger as a task-scoped reservation on every CPU.

Error contract: ``poke``/``poke_offset`` raise the kernel's error (EIO, EINVAL, ENOSPC
as typed ``HwbpError``s). Because a failed DR7 write can still leave registrar side
effects the kernel keeps (breakpoints it created stay registered, disabled), every
error they raise carries the resulting state: ``state_after(err)`` (or ``err.state``).
It is None only when a DR7 write's restore failed as well: then nothing may be kept,
and the caller rolls the registrar back to where it was before the poke.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from hwbp import dr7
from hwbp.errors import HwbpError, InvalidRegister, PtraceIOError, ValueOutOfRange
from hwbp.model import BpType, Breakpoint

WORD = 8  # sizeof(long) on x86-64
USER_REGS_SIZE = 216  # sizeof(struct user_regs_struct)
U_DEBUGREG_OFFSET = 848  # offsetof(struct user, u_debugreg)
USER_SIZE = 928  # sizeof(struct user)
DEBUGREG_COUNT = 8  # u_debugreg[0..7]
VALUE_LIMIT = 1 << 64  # ptrace data is an unsigned long
_ERROR_STATE = "state"  # attribute that carries the post-failure state on an error


class Registrar(Protocol):
    """What the host does with a task's ptrace breakpoints; ``index`` is the ptrace index."""

    def register(self, index: int, bp: Breakpoint) -> None:
        """Reserve a slot and create ``bp`` (may raise NoFreeSlot or an InvalidArgument)."""

    def modify(self, index: int, bp: Breakpoint) -> None:
        """Change the breakpoint in place; on failure nothing changed and it keeps its slot."""

    def unregister(self, index: int) -> None:
        """Release the breakpoint and its slot."""


Slots = tuple[Breakpoint | None, ...]


@dataclass(frozen=True, slots=True)
class PtraceState:
    """A thread's ptrace_bps[4], ptrace_dr7 and virtual_dr6 (positive polarity)."""

    bps: Slots = (None, None, None, None)
    dr7: int = 0  # the raw value of the last successful DR7 write
    virtual_dr6: int = 0  # DR6 XOR DR6_RESERVED: 0 reads back as 0xFFFF0FF0

    def __post_init__(self) -> None:
        if len(self.bps) != dr7.HBP_NUM:
            raise InvalidRegister(f"ptrace has {dr7.HBP_NUM} breakpoints, got {len(self.bps)}")


def state_after(err: BaseException) -> PtraceState | None:
    """The state the kernel keeps after ``err`` was raised by poke, if it came from there."""
    value = getattr(err, _ERROR_STATE, None)
    return value if isinstance(value, PtraceState) else None


# --- PEEKUSR / POKEUSR by register number ----------------------------------------------


def peek(state: PtraceState, reg: int) -> int:
    """ptrace_get_debugreg(): DR0-3 address or 0, DR4/5 0, DR6 flipped back, DR7 raw."""
    if 0 <= reg < dr7.HBP_NUM:
        bp = state.bps[reg]
        return 0 if bp is None else bp.addr
    if reg in (4, 5):
        return 0
    if reg == 6:
        return state.virtual_dr6 ^ dr7.DR6_RESERVED
    if reg == 7:
        return state.dr7
    raise PtraceIOError(f"there is no debug register {reg}", register=reg)


def poke(state: PtraceState, reg: int, value: int, registrar: Registrar) -> PtraceState:
    """ptrace_set_debugreg(): the new state, or raise with ``state_after(err)`` set."""
    new, err = _poke(state, reg, value, registrar)
    if err is not None:
        setattr(err, _ERROR_STATE, new)
        raise err
    assert new is not None  # only a failed write has no state to keep
    return new


def _poke(
    state: PtraceState, reg: int, value: int, registrar: Registrar
) -> tuple[PtraceState | None, HwbpError | None]:
    if not 0 <= value < VALUE_LIMIT:
        return state, ValueOutOfRange(f"{value:#x} is not an unsigned long", value=value)
    if 0 <= reg < dr7.HBP_NUM:
        return _set_breakpoint_addr(state, reg, value, registrar)
    if reg in (4, 5):
        return state, PtraceIOError(f"there is no DR{reg} to write", register=reg)
    if reg == 6:
        return replace(state, virtual_dr6=value ^ dr7.DR6_RESERVED), None
    if reg == 7:
        return _write_dr7(state, value, registrar)
    return state, PtraceIOError(f"there is no debug register {reg}", register=reg)


def _set_breakpoint_addr(
    state: PtraceState, index: int, addr: int, registrar: Registrar
) -> tuple[PtraceState, HwbpError | None]:
    """ptrace_set_breakpoint_addr(): create a stub breakpoint, or move the existing one.

    The stub is a disabled 1-byte write watchpoint: "inactive but correct", and it holds
    its slot from now on, so ENOSPC shows up at the address write.
    """
    old = state.bps[index]
    if old is None:
        new = Breakpoint(addr=addr, length=1, type=BpType.WRITE, enabled=False)
        action = registrar.register
    else:
        new = replace(old, addr=addr)
        action = registrar.modify
    try:
        action(index, new)
    except HwbpError as err:
        return state, err
    return _with(state, index, new), None


def _write_dr7(
    state: PtraceState, value: int, registrar: Registrar
) -> tuple[PtraceState | None, HwbpError | None]:
    """ptrace_write_dr7(): apply each slot; at the first error, re-apply the old DR7.

    The second pass runs over the four slots with ``old_dr7`` (rebuilt from the enabled
    breakpoints), so an index whose bits are clear there is modified to what clear bits
    decode to: disabled, execute, length 8. That is how breakpoints created by the first
    pass end up: still registered, disabled. The first error is returned and ``dr7`` is
    stored only on success.

    Like the kernel's, the second pass stops at its own first failure. The kernel then
    WARNs; with its validation that cannot happen on x86-64 (old_dr7 only re-applies
    what was valid), and neither can it here. Should it happen all the same, the
    half-restored state is never kept, since it could leave a breakpoint armed that DR7
    does not show: the first error names the failed restore and carries no state
    (``state_after`` is None), and the caller rolls the registrar back.
    """
    data = value & ~dr7.DR_CONTROL_RESERVED
    old_dr7 = dr7.encode(state.bps)
    bps = list(state.bps)
    first = _apply_dr7(bps, data, registrar)
    if first is None:
        return replace(state, bps=tuple(bps), dr7=value), None
    _, error = first
    failed = _apply_dr7(bps, old_dr7, registrar)
    if failed is not None:
        index, restore_error = failed
        error.message += (
            f"; restoring DR{index} to the previous DR7 failed too ({restore_error}), "
            "so nothing of this DR7 write is kept"
        )
        error.args = (error.message,)
        error.metadata["restore_failed"] = str(index)
        return None, error
    return replace(state, bps=tuple(bps)), error


def _apply_dr7(
    bps: list[Breakpoint | None], data: int, registrar: Registrar
) -> tuple[int, HwbpError] | None:
    """One pass of ptrace_write_dr7's loop, up to its first failure (index, error);
    updates ``bps`` as the registrar accepts."""
    for index in range(dr7.HBP_NUM):
        enabled = dr7.slot_enabled(data, index)
        bp = bps[index]
        if bp is None and not enabled:
            continue
        try:
            length, bp_type = dr7.generic_fields(*dr7.control_bits(data, index))
            if bp is None:
                new = Breakpoint(addr=0, length=length, type=bp_type, enabled=True)
                registrar.register(index, new)
            else:
                new = replace(bp, length=length, type=bp_type, enabled=enabled)
                registrar.modify(index, new)
        except HwbpError as err:
            return index, err
        bps[index] = new
    return None


# --- the user area by byte offset ------------------------------------------------------


def debugreg_offset(n: int) -> int:
    """offsetof(struct user, u_debugreg[n]) on x86-64."""
    if not 0 <= n < DEBUGREG_COUNT:
        raise PtraceIOError(f"u_debugreg has 8 entries, not {n + 1}", register=n)
    return U_DEBUGREG_OFFSET + WORD * n


def _debugreg_at(offset: int) -> int | None:
    """The u_debugreg index at ``offset``; None inside struct user but elsewhere."""
    if offset < 0 or offset % WORD or offset >= USER_SIZE:
        raise PtraceIOError(
            f"user-area offset {offset} is misaligned or past sizeof(struct user) = {USER_SIZE}",
            offset=offset,
        )
    if offset < USER_REGS_SIZE:
        raise PtraceIOError(
            f"user-area offset {offset} is a general register: only u_debugreg is supported",
            offset=offset,
        )
    last = U_DEBUGREG_OFFSET + WORD * (DEBUGREG_COUNT - 1)
    if U_DEBUGREG_OFFSET <= offset <= last:
        return (offset - U_DEBUGREG_OFFSET) // WORD
    return None


def peek_offset(state: PtraceState, offset: int) -> int:
    """PTRACE_PEEKUSR: other in-range fields past the registers read as 0, as the kernel does."""
    reg = _debugreg_at(offset)
    return 0 if reg is None else peek(state, reg)


def poke_offset(state: PtraceState, offset: int, value: int, registrar: Registrar) -> PtraceState:
    """PTRACE_POKEUSR: only u_debugreg is writable past the registers (else EIO)."""
    try:
        reg = _debugreg_at(offset)
        if reg is None:
            raise PtraceIOError(f"user-area offset {offset} is not writable", offset=offset)
    except PtraceIOError as err:
        setattr(err, _ERROR_STATE, state)
        raise
    return poke(state, reg, value, registrar)


# --- debug exceptions and teardown ----------------------------------------------------


def on_hit(state: PtraceState, index: int, *more: int, step: bool = False) -> PtraceState:
    """A user #DB: exc_debug_user() restarts virtual_dr6 (at DR_STEP if single-stepping),
    then ptrace_triggered() ORs in bit i of each ptrace index that fired. Pass every
    index one exception hit at once: a second call is a second exception.
    """
    virtual = dr7.DR_STEP if step else 0
    for i in (index, *more):
        bp = state.bps[i] if 0 <= i < dr7.HBP_NUM else None
        if bp is None or not bp.enabled:
            raise InvalidRegister(f"no enabled ptrace breakpoint {i} could have fired", index=i)
        virtual |= 1 << i
    return replace(state, virtual_dr6=virtual)


def flush(state: PtraceState, registrar: Registrar) -> PtraceState:
    """flush_ptrace_hw_breakpoint(), run at exec and exit: unregister all, reset DR6/DR7.

    PTRACE_DETACH does not call it: a detached task keeps its breakpoints, DR6 and DR7
    (and their slots), and a debugger that attaches again reads them back.
    """
    for index, bp in enumerate(state.bps):
        if bp is not None:
            registrar.unregister(index)
    return PtraceState()


def _with(state: PtraceState, index: int, bp: Breakpoint) -> PtraceState:
    slots = list(state.bps)
    slots[index] = bp
    return replace(state, bps=tuple(slots))
