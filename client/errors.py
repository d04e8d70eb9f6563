"""Turn what the arbiter sends back into the typed errors of ``hwbp.errors``.

The server puts a google.rpc.Status on every failure, with an ErrorInfo detail whose
``reason`` is the stable code of one ``HwbpError`` subclass. We rebuild that class on
this side so callers write ``except NoFreeSlot`` whether the refusal came from the core
in-process or from an arbiter across the network. Every error decoded from the wire is
also a ``RemoteError``, which carries the gRPC code and the raw metadata.

The CLI's exit codes live here too, keyed by ``ErrorClass``, so there is one table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from enum import IntEnum
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from hwbp import errors as core_errors
from hwbp.client import wire
from hwbp.client.values import Scope, SlotHolder
from hwbp.errors import (
    AgentRefused,
    ErrorClass,
    FailedPrecondition,
    HwbpError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from hwbp.v1 import errors_pb2

ERROR_DOMAIN = "hwbp.dev"
_DETAILS_KEY = "grpc-status-details-bin"


# --- client-side errors ---------------------------------------------------------------


class Unavailable(HwbpError):
    """The arbiter could not be reached (or dropped us): worth retrying later."""

    reason = "UNAVAILABLE"
    error_class = ErrorClass.UNAVAILABLE


class DeadlineExceeded(Unavailable):
    """No answer within the call's deadline; the request may or may not have happened."""

    reason = "DEADLINE_EXCEEDED"
    error_class = ErrorClass.DEADLINE


class UsageError(InvalidArgument):
    """The caller asked for something malformed; caught before any request is sent."""

    reason = "USAGE"


