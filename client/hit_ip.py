"""A hit's instruction pointer in words, on the host where the process runs.

A hit carries the IP the kernel sampled. hwbpctl names it ``function+off`` (and
``file:line`` where DWARF line info exists) when it runs on the hit's host and the
process is still there to read, as perf report does from the target's maps. On x86 a data
breakpoint traps after the access, so the IP is the instruction after the one that made
it; the line shown is that of the access (the instruction just before).
"""

from __future__ import annotations

import os

from hwbp.client.values import HitInfo
from hwbp.errors import HwbpError
from hwbp.wire.symbols import Symbolizer

_names: dict[int, Symbolizer | None] = {}  # pid -> its symbolizer, None: not readable
_MAX = 64


def ip_words(h: HitInfo) -> str | None:
    """``store_many+0x1c (threads.c:31)`` for a hit of this host's process; None when
    the IP cannot be named here (another host, a gone process, no symbols)."""
    if not h.ip or h.task is None or h.host != os.uname().nodename:
        return None
    if h.task not in _names:
        if len(_names) >= _MAX:
            _names.clear()
        try:
            _names[h.task] = Symbolizer(h.task)
        except HwbpError:
            _names[h.task] = None
    named = _names[h.task]
    where = None if named is None else named.locate(h.ip)
    return None if where is None else str(where)
