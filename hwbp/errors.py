"""One error hierarchy for the whole service.

Every refusal is a typed exception with a stable upper-case ``reason``, the errno the
kernel would return, and metadata naming what a person needs (host, cpu, holders).
The core never returns False for "refused": it raises. ``ErrorClass`` is the only thing
the gRPC layer needs to pick a status code (the table lives in ``server/errors.py``).
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from hwbp.model import Reservation


class ErrorClass(Enum):
    """Transport-neutral error classes; each maps to one gRPC status code."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    NO_SPACE = "no_space"
    FAILED_PRECONDITION = "failed_precondition"
    PERMISSION_DENIED = "permission_denied"
    UNAUTHENTICATED = "unauthenticated"
    ABORTED = "aborted"
    UNAVAILABLE = "unavailable"
    DEADLINE = "deadline"
    INTERNAL = "internal"
    RESOURCE_EXHAUSTED = "resource_exhausted"  # the arbiter's own limits, not the registers
    OUT_OF_RANGE = "out_of_range"  # a position (an event seq) outside what is kept


class HwbpError(Exception):
    """Base of every error the service raises on purpose."""

    reason: ClassVar[str] = "INTERNAL"
    errno: ClassVar[int] = 0
    error_class: ClassVar[ErrorClass] = ErrorClass.INTERNAL

    def __init__(self, message: str, **metadata: object) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = {k: _fmt(v) for k, v in metadata.items() if v is not None}

    def details(self) -> Mapping[str, str]:
        """Metadata for the ErrorInfo detail, always including the errno when known."""
        out = dict(self.metadata)
        if self.errno:
            out.setdefault("errno", _errno.errorcode.get(self.errno, str(self.errno)))
        return out

    def __str__(self) -> str:
        return self.message


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- invalid arguments (EINVAL) -------------------------------------------------------


class InvalidArgument(HwbpError):
    reason = "INVALID_ARGUMENT"
    errno = _errno.EINVAL
    error_class = ErrorClass.INVALID_ARGUMENT


class InvalidType(InvalidArgument):
    reason = "INVALID_TYPE"


class ReadOnlyUnsupported(InvalidArgument):
    """x86 has no read-only watchpoint (R/W = 10 means I/O)."""

    reason = "READ_ONLY_UNSUPPORTED"


class InvalidLength(InvalidArgument):
    reason = "INVALID_LENGTH"


class MisalignedAddress(InvalidArgument):
    reason = "MISALIGNED_ADDRESS"


class AddressOverflow(InvalidArgument):
    reason = "ADDRESS_OVERFLOW"


class KernelAddressNotAllowed(InvalidArgument):
    reason = "KERNEL_ADDRESS_NOT_ALLOWED"


class InvalidScope(InvalidArgument):
    reason = "INVALID_SCOPE"


class InvalidCpu(InvalidArgument):
    reason = "INVALID_CPU"


class InvalidTask(InvalidArgument):
    reason = "INVALID_TASK"


class InvalidRegister(InvalidArgument):
    reason = "INVALID_REGISTER"


class ValueOutOfRange(InvalidArgument):
    reason = "VALUE_OUT_OF_RANGE"


class UnsupportedSlotClass(InvalidArgument):
    """The profile has no slot of this class (the kernel's EOPNOTSUPP)."""

    reason = "UNSUPPORTED_TYPE"
    errno = _errno.EOPNOTSUPP


class RangeUnsupported(InvalidArgument):
    """An aligned power-of-two length above 8 without AMD's breakpoint extension
    (X86_FEATURE_BPEXT): the kernel's EOPNOTSUPP."""

    reason = "RANGE_UNSUPPORTED"
    errno = _errno.EOPNOTSUPP


# --- ptrace I/O errors (EIO) ----------------------------------------------------------


class PtraceIOError(InvalidArgument):
    """What PTRACE_POKEUSER answers for DR4/DR5 writes and bad offsets."""

    reason = "PTRACE_EIO"
    errno = _errno.EIO


# --- the slot budget (ENOSPC) ---------------------------------------------------------


