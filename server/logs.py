"""Log output: readable text by default, or one JSON object per line for log shippers.

Decision lines already name their request ("request %s: reserve ..."); the JSON form
lifts that id into a ``request_id`` field so logs can be joined with error details
(ErrorInfo metadata carries the same id) without parsing the message.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The server's convention for decision lines: the request id is the first argument.
_REQUEST_FIRST = re.compile(r"^(request|stream) %s\b")


def request_id_of(record: logging.LogRecord) -> str | None:
    """The request a record is about: ``extra={"request_id": ...}`` or the line convention."""
    explicit = getattr(record, "request_id", None)
    if explicit:
        return str(explicit)
    args = record.args
    msg = record.msg
    if isinstance(args, tuple) and args and isinstance(msg, str) and _REQUEST_FIRST.match(msg):
        return str(args[0])
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message[, request_id]."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id_of(record)
        if rid is not None:
            out["request_id"] = rid
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup(level: str, fmt: str = "text") -> None:
    """Configure the root logger on stderr (stdout carries the address lines tests read)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif fmt == "text":
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    else:
        raise ValueError(f"unknown log format {fmt!r} (text or json)")
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
