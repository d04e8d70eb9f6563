"""The one table from core error classes to gRPC status codes, and rich error details.

Every failure leaves the server as a google.rpc.Status carrying an ErrorInfo (stable
reason, domain, metadata incl. the request id); a refused reservation also carries a
QuotaFailure and a ResourceInfo naming the CPU and its holders, and a NoFreeSlotDetails
(protos/hwbp/v1/errors.proto) with each holder as data: its session, how long it has
been held and how long its lease has left. The ErrorInfo metadata keeps the holders as
text, so clients that do not know NoFreeSlotDetails still name them.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, NoReturn, Protocol, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from hwbp.errors import ErrorClass, HwbpError, InvalidArgument, NoFreeSlot
from hwbp.model import Reservation
from hwbp.server import outcomes
from hwbp.v1 import errors_pb2
from hwbp.wire import convert

DOMAIN = "hwbp.dev"
log = logging.getLogger("hwbp.server")

S = TypeVar("S")  # a servicer
Req = TypeVar("Req")  # a method's request message
Resp = TypeVar("Resp")  # ... and its response message

STATUS: dict[ErrorClass, grpc.StatusCode] = {
    ErrorClass.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorClass.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorClass.NO_SPACE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorClass.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorClass.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorClass.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorClass.ABORTED: grpc.StatusCode.ABORTED,
    ErrorClass.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorClass.DEADLINE: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorClass.INTERNAL: grpc.StatusCode.INTERNAL,
    ErrorClass.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorClass.OUT_OF_RANGE: grpc.StatusCode.OUT_OF_RANGE,
}


class _Lease(Protocol):
    expires_at: float


class Leases(Protocol):
    """Where a holder's lease is looked up: the arbiter's session table."""

    @property
    def sessions(self) -> Mapping[str, _Lease]: ...
    @property
    def clock(self) -> Callable[[], float]: ...


def slot_holder(res: Reservation, leases: Leases | None, now: float) -> errors_pb2.SlotHolder:
    """One holder of a refused CPU as data (the age and the lease when they are known)."""
    holder = errors_pb2.SlotHolder(
        reservation_id=res.id,
        owner=res.owner,
        session_id=res.session or "",
        scope=convert.SCOPE_PB[res.target.scope],
        cpu=res.target.cpu,
        task=res.target.task,
    )
    if res.reserved_at is not None:
        holder.age_seconds = max(0.0, now - res.reserved_at)
    lease = leases.sessions.get(res.session) if leases is not None and res.session else None
    if leases is not None and lease is not None:
        holder.lease_remaining_seconds = max(0.0, lease.expires_at - leases.clock())
    return holder


def no_free_slot_details(
    err: NoFreeSlot, leases: Leases | None, now: float
) -> errors_pb2.NoFreeSlotDetails:
    return errors_pb2.NoFreeSlotDetails(
        host=err.host,
        cpu=err.cpu,
        slot_class=err.slot_class,
        used=err.used,
        slots=err.slots,
        holders=[slot_holder(h, leases, now) for h in err.holders],
    )


def to_status(
    err: HwbpError, request_id: str, leases: Leases | None = None, *, now: float | None = None
) -> status_pb2.Status:
    """Build the google.rpc.Status for ``err``; ``leases`` tells a holder's lease, ``now``
    (the wall clock by default) its age."""
    code = STATUS[err.error_class]
    metadata = dict(err.details())
    if request_id:
        metadata["request_id"] = request_id[:MAX_REQUEST_ID]
    details: list[Message] = [
        error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata=metadata)
    ]
    if isinstance(err, NoFreeSlot):
        details.append(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=f"host/{err.host}/cpu/{err.cpu}", description=err.message
                    )
                ]
            )
        )
        details.append(
            error_details_pb2.ResourceInfo(
                resource_type="hwbp.dev/DebugRegisterSet",
                resource_name=f"host/{err.host}/cpu/{err.cpu}",
                owner=";".join(h.describe() for h in err.holders),
                description=err.message,
            )
        )
        details.append(no_free_slot_details(err, leases, time.time() if now is None else now))
    packed = []
    for detail in details:
        box = any_pb2.Any()
        box.Pack(detail)
        packed.append(box)
    return status_pb2.Status(code=code.value[0], message=err.message, details=packed)


def grpc_status(err: HwbpError, request_id: str, leases: Leases | None = None) -> grpc.Status:
    return rpc_status.to_status(to_status(err, request_id, leases))


async def abort(
    context: grpc.aio.ServicerContext[Req, Resp],
    err: HwbpError,
    request_id: str,
    leases: Leases | None = None,
) -> NoReturn:
    await context.abort_with_status(grpc_status(err, request_id, leases))


def _internal(method: str, request_id: str) -> HwbpError:
    err = HwbpError(f"internal error in {method} (request {request_id}); see the arbiter log")
    return err


def rpc(
    method: Callable[[S, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]],
) -> Callable[[S, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]:
    """Wrap a unary servicer method: typed errors become statuses, nothing else leaks.
    The method keeps its request, context and response types."""

    @functools.wraps(method)
    async def wrapper(self: S, request: Req, context: grpc.aio.ServicerContext[Req, Resp]) -> Resp:
        request_id: str = getattr(request, "request_id", "")
        allowed = outcomes.begin()  # the audit's outcome line of each allowed change
        try:
            _refuse_malformed(request)
            _check_request_id(request_id)
            response = await method(self, request, context)
            outcomes.settle(allowed, response)
            return response
        except HwbpError as err:
            outcomes.settle(allowed, error=err)
            log.info("request %s refused: %s %s", request_id, err.reason, err.message)
            await abort(context, err, request_id, _leases(self))
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception:
            internal = _internal(method.__name__, request_id)
            outcomes.settle(allowed, error=internal)
            log.exception("request %s failed in %s", request_id, method.__name__)
            await abort(context, internal, request_id)

    return wrapper


def stream_rpc(
    method: Callable[[S, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]],
) -> Callable[[S, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]]:
    """The same guard for server-streaming methods (async generators)."""

    @functools.wraps(method)
    async def wrapper(
        self: S, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> AsyncIterator[Resp]:
        request_id: str = getattr(request, "request_id", "")
        try:
            _refuse_malformed(request)
            _check_request_id(request_id)
            async for item in method(self, request, context):
                yield item
        except HwbpError as err:
            log.info("stream %s refused: %s %s", request_id, err.reason, err.message)
            await abort(context, err, request_id, _leases(self))
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception:
            log.exception("stream %s failed in %s", request_id, method.__name__)
            await abort(context, _internal(method.__name__, request_id), request_id)

    return wrapper


def _leases(servicer: object) -> Leases | None:
    """The servicer's session table, if it has one (a refusal names its holders' leases)."""
    sessions: Leases | None = getattr(servicer, "sessions", None)
    return sessions


class Malformed:
    """Stands in for a request whose bytes do not parse, so the guard can refuse it with
    INVALID_ARGUMENT and ErrorInfo instead of gRPC's bare UNKNOWN."""

    request_id = ""

    def __init__(self, type_name: str, problem: str) -> None:
        self.type_name, self.problem = type_name, problem