class RemoteError(HwbpError):
    """An error the arbiter returned, as an instance of the ``hwbp`` class its reason names.

    ``from_rpc_error`` builds a subclass of both this and the target class, so the
    target's own ``__init__`` (which wants core values such as ``Reservation`` holders)
    is never called: the fields a person needs are decoded from the metadata instead.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        metadata: Mapping[str, str],
        code: grpc.StatusCode | None = None,
        status: status_pb2.Status | None = None,
    ) -> None:
        """``status``: the rich status it came with, for subclasses that read more of it."""
        HwbpError.__init__(self, message)
        self.metadata = dict(metadata)
        self.remote_reason = reason
        self.code = code
        self.host: str | None = metadata.get("host") or None
        self.cpu: int | None = _int_or_none(metadata.get("cpu"))
        self.errno_name: str | None = metadata.get("errno") or None
        self.holders: tuple[SlotHolder, ...] = holders_from_text(metadata.get("holders", ""))

    @property
    def transient(self) -> bool:
        """A transport-level failure a retry may cure (never a refusal on the merits)."""
        return self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


_REMOTE_CLASSES: dict[type[HwbpError], type[RemoteError]] = {HwbpError: RemoteError}


def remote_class(cls: type[HwbpError]) -> type[RemoteError]:
    """The class of errors decoded from the wire whose reason is ``cls.reason``.

    One class per target, made once, so ``type(a) is type(b)`` for two NO_FREE_SLOTs.
    """
    if issubclass(cls, RemoteError):
        return cls
    made = _REMOTE_CLASSES.get(cls)
    if made is None:
        attrs = {"__module__": __name__, "__doc__": cls.__doc__, "__qualname__": cls.__name__}
        made = _REMOTE_CLASSES[cls] = type(cls.__name__, (RemoteError, cls), attrs)
    return made


class NoFreeSlot(RemoteError, core_errors.NoFreeSlot):  # type: ignore[misc]
    """NO_FREE_SLOT from the arbiter; also an ``hwbp.errors.NoFreeSlot``.

    Declared here (not made on the fly) so type checkers see ``holders`` as the SDK's
    ``SlotHolder`` values, not the core's Reservations: each holder's reservation, owner,
    session, scope, CPU or task, age and lease, from the refusal's NoFreeSlotDetails (an
    arbiter from before them sends only text: what it names is parsed, age and lease
    stay None).
    """

    holders: tuple[SlotHolder, ...]  # type: ignore[assignment]

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        metadata: Mapping[str, str],
        code: grpc.StatusCode | None = None,
        status: status_pb2.Status | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata, code=code, status=status)
        self.slot_class = metadata.get("slot_class", "")
        self.used = _int_or_none(metadata.get("used")) or 0
        self.slots = _int_or_none(metadata.get("slots")) or 0
        details = _unpack(status, errors_pb2.NoFreeSlotDetails) if status is not None else None
        if details is not None:
            self.host, self.cpu, self.slot_class = details.host, details.cpu, details.slot_class
            self.used, self.slots = details.used, details.slots
            self.holders = tuple(wire.slot_holder(h) for h in details.holders)


_REMOTE_CLASSES[core_errors.NoFreeSlot] = NoFreeSlot


def _walk(cls: type[HwbpError]) -> Iterable[type[HwbpError]]:
    for sub in cls.__subclasses__():
        if issubclass(sub, RemoteError):
            continue
        yield sub
        yield from _walk(sub)


def class_for_reason(reason: str) -> type[HwbpError] | None:
    """The ``HwbpError`` subclass whose stable ``reason`` is ``reason``, if any."""
    for cls in _walk(HwbpError):
        if cls.reason == reason:
            return cls
    return None


# What to raise when the status has no ErrorInfo we know: the nearest base class.
_BY_CODE: Mapping[grpc.StatusCode, type[HwbpError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    # Without ErrorInfo naming NO_FREE_SLOT this is gRPC's own limit (a message too
    # large), never the debug registers: a script must not read it as exit 3.
    grpc.StatusCode.RESOURCE_EXHAUSTED: core_errors.ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ALREADY_EXISTS: FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.ABORTED: AgentRefused,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def from_status(
    code: grpc.StatusCode | None, details: str, status: status_pb2.Status | None
) -> RemoteError:
    """Decode one failed call: the status code, its details and the rich status if sent."""
    info = _error_info(status) if status is not None else None
    message = (status.message if status is not None and status.message else details) or ""
    cls: type[HwbpError] | None = None
    reason = ""
    metadata: dict[str, str] = {}
    if info is not None:
        reason = info.reason
        metadata = dict(info.metadata)
        cls = class_for_reason(reason)
    if cls is None:
        cls = _BY_CODE.get(code, HwbpError) if code is not None else HwbpError
        reason = reason or cls.reason
    if not message:
        message = f"arbiter answered {code.name if code else 'an unknown error'}"
    if info is None and issubclass(cls, DeadlineExceeded):
        message = f"no answer from the arbiter in time: {message}"
    elif info is None and issubclass(cls, Unavailable):
        message = f"arbiter unavailable: {message}"
    elif info is None and issubclass(cls, core_errors.ResourceExhausted):
        message = f"resource exhausted (a gRPC limit, not a debug register): {message}"
    return remote_class(cls)(message, reason=reason, metadata=metadata, code=code, status=status)


def from_rpc_error(err: grpc.RpcError) -> RemoteError:
    """The typed error for a failed sync or ``grpc.aio`` call."""
    code = _call_attr(err, "code")
    details = _call_attr(err, "details") or ""
    status = status_from_trailers(_call_attr(err, "trailing_metadata"))
    return from_status(code if isinstance(code, grpc.StatusCode) else None, str(details), status)


def status_from_trailers(trailers: Any) -> status_pb2.Status | None:
    """The google.rpc.Status in trailing metadata (sync tuples or ``aio.Metadata``).

    We parse the trailer ourselves rather than through ``rpc_status.from_call`` because
    that raises ValueError when the status message and the call details differ, and a
    decoding helper must never turn one error into another.
    """
    if not trailers:
        return None
    for key, value in trailers:
        if key == _DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # a corrupt detail must not hide the real status code
                return None
    return None


def _error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo | None:
    for detail in status.details:
        if detail.TypeName() == error_details_pb2.ErrorInfo.DESCRIPTOR.full_name:
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain in ("", ERROR_DOMAIN):
                return info
    return None


D = TypeVar("D", bound=Message)


def _unpack(status: status_pb2.Status, kind: type[D]) -> D | None:
    """The first detail of type ``kind`` (None if there is none, or it does not parse)."""
    for detail in status.details:
        if detail.TypeName() == kind.DESCRIPTOR.full_name:
            out = kind()
            try:
                detail.Unpack(out)
            except Exception:  # a corrupt detail must not hide the error it came with
                return None
            return out
    return None


# Reservation.describe() on the arbiter: "r-1 (alice, cpu 0)", joined with ";".
_DESCRIBED = re.compile(
    r"^(?P<id>\S+) \((?P<who>.*), (?P<where>system|cpu \d+|task \d+(?: on cpu \d+)?)\)$"
)


def holders_from_text(text: str) -> tuple[SlotHolder, ...]:
    """Holders an arbiter named only as text (ErrorInfo metadata), as far as it says;
    a description that does not parse keeps its text as the reservation id."""
    out = []
    for item in filter(None, text.split(";")):
        m = _DESCRIBED.match(item)
        if m is None:
            out.append(SlotHolder(item, "", "", Scope.SYSTEM, None, None))
            continue
        numbers = [int(n) for n in re.findall(r"\d+", m["where"])]
        where = m["where"]
        if where == "system":
            scope, cpu, task = Scope.SYSTEM, None, None
        elif where.startswith("cpu"):
            scope, cpu, task = Scope.CPU, numbers[0], None
        elif "on cpu" in where:
            scope, cpu, task = Scope.TASK_CPU, numbers[1], numbers[0]
        else:
            scope, cpu, task = Scope.TASK, None, numbers[0]
        owner = "" if m["who"] == "anonymous" else m["who"]
        out.append(SlotHolder(m["id"], owner, "", scope, cpu, task))
    return tuple(out)


def _call_attr(err: object, name: str) -> Any:
    fn = getattr(err, name, None)
    if not callable(fn):
        return None
    try:
        return fn()
    except Exception:  # some RpcError subclasses raise when the call never started
        return None


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text not in (None, "") else None
    except ValueError:
        return None


# --- exit codes -----------------------------------------------------------------------


class ExitCode(IntEnum):
    """hwbpctl's exit status; scripts branch on these, so they never change meaning."""

    OK = 0
    UNEXPECTED = 1
    USAGE = 2
    NO_FREE_SLOT = 3
    DENIED = 4
    UNAVAILABLE = 5
    NOT_FOUND = 6
    RESOURCE_EXHAUSTED = 7  # a limit of the arbiter or of gRPC, not a debug register