class NoFreeSlot(HwbpError):
    """The 5th request: refused early, naming the CPU and who holds its slots."""

    reason = "NO_FREE_SLOT"
    errno = _errno.ENOSPC
    error_class = ErrorClass.NO_SPACE

    def __init__(
        self,
        *,
        host: str,
        cpu: int,
        slot_class: str,
        used: int,
        slots: int,
        holders: Sequence[Reservation],
    ) -> None:
        who = ", ".join(h.describe() for h in holders) or "nobody (all slots free)"
        super().__init__(
            f"no free {_pool(slot_class)}debug register on host {host} cpu {cpu}: "
            f"{used} of {slots} in use, held by {who}",
            host=host,
            cpu=cpu,
            slot_class=slot_class,
            used=used,
            slots=slots,
            holders=";".join(h.describe() for h in holders),
        )
        self.host = host
        self.cpu = cpu
        self.slot_class = slot_class
        self.used = used
        self.slots = slots
        self.holders = tuple(holders)


def _pool(slot_class: str) -> str:
    """x86 has one shared pool: say "debug register", not "shared debug register"."""
    return "" if slot_class == "shared" else f"{slot_class} "


# --- the arbiter's own limits (not the debug registers) ------------------------------


class ResourceExhausted(HwbpError):
    """A limit of the arbiter itself (streams, message sizes), not a debug register."""

    reason = "RESOURCE_EXHAUSTED"
    error_class = ErrorClass.RESOURCE_EXHAUSTED


class TooManyWatchers(ResourceExhausted):
    """A Watch or Traps stream over the arbiter's cap, per identity or in total."""

    reason = "TOO_MANY_WATCHERS"


class WatcherTooSlow(ResourceExhausted):
    """A watcher fell so far behind that it was cut off rather than slow the arbiter."""

    reason = "WATCHER_TOO_SLOW"


# --- positions in the event log -------------------------------------------------------


class SeqOutOfRange(HwbpError):
    """A Watch since-seq the arbiter never issued, so it cannot resume after it."""

    reason = "SEQ_OUT_OF_RANGE"
    errno = _errno.ERANGE
    error_class = ErrorClass.OUT_OF_RANGE


class SeqCompacted(SeqOutOfRange):
    """Events after the since-seq were dropped from the kept window (etcd's "compacted"):
    resuming would skip them. The message names the oldest kept seq."""

    reason = "SEQ_COMPACTED"


# --- lookups --------------------------------------------------------------------------


class NotFound(HwbpError):
    reason = "NOT_FOUND"
    errno = _errno.ENOENT
    error_class = ErrorClass.NOT_FOUND


class ReservationNotFound(NotFound):
    reason = "RESERVATION_NOT_FOUND"


class HostNotFound(NotFound):
    reason = "HOST_NOT_FOUND"


class CpuNotFound(NotFound):
    reason = "CPU_NOT_FOUND"


class SessionNotFound(NotFound):
    reason = "SESSION_NOT_FOUND"


class NotAttached(NotFound):
    """ptrace on a task that is not attached (the kernel's ESRCH)."""

    reason = "NOT_ATTACHED"
    errno = _errno.ESRCH


class ProcessNotFound(NotFound):
    """A process named by pid is not on this host, or its /proc cannot be read."""

    reason = "PROCESS_NOT_FOUND"
    errno = _errno.ESRCH


class SymbolNotFound(NotFound):
    """No object mapped in the process defines the symbol."""

    reason = "SYMBOL_NOT_FOUND"


class SymbolAmbiguous(InvalidArgument):
    """Several objects mapped in the process define the symbol at different addresses."""

    reason = "SYMBOL_AMBIGUOUS"


# --- state and ownership --------------------------------------------------------------


class FailedPrecondition(HwbpError):
    reason = "FAILED_PRECONDITION"
    error_class = ErrorClass.FAILED_PRECONDITION


class KernelAddressUnprivileged(FailedPrecondition):
    """A kernel address (exclude_kernel clear) on a host whose agent lacks CAP_SYS_ADMIN:
    the kernel's EPERM."""

    reason = "KERNEL_ADDRESS_UNPRIVILEGED"
    errno = _errno.EPERM


class AlreadyAttached(FailedPrecondition):
    reason = "ALREADY_ATTACHED"
    errno = _errno.EPERM


class CpuOffline(FailedPrecondition):
    reason = "CPU_OFFLINE"


class HostShapeConflict(FailedPrecondition):
    """An agent's hello disagrees with what the arbiter knows of its host."""

    reason = "HOST_SHAPE_CONFLICT"