def _safe(
    deserialize: Callable[[bytes], Req], type_name: str
) -> Callable[[bytes], Req | Malformed]:
    def parse(data: bytes) -> Req | Malformed:
        try:
            return deserialize(data)
        except Exception as err:
            return Malformed(type_name, str(err))

    return parse


class MalformedRequests(grpc.aio.ServerInterceptor):
    """Wrap every method's request parser with ``_safe`` (once per method)."""

    def __init__(self) -> None:
        self._wrapped: dict[str, Any] = {}

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        cached = self._wrapped.get(details.method)
        if cached is not None:
            return cached
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        safe = _safe(handler.request_deserializer, details.method)
        self._wrapped[details.method] = wrapped = handler._replace(request_deserializer=safe)
        return wrapped


MAX_REQUEST_ID = 128  # it is logged and echoed in every error: keep it a name, not a payload


def _check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID or any(ord(c) < 32 for c in request_id):
        raise InvalidArgument(
            f"request_id must be at most {MAX_REQUEST_ID} printable characters", field="request_id"
        )


def _refuse_malformed(request: object) -> None:
    if isinstance(request, Malformed):
        raise _unparsed(request)


def well_formed(request: Req | Malformed) -> Req:
    """A streamed request as its message; INVALID_ARGUMENT if its bytes did not parse."""
    if isinstance(request, Malformed):
        raise _unparsed(request)
    return request


def _unparsed(request: Malformed) -> InvalidArgument:
    return InvalidArgument(
        f"the request bytes for {request.type_name} do not parse: {request.problem}",
        method=request.type_name,
    )