EXIT_CODES: Mapping[ErrorClass, ExitCode] = {
    ErrorClass.INVALID_ARGUMENT: ExitCode.USAGE,
    # A precondition (already attached, cpu offline) is fixed by asking differently.
    ErrorClass.FAILED_PRECONDITION: ExitCode.USAGE,
    ErrorClass.NO_SPACE: ExitCode.NO_FREE_SLOT,
    ErrorClass.PERMISSION_DENIED: ExitCode.DENIED,
    ErrorClass.UNAUTHENTICATED: ExitCode.DENIED,
    ErrorClass.UNAVAILABLE: ExitCode.UNAVAILABLE,
    ErrorClass.DEADLINE: ExitCode.UNAVAILABLE,
    ErrorClass.NOT_FOUND: ExitCode.NOT_FOUND,
    # An agent refused a reload for its own reasons: nothing the caller typed was wrong.
    ErrorClass.ABORTED: ExitCode.UNEXPECTED,
    ErrorClass.INTERNAL: ExitCode.UNEXPECTED,
    ErrorClass.RESOURCE_EXHAUSTED: ExitCode.RESOURCE_EXHAUSTED,
    # A watch resumed from a seq the arbiter no longer keeps: ask from a later one.
    ErrorClass.OUT_OF_RANGE: ExitCode.USAGE,
}


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit status hwbpctl reports for ``exc``."""
    if isinstance(exc, HwbpError):
        return EXIT_CODES.get(exc.error_class, ExitCode.UNEXPECTED)
    return ExitCode.UNEXPECTED
