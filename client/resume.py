"""What a resuming watch needs besides the stream: when to reconnect, how long to wait,
and the one line it says per state change.

A watch with ``resume=True`` rides out an arbiter restart or a failover: on a transport
failure (the arbiter is gone, restarting, or no longer leads) it reconnects with
tenacity's jittered exponential backoff and asks the arbiter to replay the change events
after the last seq it delivered (``WatchRequest.since``), so nothing is lost or repeated.
A refusal on the merits (a seq no longer kept, a permission) is never retried: it ends
the watch with that error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hwbp.client.endpoints import MOVED
from hwbp.client.errors import RemoteError
from hwbp.client.retry import RetryPolicy
from hwbp.errors import HwbpError

StateListener = Callable[[str], None]


def reconnectable(exc: BaseException) -> bool:
    """Whether the watch should reconnect after ``exc``: the transport failed, or the
    replica it read from stopped leading (or is draining for a restart)."""
    if not isinstance(exc, RemoteError):
        return False
    return exc.transient or exc.remote_reason in (*MOVED, "DRAINING")


# Reconnect for as long as the reader keeps reading (Ctrl-C ends it), at most 5 s apart.
RECONNECT = RetryPolicy(attempts=1 << 62, initial=0.1, maximum=5.0, when=reconnectable)


def _why(err: HwbpError) -> str:
    first = err.message.splitlines()[0] if err.message else type(err).__name__
    return first if len(first) <= 160 else first[:157] + "..."


@dataclass
class Resumer:
    """Where a resuming watch stands: the last seq delivered, and whether it is cut off.
    It says one line per change of state (lost, back), never one per attempt."""

    since: int | None  # resume after this seq; None: from whatever is live now
    tell: StateListener | None = None
    cut_off: bool = False

    def delivered(self, seq: int) -> None:
        if self.since is None or seq > self.since:
            self.since = seq

    def lost(self, endpoint: str, err: HwbpError) -> None:
        if self.cut_off:
            return
        self.cut_off = True
        after = "" if self.since is None else f" after seq {self.since}"
        self._say(f"watch: lost {endpoint} ({_why(err)}); reconnecting to resume{after}")

    def back(self, endpoint: str) -> None:
        if not self.cut_off:
            return
        self.cut_off = False
        after = "" if self.since is None else f" after seq {self.since}"
        self._say(f"watch: reconnected to {endpoint}; resumed{after}")

    def _say(self, line: str) -> None:
        if self.tell is not None:
            self.tell(line)
