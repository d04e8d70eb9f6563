"""Every RPC the SDK makes, with its deadline, whether a repeat is safe, and why.

One table for both clients: ``AsyncClient`` and the ``Client`` generated from it look a
call up here, so the rule for a method (say, whether a lost Release answer may be tried
again) is written and reviewed once. A new RPC gets a row here; a unit test checks that
every method of the services has one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

import grpc
from google.protobuf.message import Message

from hwbp.client.retry import Deadlines
from hwbp.errors import (
    HostNotFound,
    HwbpError,
    NotAttached,
    ReservationNotFound,
    SessionNotFound,
)
from hwbp.v1 import (
    arbiter_pb2,
    arbiter_pb2_grpc,
    ptrace_pb2,
    ptrace_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
    simulation_pb2,
    simulation_pb2_grpc,
    types_pb2,
)


class Deadline(Enum):
    """Which of the client's deadlines (``retry.Deadlines``) a call gets."""

    READ = "read"  # answered from the arbiter's memory
    MUTATE = "mutate"  # waits for every connected agent of the host to acknowledge
    SESSION = "session"  # opening or closing a lease (closing releases what it held)
    STREAM = "stream"  # lasts as long as its reader; only a deadline the caller asks for


Req = TypeVar("Req", bound=Message, covariant=True)
Resp = TypeVar("Resp", bound=Message, covariant=True)


@dataclass(frozen=True, slots=True)
class Rpc(Generic[Req, Resp]):
    """One method of one service, and how the SDK calls it: it takes a ``Req`` and
    answers ``Resp`` (or a stream of them)."""

    service: str  # the gRPC service's name in protos/hwbp/v1
    method: str
    deadline: Deadline
    retry: bool  # transport failures (UNAVAILABLE, DEADLINE_EXCEEDED) are tried again
    why: str  # why a repeat is (not) safe: the reason a reviewer checks
    # On a repeated attempt this error means an earlier attempt already did the work
    # (its answer was lost): the call returns None instead of raising.
    gone: type[HwbpError] | None = None


