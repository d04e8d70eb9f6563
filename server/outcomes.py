"""The audit's second line for an allowed change: how the call ended.

An ``allow`` line says a caller *may* reserve; it does not say whether the reservation
was made. ``Authz.authorize`` notes each audited allowance of a call here, and the
unary servicer guard (``server.errors.rpc``) settles them when the call returns or
fails: one ``outcome`` line per allowance, with the reservation or session it produced,
or the error's reason code and message. Calls are told apart by a context variable
(each gRPC call runs in its own asyncio task, and the servicer is awaited inline), so
no servicer has to pass anything along.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from hwbp.errors import HwbpError


class Sink(Protocol):
    def write(self, record: Mapping[str, object]) -> None: ...


@dataclass(frozen=True)
class Allowed:
    """An allowed, audited decision whose outcome is not known yet."""

    sink: Sink
    clock: Callable[[], str]
    record: Mapping[str, object]  # identity, role, request_id, action, target


_CALL: contextvars.ContextVar[list[Allowed] | None] = contextvars.ContextVar(
    "hwbp_audit_allowed", default=None
)


def begin() -> list[Allowed]:
    """Start collecting the allowances of the call running in this context."""
    box: list[Allowed] = []
    _CALL.set(box)
    return box


def allowed(sink: Sink, clock: Callable[[], str], record: Mapping[str, object]) -> None:
    """Note an allowance; outside a guarded unary call (agent streams) nothing is noted."""
    box = _CALL.get()
    if box is not None:
        box.append(Allowed(sink, clock, record))


def settle(box: list[Allowed], response: object = None, error: HwbpError | None = None) -> None:
    """Write one outcome line per allowance of the call, then forget them."""
    while box:
        item = box.pop(0)
        out: dict[str, object] = {**item.record, "time": item.clock()}
        if error is None:
            out["outcome"] = "ok"
            out.update(produced(response))
        else:
            out["outcome"] = "error"
            out["reason"] = error.reason
            out["message"] = error.message
        item.sink.write(out)


def produced(response: object) -> dict[str, str]:
    """What a successful call made or changed, named by id (empty if nothing to name)."""
    out: dict[str, str] = {}
    reservation = getattr(response, "reservation", None)
    rid = getattr(reservation, "id", "")
    if isinstance(rid, str) and rid:
        out["reservation_id"] = rid
    session = getattr(response, "session_id", "")
    if isinstance(session, str) and session:
        out["session_id"] = session
    return out
