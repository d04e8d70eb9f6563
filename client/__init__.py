"""Python SDK and the ``hwbpctl`` CLI for the hwbp arbiter.

``Client`` (sync) and ``AsyncClient`` (asyncio) share one surface; values returned are
frozen dataclasses from ``client.values`` and failures are ``hwbp.errors`` classes.
"""

from hwbp.client.errors import DeadlineExceeded, NoFreeSlot, RemoteError, Unavailable, UsageError
from hwbp.client.sdk import Client, ReservationHandle, Session, Tracer
from hwbp.client.values import (
    AccessResult,
    Change,
    CpuInfo,
    EventInfo,
    EventKind,
    HitInfo,
    HolderInfo,
    ReservationInfo,
    TrapInfo,
)
from hwbp.wire.tls import TlsConfig

__all__ = [
    "AccessResult",
    "Change",
    "Client",
    "CpuInfo",
    "DeadlineExceeded",
    "EventInfo",
    "EventKind",
    "HitInfo",
    "HolderInfo",
    "NoFreeSlot",
    "RemoteError",
    "ReservationHandle",
    "ReservationInfo",
    "Session",
    "TlsConfig",
    "Tracer",
    "TrapInfo",
    "Unavailable",
    "UsageError",
]
