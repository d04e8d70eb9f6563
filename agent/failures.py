"""What went wrong on an agent's stream, and how soon to try again.

An agent holds one stream for hours, and the only acceptable way for it to end is to be
told to stop. Everything else is one of:

* a broken stream (the arbiter restarted or ended the stream; grpc.aio then reports
  UNAVAILABLE, CANCELLED, UNKNOWN "Stream removed", or INTERNAL "Failed execute_batch"
  when a write races the end): reconnect at once, backing off to at most 2 s;
* a refusal the arbiter may lift (another live agent holds this host+CPU, the host is
  known with another shape, too many streams): say so, and retry slowly, never spin;
* a refusal it never will (this certificate may not speak for the host, the hello is
  malformed): the link gives up, and says why;
* anything else (a bug, a backend failure): logged with its traceback, retried slowly.
"""

from __future__ import annotations

import asyncio
from enum import Enum
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from tenacity import RetryCallState, wait_exponential, wait_random, wait_random_exponential

__all__ = ["Failure", "LinkRefused", "StreamLost", "classify", "describe", "wait"]

_DETAILS_KEY = "grpc-status-details-bin"


class StreamLost(Exception):
    """The arbiter closed our stream (restart, replacement): reconnect."""


class LinkRefused(Exception):
    """The arbiter refused this agent for good (identity, malformed hello): give up."""


class Failure(Enum):
    STOPPED = "stopped"  # cancelled or interrupted: not a failure, let it through
    BROKEN = "broken stream"
    REFUSED = "refused"
    FATAL = "refused for good"
    UNEXPECTED = "unexpected failure"


_TRANSPORT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DATA_LOSS,
}
# Also what the transport says when a stream ends under us, unless the arbiter itself
# sent the status (it always attaches an ErrorInfo to what it sends).
_TRANSPORT_UNLESS_SENT = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
_NEVER = {
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED,
}
RETRIED = {Failure.BROKEN, Failure.REFUSED, Failure.UNEXPECTED}


def classify(exc: BaseException) -> Failure:
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit | GeneratorExit):
        return Failure.STOPPED
    if isinstance(exc, StreamLost):
        return Failure.BROKEN
    if isinstance(exc, LinkRefused):
        return Failure.FATAL
    if not isinstance(exc, grpc.RpcError):
        return Failure.UNEXPECTED
    code = _call(exc, "code")
    if not isinstance(code, grpc.StatusCode) or code in _TRANSPORT:
        return Failure.BROKEN
    if code in _TRANSPORT_UNLESS_SENT:
        return Failure.REFUSED if error_info(exc) is not None else Failure.BROKEN
    return Failure.FATAL if code in _NEVER else Failure.REFUSED


_FAST = wait_random_exponential(multiplier=0.05, max=2.0)
# At least half a second between tries, up to ten: a refusal is not lifted in a spin.
_SLOW = wait_exponential(multiplier=0.5, min=0.5, max=10.0) + wait_random(0, 0.5)


def wait(state: RetryCallState) -> float:
    """Tenacity's wait: fast after a broken stream, slow after a refusal or a bug."""
    exc = state.outcome.exception() if state.outcome is not None else None
    fast = exc is not None and classify(exc) is Failure.BROKEN
    return float((_FAST if fast else _SLOW)(state))


def describe(exc: BaseException) -> str:
    """One line: the status code, what the arbiter said, and its reason and metadata
    (a refusal names, for instance, the agent that holds this CPU)."""
    if not isinstance(exc, grpc.RpcError):
        return f"{type(exc).__name__}: {exc}"
    code = _call(exc, "code")
    text = f"{getattr(code, 'name', code)}: {_call(exc, 'details') or 'no details'}"
    info = error_info(exc)
    if info is not None:
        meta = ", ".join(f"{k}={v}" for k, v in sorted(info.metadata.items()))
        text += f" [{info.reason}{': ' + meta if meta else ''}]"
    return text


def error_info(exc: BaseException) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo of the google.rpc.Status the arbiter attached, if any."""
    for key, value in _call(exc, "trailing_metadata") or ():
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:  # a corrupt detail is no ErrorInfo, not a new failure
            return None
        for detail in status.details:
            if detail.TypeName() == error_details_pb2.ErrorInfo.DESCRIPTOR.full_name:
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return info
    return None


def _call(exc: BaseException, name: str) -> Any:
    fn = getattr(exc, name, None)
    try:
        return fn() if callable(fn) else None
    except Exception:
        return None