RESERVE: Rpc[arbiter_pb2.ReserveRequest, arbiter_pb2.ReserveResponse] = Rpc(
    "Arbiter",
    "Reserve",
    Deadline.MUTATE,
    retry=True,
    why="one idempotency key for every attempt: the arbiter answers a repeat with the first "
    "result (or joins it while it is in flight), so a lost answer never takes a second slot",
)
RELEASE: Rpc[arbiter_pb2.ReleaseRequest, arbiter_pb2.ReleaseResponse] = Rpc(
    "Arbiter",
    "Release",
    Deadline.MUTATE,
    retry=True,
    gone=ReservationNotFound,
    why="a repeat that finds the reservation gone means the first attempt released it",
)
MODIFY: Rpc[arbiter_pb2.ModifyRequest, arbiter_pb2.ModifyResponse] = Rpc(
    "Arbiter",
    "Modify",
    Deadline.MUTATE,
    retry=False,
    why="a repeat after a lost answer would bump the generation twice and could undo "
    "another client's modify made in between",
)
LIST: Rpc[arbiter_pb2.ListRequest, arbiter_pb2.ListResponse] = Rpc(
    "Arbiter", "List", Deadline.READ, retry=True, why="a read"
)
INVENTORY: Rpc[arbiter_pb2.InventoryRequest, arbiter_pb2.InventoryResponse] = Rpc(
    "Arbiter", "Inventory", Deadline.READ, retry=True, why="a read"
)
FORGET_HOST: Rpc[arbiter_pb2.ForgetHostRequest, arbiter_pb2.ForgetHostResponse] = Rpc(
    "Arbiter",
    "ForgetHost",
    Deadline.MUTATE,
    retry=True,
    gone=HostNotFound,
    why="a repeat that finds the host unknown means the first attempt forgot it",
)
WATCH: Rpc[arbiter_pb2.WatchRequest, types_pb2.Event] = Rpc(
    "Arbiter",
    "Watch",
    Deadline.STREAM,
    retry=False,
    why="a stream: a reconnect would silently skip the events sent in between",
)
OPEN_SESSION: Rpc[session_pb2.OpenSessionRequest, session_pb2.SessionInfo] = Rpc(
    "Sessions",
    "OpenSession",
    Deadline.SESSION,
    retry=False,
    why="a repeat would open a second session; the orphan of a lost answer expires by itself",
)
KEEP_ALIVE: Rpc[session_pb2.KeepAliveRequest, session_pb2.KeepAliveResponse] = Rpc(
    "Sessions",
    "KeepAlive",
    Deadline.STREAM,
    retry=False,
    why="the session's worker reopens it itself, soon enough to renew the lease",
)
CLOSE_SESSION: Rpc[session_pb2.CloseSessionRequest, session_pb2.CloseSessionResponse] = Rpc(
    "Sessions",
    "CloseSession",
    Deadline.SESSION,
    retry=True,
    gone=SessionNotFound,
    why="a repeat that finds the session gone means the first attempt closed it",
)
LIST_SESSIONS: Rpc[session_pb2.ListSessionsRequest, session_pb2.ListSessionsResponse] = Rpc(
    "Sessions", "ListSessions", Deadline.READ, retry=True, why="a read"
)
ATTACH: Rpc[ptrace_pb2.AttachRequest, ptrace_pb2.AttachResponse] = Rpc(
    "Ptrace",
    "Attach",
    Deadline.MUTATE,
    retry=False,
    why="a repeat after a lost answer is refused as ALREADY_ATTACHED, hiding the success",
)
DETACH: Rpc[ptrace_pb2.DetachRequest, ptrace_pb2.DetachResponse] = Rpc(
    "Ptrace",
    "Detach",
    Deadline.MUTATE,
    retry=True,
    gone=NotAttached,
    why="a repeat that finds the task detached means the first attempt detached it",
)
FLUSH: Rpc[ptrace_pb2.FlushRequest, ptrace_pb2.FlushResponse] = Rpc(
    "Ptrace",
    "Flush",
    Deadline.MUTATE,
    retry=True,
    gone=NotAttached,
    why="a repeat that finds nothing left to flush means the first attempt flushed it",
)
POKE_USER: Rpc[ptrace_pb2.PokeUserRequest, ptrace_pb2.PokeUserResponse] = Rpc(
    "Ptrace",
    "PokeUser",
    Deadline.MUTATE,
    retry=False,
    why="a DR7 poke repeated after a lost answer could reorder with a later poke",
)
PEEK_USER: Rpc[ptrace_pb2.PeekUserRequest, ptrace_pb2.PeekUserResponse] = Rpc(
    "Ptrace", "PeekUser", Deadline.READ, retry=True, why="a read"
)
TRAPS: Rpc[ptrace_pb2.TrapsRequest, ptrace_pb2.Trap] = Rpc(
    "Ptrace",
    "Traps",
    Deadline.STREAM,
    retry=False,
    why="a stream: a reconnect would silently skip the traps sent in between",
)
CONTEXT_SWITCH: Rpc[simulation_pb2.ContextSwitchRequest, simulation_pb2.ContextSwitchResponse] = (
    Rpc(
        "Simulation",
        "ContextSwitch",
        Deadline.MUTATE,
        retry=False,
        why="a repeat could switch back in a task another caller switched out in between",
    )
)
MEMORY_ACCESS: Rpc[simulation_pb2.MemoryAccessRequest, simulation_pb2.MemoryAccessResponse] = Rpc(
    "Simulation",
    "MemoryAccess",
    Deadline.MUTATE,
    retry=False,
    why="an access that hits is an event: a repeat would report the hit twice",
)
EXIT_TASK: Rpc[simulation_pb2.ExitTaskRequest, simulation_pb2.ExitTaskResponse] = Rpc(
    "Simulation",
    "ExitTask",
    Deadline.MUTATE,
    retry=False,
    why="a repeat would answer 0 released and hide what the first attempt released",
)

TABLE: dict[tuple[str, str], Rpc[Message, Message]] = {
    (r.service, r.method): r
    for r in (
        RESERVE,
        RELEASE,
        MODIFY,
        LIST,
        INVENTORY,
        FORGET_HOST,
        WATCH,
        OPEN_SESSION,
        KEEP_ALIVE,
        CLOSE_SESSION,
        LIST_SESSIONS,
        ATTACH,
        DETACH,
        FLUSH,
        POKE_USER,
        PEEK_USER,
        TRAPS,
        CONTEXT_SWITCH,
        MEMORY_ACCESS,
        EXIT_TASK,
    )
}

# The generated stub class of each service; it takes a sync or a grpc.aio channel alike.
STUBS: dict[str, Callable[..., object]] = {
    "Arbiter": arbiter_pb2_grpc.ArbiterStub,
    "Sessions": session_pb2_grpc.SessionsStub,
    "Ptrace": ptrace_pb2_grpc.PtraceStub,
    "Simulation": simulation_pb2_grpc.SimulationStub,
}


def stubs(channel: grpc.Channel | grpc.aio.Channel) -> dict[str, object]:
    """One stub per service on ``channel``, keyed by the service's name."""
    return {name: make(channel) for name, make in STUBS.items()}


def timeout(rpc: Rpc[Message, Message], deadlines: Deadlines) -> float | None:
    """The deadline of one attempt of ``rpc`` (None: a stream, no deadline of ours)."""
    if rpc.deadline is Deadline.STREAM:
        return None
    return float(getattr(deadlines, rpc.deadline.value))
