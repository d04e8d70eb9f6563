"""hwbpctl's errors as data: the JSON document a script reads when a command fails.

With --json a failure is one JSON object on stdout (the one line for people still goes
to stderr, and the exit code is the same as without --json), so a script parses stdout
whatever happened and branches on ``code`` (the exit code) or ``reason`` (the stable
upper-case code of the error, e.g. NO_FREE_SLOT, RESERVATION_NOT_FOUND, USAGE).
"""

from __future__ import annotations

from typing import Any

from hwbp.client.cli_render import jsonable, no_free_slot_json
from hwbp.client.errors import ExitCode, NoFreeSlot, RemoteError
from hwbp.errors import HwbpError
from hwbp.wire.tls import TlsConfigError

# What a failure that is not one of ours is called, by the exception's type.
_LOCAL_REASONS: dict[type[BaseException], str] = {
    KeyboardInterrupt: "INTERRUPTED",
    TlsConfigError: "TLS_CONFIG",
}


def reason_of(err: BaseException | None) -> str:
    """The stable reason: the arbiter's for a remote error, the class's for a local one."""
    if isinstance(err, RemoteError) and err.remote_reason:
        return err.remote_reason
    if isinstance(err, HwbpError):
        return err.reason
    for kind, reason in _LOCAL_REASONS.items():
        if isinstance(err, kind):
            return reason
    return "UNEXPECTED"


def error_json(err: BaseException | None, code: ExitCode, message: str) -> dict[str, Any]:
    """One failure: ``error`` and ``reason`` (the same stable code), ``code`` (the exit
    code), ``message`` (the line on stderr, without its prefix) and what the error names:
    host, cpu, errno, the ErrorInfo metadata as ``details``, and for a refusal that
    names who holds the slots, each holder as an object."""
    reason = reason_of(err)
    doc: dict[str, Any] = {"error": reason, "reason": reason, "code": int(code)}
    if isinstance(err, NoFreeSlot):
        doc.update(no_free_slot_json(err))
    elif isinstance(err, RemoteError):
        doc.update(host=err.host, cpu=err.cpu, errno=err.errno_name)
        if err.holders:
            doc["holders"] = jsonable(err.holders)
    if isinstance(err, RemoteError):
        doc["status"] = err.code.name if err.code is not None else None
    if isinstance(err, HwbpError) and err.metadata:
        doc["details"] = dict(err.metadata)
    doc["message"] = message
    return doc