class HostShrinkBlocked(HostShapeConflict):
    """A host came back with fewer CPUs while reservations (or live agents) sit on the
    CPUs it would lose; the message names them."""

    reason = "HOST_SHRINK_BLOCKED"


class HostBusy(FailedPrecondition):
    """A host cannot be retired while something there is live (the message says what)."""

    reason = "HOST_BUSY"


class LedgerCorrupt(FailedPrecondition):
    reason = "LEDGER_CORRUPT"


class LedgerInUse(FailedPrecondition):
    """Another arbiter holds the ledger (its lock file names the pid); one ledger, one arbiter."""

    reason = "LEDGER_IN_USE"


class LedgerWriteFailed(HwbpError):
    """The durable ledger refused a write; the change was rolled back."""

    reason = "LEDGER_WRITE_FAILED"
    error_class = ErrorClass.UNAVAILABLE


class LeadershipLost(LedgerWriteFailed):
    """A replicated arbiter's write was fenced: it no longer leads, nothing was stored."""

    reason = "LEADERSHIP_LOST"


class NotLeader(HwbpError):
    """This replica is a follower; ErrorInfo metadata ``leader`` names the leader."""

    reason = "NOT_LEADER"
    error_class = ErrorClass.UNAVAILABLE


class Draining(HwbpError):
    reason = "DRAINING"
    error_class = ErrorClass.UNAVAILABLE


class NotOwner(HwbpError):
    reason = "NOT_OWNER"
    errno = _errno.EPERM
    error_class = ErrorClass.PERMISSION_DENIED


class PermissionDenied(HwbpError):
    reason = "PERMISSION_DENIED"
    errno = _errno.EPERM
    error_class = ErrorClass.PERMISSION_DENIED


class Unauthenticated(HwbpError):
    reason = "UNAUTHENTICATED"
    error_class = ErrorClass.UNAUTHENTICATED


# --- the reload broadcast -------------------------------------------------------------


class AgentRefused(HwbpError):
    """An agent NACKed a reload; the change was rolled back everywhere."""

    reason = "AGENT_REFUSED"
    error_class = ErrorClass.ABORTED


class KernelRefused(AgentRefused):
    """The agent's kernel refused (perf_event_open failed); errno is the kernel's."""

    reason = "KERNEL_REFUSED"

    def __init__(self, message: str, *, kernel_errno: int, **metadata: object) -> None:
        super().__init__(message, **metadata)
        self.kernel_errno = kernel_errno
        name = _errno.errorcode.get(kernel_errno, str(kernel_errno))
        self.metadata["errno"] = name

    def details(self) -> Mapping[str, str]:
        return dict(self.metadata)


class AckTimeout(HwbpError):
    """An agent did not answer a control call (context switch, access) in time."""

    reason = "ACK_TIMEOUT"
    error_class = ErrorClass.DEADLINE


class KernelNoSpace(KernelRefused):
    """The kernel said ENOSPC: something outside the arbiter holds the registers."""

    reason = "KERNEL_NO_FREE_SLOT"
    error_class = ErrorClass.NO_SPACE


# --- a CPU's register file ------------------------------------------------------------


class RegisterFileFull(FailedPrecondition):
    """More breakpoints must be installed on a CPU than it has registers.

    Admission (the ledger) should make this impossible; the kernel's equivalent is the
    WARN and -EBUSY in arch_install_hw_breakpoint.
    """

    reason = "REGISTERS_FULL"
    errno = _errno.EBUSY


# --- the change pipeline --------------------------------------------------------------


class IdempotencyKeyReused(InvalidArgument):
    """An idempotency key already names a different request."""

    reason = "IDEMPOTENCY_KEY_REUSED"


class AgentAlreadyConnected(FailedPrecondition):
    """A second agent says hello for a CPU whose agent is live; the first one keeps it."""

    reason = "AGENT_ALREADY_CONNECTED"


class PipelineFault(HwbpError):
    """Something inside the change pipeline raised; the change was not made."""

    reason = "PIPELINE_FAULT"


class AgentFenced(HwbpError):
    """The arbiter closed an agent's stream: it missed an ack deadline or does not read."""

    reason = "AGENT_FENCED"
    error_class = ErrorClass.UNAVAILABLE
