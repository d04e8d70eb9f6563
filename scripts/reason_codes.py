"""Print the README's table of error reason codes, generated from hwbp/errors.py.

The table is derived rather than written by hand so it cannot drift from the code:
every HwbpError subclass, its ErrorInfo reason, the gRPC code from server.errors'
one table, the errno the kernel would return, and the meaning from its docstring
(or, for undocumented classes, its name).
"""

from __future__ import annotations

import errno
import inspect
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hwbp.errors import HwbpError
from hwbp.server.errors import STATUS


def subclasses(cls: type[HwbpError]) -> list[type[HwbpError]]:
    """``cls`` and every subclass, depth first in definition order."""
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(subclasses(sub))
    return out


ROOT_MEANING = (
    "Unexpected failure inside the arbiter (a bug); the message names the request id "
    "to look up in the arbiter's log."
)


def meaning(cls: type[HwbpError]) -> str:
    if cls is HwbpError:
        return ROOT_MEANING
    doc = cls.__dict__.get("__doc__")
    if doc:
        return " ".join(doc.strip().split("\n\n")[0].split())
    words = re.findall(r"[A-Z]+(?=[A-Z][a-z]|\b)|[A-Z][a-z]+|[a-z]+|\d+", cls.__name__)
    return " ".join(words).capitalize()


def rows() -> list[tuple[str, str, str, str, str]]:
    """(reason, gRPC code, errno, class, meaning), one per reason code."""
    seen: dict[str, tuple[str, str, str, str, str]] = {}
    for cls in subclasses(HwbpError):
        if cls.__module__ != "hwbp.errors" or cls.reason in seen:
            continue
        code = STATUS[cls.error_class].name
        err = errno.errorcode.get(cls.errno, "") if cls.errno else ""
        if "kernel_errno" in inspect.signature(cls.__init__).parameters:
            err = "the kernel's"  # carried per refusal in the ErrorInfo metadata
        seen[cls.reason] = (cls.reason, code, err, cls.__name__, meaning(cls))
    return list(seen.values())


def table() -> str:
    lines = [
        "| Reason | gRPC code | errno | Class | Meaning |",
        "|---|---|---|---|---|",
    ]
    for reason, code, err, name, text in rows():
        lines.append(
            f"| `{reason}` | {code} | {err or '—'} | `{name}` | {text.replace('|', '/')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
