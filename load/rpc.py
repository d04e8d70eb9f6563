"""Raw grpc.aio stubs and the google.rpc ErrorInfo of a failed call (no SDK in the way)."""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2

from hwbp.v1 import (
    arbiter_pb2,
    arbiter_pb2_grpc,
    ptrace_pb2_grpc,
    simulation_pb2_grpc,
)

# Load traffic is loopback only; a generous message limit matches the arbiter's.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]
RPC_TIMEOUT = 20.0  # seconds; longer than any ack timeout, so a hang is seen as one


class Stubs:
    """One channel per client (as separate processes would have), with every stub on it."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.arb = arbiter_pb2_grpc.ArbiterStub(self.channel)
        self.sim = simulation_pb2_grpc.SimulationStub(self.channel)
        self.ptrace = ptrace_pb2_grpc.PtraceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()


@dataclass(frozen=True)
class Failure:
    """What a failed call said: status code, ErrorInfo reason and metadata, message."""

    code: str
    reason: str
    message: str
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def holder_ids(self) -> list[str]:
        """Reservation ids named in ``holders`` ("r12 (owner, cpu 1);r13 (...)")."""
        text = self.metadata.get("holders", "")
        return [part.strip().split(" ", 1)[0] for part in text.split(";") if part.strip()]


def failure(err: grpc.aio.AioRpcError) -> Failure:
    """Decode the rich status; a call without one gets reason "" so checks can flag it."""
    reason, meta = "", {}
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.TypeName() == error_details_pb2.ErrorInfo.DESCRIPTOR.full_name:
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason, meta = info.reason, dict(info.metadata)
    return Failure(err.code().name, reason, err.details() or "", meta)


# The paged reads: List and Inventory.
Page = TypeVar("Page", bound=arbiter_pb2.ListRequest | arbiter_pb2.InventoryRequest)
Paged = TypeVar("Paged", bound=arbiter_pb2.ListResponse | arbiter_pb2.InventoryResponse)


async def all_pages(
    method: Callable[..., Awaitable[Paged]],
    request: Page,
    field: str,
    timeout: float = RPC_TIMEOUT,
) -> Paged:
    """Every page of a paged List or Inventory, merged into one response of its type.

    The arbiter pages both; a check that read one page would miss most of a big fleet.
    An arbiter that does not page answers with an empty token: one call.
    """
    req = copy.deepcopy(request)  # the caller's request stays as it was
    merged: Paged | None = None
    seen: set[str] = set()
    while True:
        resp = await method(req, timeout=timeout)
        if merged is None:
            merged = type(resp)()
        getattr(merged, field).extend(getattr(resp, field))
        token = resp.next_page_token
        if not token:
            return merged
        if token in seen:
            raise RuntimeError(f"the arbiter returned page token {token[:40]!r} twice")
        seen.add(token)
        req.page_token = token
