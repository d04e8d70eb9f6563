"""Python SDK and the ``hwbpctl`` CLI for the hwbp arbiter.

``from hwbp.client import Client`` (sync) or ``AsyncClient`` (asyncio): one surface, the
sync one generated from the async source; values returned are frozen dataclasses from
``client.values`` and failures are ``hwbp.errors`` classes.
"""

from hwbp.client.aio import AsyncClient
from hwbp.client.aio_handles import AsyncReservationHandle, AsyncSession, AsyncTracer
from hwbp.client.errors import DeadlineExceeded, NoFreeSlot, RemoteError, Unavailable, UsageError
from hwbp.client.handles import ReservationHandle, Session, Tracer
from hwbp.client.retry import Deadlines, RetryPolicy
from hwbp.client.sdk import Client
from hwbp.client.values import (
    AccessResult,
    Change,
    CpuInfo,
    EventInfo,
    EventKind,
    HitInfo,
    HolderInfo,
    ReservationInfo,
    SessionSummary,
    SlotHolder,
    TrapInfo,
)
from hwbp.wire.tls import TlsConfig

__all__ = [
    "AccessResult",
    "AsyncClient",
    "AsyncReservationHandle",
    "AsyncSession",
    "AsyncTracer",
    "Change",
    "Client",
    "CpuInfo",
    "DeadlineExceeded",
    "Deadlines",
    "EventInfo",
    "EventKind",
    "HitInfo",
    "HolderInfo",
    "NoFreeSlot",
    "RemoteError",
    "ReservationHandle",
    "ReservationInfo",
    "RetryPolicy",
    "Session",
    "SessionSummary",
    "SlotHolder",
    "TlsConfig",
    "Tracer",
    "TrapInfo",
    "Unavailable",
    "UsageError",
]
