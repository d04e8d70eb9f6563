"""Which arbiter to talk to when there are several (a replicated arbiter), pure.

``--arbiter A,B,C``, ``HWBP_ARBITER=A,B,C``, ``Client("a:1,b:2")`` or a list name the
replicas. One of them leads; a follower refuses every call with UNAVAILABLE, reason
``NOT_LEADER`` and metadata ``leader`` (the leader's advertised address, or empty while
none is known). ``Endpoints.after`` says where to go next: the leader it names, else
the next replica in turn (it may have been elected meanwhile). Whether a call may be
repeated there is the caller's business: reads and keyed reserves may, others not.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hwbp.client.errors import UsageError

DEFAULT_ENDPOINT = "127.0.0.1:50051"
NOT_LEADER = "NOT_LEADER"
MOVED = ("NOT_LEADER", "LEADERSHIP_LOST")  # the reasons that mean "try the leader"


class EndpointError(UsageError):
    """A malformed endpoint list (hwbpctl: exit 2, one line)."""


def parse(spec: str | Sequence[str] | None, env: Mapping[str, str] | None = None) -> list[str]:
    """The endpoint list: the argument, else $HWBP_ARBITER, else the loopback default."""
    if spec is None or spec == "":
        spec = (os.environ if env is None else env).get("HWBP_ARBITER") or DEFAULT_ENDPOINT
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for part in parts:
        address = part.strip()
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise EndpointError(f"arbiter endpoint {address!r} is not HOST:PORT")
        if address not in out:
            out.append(address)
    if not out:
        raise EndpointError("no arbiter endpoint given")
    return out


@dataclass
class Endpoints:
    """The replicas and the one in use; ``after`` moves on from a failed call."""

    addresses: list[str]
    index: int = 0
    learned: list[str] = field(default_factory=list)  # leaders named that were not listed

    @classmethod
    def of(cls, spec: str | Sequence[str] | None) -> Endpoints:
        return cls(parse(spec))

    @property
    def current(self) -> str:
        return self.addresses[self.index]

    @property
    def several(self) -> bool:
        return len(self.addresses) > 1

    def after(self, reason: str, metadata: Mapping[str, str]) -> str | None:
        """Where to send the next attempt after a call failed with ``reason`` (an
        ErrorInfo reason, or "" for a transport failure); None: stay where we are."""
        hint = metadata.get("leader", "") if reason in MOVED else ""
        if hint:
            if hint not in self.addresses:
                self.addresses.append(hint)
                self.learned.append(hint)
            moved = self.addresses.index(hint) != self.index
            self.index = self.addresses.index(hint)
            return self.current if moved else None
        if reason and reason not in MOVED:
            return None  # an answer on the merits: the replica is up and leading
        if not self.several:
            return None
        self.index = (self.index + 1) % len(self.addresses)
        return self.current
