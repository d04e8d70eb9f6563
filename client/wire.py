"""The one place where protobuf meets the SDK's values, shared by the sync and async clients.

Requests are built (and checked) here so both clients send exactly the same bytes, and
responses are turned into frozen dataclasses before anyone outside sees them. The enum
tables are the server's (``hwbp.wire.convert``); only what the client alone has (event
kinds, a lenient reading of values a newer arbiter may add) is here.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Mapping, Sequence

from google.protobuf.message import Message

from hwbp.client.paging import INVENTORY_PAGE_SIZE, LIST_PAGE_SIZE
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
from hwbp.errors import InvalidArgument, InvalidLength, InvalidType
from hwbp.model import AccessType, BpType, Scope, Target
from hwbp.registers import RegisterImage
from hwbp.v1 import (
    arbiter_pb2,
    errors_pb2,
    ptrace_pb2,
    session_pb2,
    simulation_pb2,
    types_pb2,
)
from hwbp.wire import convert

DEFAULT_ENDPOINT = "127.0.0.1:50051"
EXEC_LEN = 8  # exec breakpoints are sizeof(long), as the kernel insists

_KINDS: Mapping[EventKind, types_pb2.EventKind.ValueType] = {
    kind: getattr(types_pb2, f"EVENT_KIND_{kind.name}") for kind in EventKind
}
_KINDS_BACK = {v: k for k, v in _KINDS.items()}


def endpoint_or_default(endpoint: str | None) -> str:
    """The explicit endpoint, else $HWBP_ARBITER, else the loopback default."""
    return endpoint or os.environ.get("HWBP_ARBITER") or DEFAULT_ENDPOINT


def new_id() -> str:
    return uuid.uuid4().hex


# --- enums ----------------------------------------------------------------------------


def bp_type(value: BpType | str) -> BpType:
    """Accept the enum or its spelling ("x", "w", "rw")."""
    if isinstance(value, BpType):
        return value
    try:
        return BpType(value)
    except ValueError:
        raise InvalidType(f"unknown breakpoint type {value!r} (want x, w or rw)") from None


def access_type(value: AccessType | str) -> AccessType:
    if isinstance(value, AccessType):
        return value
    try:
        return AccessType(value)
    except ValueError:
        raise InvalidType(f"unknown access type {value!r} (want r, w or x)") from None


def event_kind(value: EventKind | str) -> EventKind:
    if isinstance(value, EventKind):
        return value
    try:
        return EventKind(value)
    except ValueError:
        known = ", ".join(k.value for k in EventKind if k is not EventKind.UNSPECIFIED)
        raise InvalidArgument(f"unknown event kind {value!r} (want one of {known})") from None


# --- requests -------------------------------------------------------------------------


def target(
    host: str,
    *,
    system: bool,
    cpu: int | None,
    task: int | None,
    pid: int | None = None,
    threads: Sequence[int] = (),
) -> tuple[Target, types_pb2.Target]:
    """The scope follows from what is given; the core's Target checks the shape."""
    if pid is not None:
        if system or task is not None:
            raise InvalidArgument("a process (pid) takes neither system nor a task")
        core = Target(Scope.PROCESS, cpu, pid, tuple(threads))
        return core, convert.target_to(host, core)
    if threads:
        raise InvalidArgument("threads are for a process (pid) only")
    if system:
        scope = Scope.SYSTEM
    elif task is not None:
        scope = Scope.TASK_CPU if cpu is not None else Scope.TASK
    else:
        scope = Scope.CPU
    core = Target(scope, cpu, task)
    return core, convert.target_to(host, core)


def spec(
    addr: int,
    length: int | None,
    type_: BpType | str,
    *,
    enabled: bool,
    kernel: bool,
    tracer_applied: bool = False,
) -> types_pb2.BreakpointSpec:
    kind = bp_type(type_)
    if length is None:
        if kind.is_data:
            raise InvalidLength(f"a {kind.value} breakpoint needs a length (1, 2, 4 or 8)")
        length = EXEC_LEN
    return types_pb2.BreakpointSpec(
        addr=addr,
        len=length,
        type=convert.BP_TYPE_PB[kind],
        enabled=enabled,
        kernel=kernel,
        tracer_applied=tracer_applied,
    )


def reserve_request(
    host: str,
    *,
    system: bool,
    cpu: int | None,
    task: int | None,
    addr: int,
    len: int | None,
    type: BpType | str,
    owner: str,
    kernel: bool,
    enabled: bool,
    session_id: str,
    request_id: str | None,
    idempotency_key: str | None,
    pid: int | None = None,
    threads: Sequence[int] = (),
    tracer_applied: bool = False,
) -> arbiter_pb2.ReserveRequest:
    _, tgt = target(host, system=system, cpu=cpu, task=task, pid=pid, threads=threads)
    return arbiter_pb2.ReserveRequest(
        request_id=request_id or new_id(),
        target=tgt,
        spec=spec(addr, len, type, enabled=enabled, kernel=kernel, tracer_applied=tracer_applied),
        owner=owner,
        session_id=session_id,
        # One key for every retry of this call: the arbiter answers a repeat with the
        # first result, so a lost response can never allocate a second slot.
        idempotency_key=idempotency_key or new_id(),
    )


def release_request(
    reservation_id: str, *, session_id: str, request_id: str | None, expect_owner: str = ""
) -> arbiter_pb2.ReleaseRequest:
    """``expect_owner``: refused unless the reservation has this owner ("": no check)."""
    return arbiter_pb2.ReleaseRequest(
        request_id=request_id or new_id(),
        reservation_id=reservation_id,
        session_id=session_id,
        expect_owner=expect_owner,
    )


def modify_request(
    reservation_id: str,
    *,
    addr: int | None,
    len: int | None,
    type: BpType | str | None,
    enabled: bool | None,
    session_id: str,
    request_id: str | None,
    expect_owner: str = "",
) -> arbiter_pb2.ModifyRequest:
    return arbiter_pb2.ModifyRequest(
        request_id=request_id or new_id(),
        reservation_id=reservation_id,
        session_id=session_id,
        addr=addr,
        len=len,
        type=None if type is None else convert.BP_TYPE_PB[bp_type(type)],
        enabled=enabled,
        expect_owner=expect_owner,
    )


def list_request(
    host: str | None,
    *,
    session_id: str = "",
    owner: str = "",
    page_token: str = "",
    request_id: str | None = None,
    page_size: int = LIST_PAGE_SIZE,
) -> arbiter_pb2.ListRequest:
    return arbiter_pb2.ListRequest(
        request_id=request_id or new_id(),
        host=host or "",
        session_id=session_id,
        owner=owner,
        page_size=page_size,
        page_token=page_token,
    )


def inventory_request(
    host: str | None,
    *,
    page_token: str = "",
    request_id: str | None = None,
    page_size: int = INVENTORY_PAGE_SIZE,
) -> arbiter_pb2.InventoryRequest:
    return arbiter_pb2.InventoryRequest(
        request_id=request_id or new_id(),
        host=host or "",
        page_size=page_size,
        page_token=page_token,
    )


def watch_request(
    host: str | None,
    task: int | None,
    kinds: Iterable[EventKind | str],
    request_id: str | None,
    announce_subscribed: bool = False,
    since: int | None = None,
) -> arbiter_pb2.WatchRequest:
    if since is not None and since < 0:
        raise InvalidArgument(f"since must be a seq >= 0, got {since}", field="since")
    return arbiter_pb2.WatchRequest(
        request_id=request_id or new_id(),
        host=host or "",
        task=task,
        kinds=[_KINDS[event_kind(k)] for k in kinds],
        announce_subscribed=announce_subscribed,
        since=since,
    )


def access_request(
    host: str, cpu: int, addr: int, len: int, type: AccessType | str, request_id: str | None
) -> simulation_pb2.MemoryAccessRequest:
    return simulation_pb2.MemoryAccessRequest(
        request_id=request_id or new_id(),
        host=host,
        cpu=cpu,
        addr=addr,
        len=len,
        type=convert.ACCESS_PB[access_type(type)],
    )


# --- responses ------------------------------------------------------------------------


def _opt(msg: Message, name: str) -> int | None:
    """An optional integer field: None when it is not set."""
    return int(getattr(msg, name)) if msg.HasField(name) else None


def _seconds(msg: Message, name: str) -> float | None:
    """An optional number of seconds: None when it is not set."""
    return float(getattr(msg, name)) if msg.HasField(name) else None


def reservation(msg: types_pb2.Reservation) -> ReservationInfo:
    return ReservationInfo(
        id=msg.id,
        host=msg.target.host,
        scope=convert.SCOPE.get(msg.target.scope, Scope.SYSTEM),
        cpu=_opt(msg.target, "cpu"),
        task=_opt(msg.target, "task"),
        addr=msg.spec.addr,
        len=msg.spec.len,
        type=convert.BP_TYPE.get(msg.spec.type, BpType.EXEC),
        owner=msg.owner,
        enabled=msg.spec.enabled,
        generation=msg.generation,
        session_id=msg.session_id,
        kernel=msg.spec.kernel,
        ptrace_index=msg.ptrace_index if msg.ptrace_index >= 0 else None,
        threads=tuple(msg.target.threads),
        tracer_applied=msg.spec.tracer_applied,
    )


def change(
    msg: arbiter_pb2.ReserveResponse | arbiter_pb2.ReleaseResponse | arbiter_pb2.ModifyResponse,
) -> Change:
    """A change response: the reservation, and which CPUs have it or are yet to."""
    return Change(
        reservation=reservation(msg.reservation),
        applied_cpus=tuple(msg.applied_cpus),
        pending_cpus=tuple(msg.pending_cpus),
    )


def session_summary(msg: session_pb2.SessionSummary) -> SessionSummary:
    return SessionSummary(
        msg.session_id,
        msg.owner,
        msg.ttl_seconds,
        msg.remaining_seconds,
        msg.reservations,
        msg.ending,
        tuple(msg.hosts),
    )


def register_image(msg: types_pb2.RegisterImage) -> RegisterImage:
    return convert.image_from(msg)


def holder(msg: types_pb2.Holder) -> HolderInfo:
    return HolderInfo(
        reservation_id=msg.reservation_id,
        owner=msg.owner,
        scope=convert.SCOPE.get(msg.scope, Scope.SYSTEM),
        cpu=_opt(msg, "cpu"),
        task=_opt(msg, "task"),
    )


def slot_holder(msg: errors_pb2.SlotHolder) -> SlotHolder:
    return SlotHolder(
        reservation_id=msg.reservation_id,
        owner=msg.owner,
        session_id=msg.session_id,
        scope=convert.SCOPE.get(msg.scope, Scope.SYSTEM),
        cpu=_opt(msg, "cpu"),
        task=_opt(msg, "task"),
        age=_seconds(msg, "age_seconds"),
        lease_left=_seconds(msg, "lease_remaining_seconds"),
    )


def cpu_inventory(msg: types_pb2.CpuInventory) -> CpuInfo:
    return CpuInfo(
        host=msg.host,
        cpu=msg.cpu,
        online=msg.online,
        generation=msg.generation,
        acked_generation=msg.acked_generation,
        current_task=_opt(msg, "current_task"),
        reported=register_image(msg.reported),
        expected=register_image(msg.expected),
        mismatch=msg.mismatch,
        used=msg.used,
        slots=msg.slots,
        holders=tuple(holder(h) for h in msg.holders),
        backend=msg.backend,
        detail=msg.detail,
        # An arbiter from before link states sends none: online is all it knew.
        link=msg.link or ("live" if msg.online else "offline"),
        link_reason=msg.link_reason,
        pending=msg.pending,
    )


def hit(msg: types_pb2.Hit) -> HitInfo:
    return HitInfo(
        host=msg.host,
        cpu=msg.cpu,
        task=_opt(msg, "task"),
        reservation_id=msg.reservation_id,
        register=msg.physical_index,
        ptrace_index=msg.ptrace_index if msg.ptrace_index >= 0 else None,
        addr=msg.addr,
        access_addr=msg.access_addr,
        ip=msg.ip,
        dr6=msg.dr6,
        seq=msg.seq,
        tid=_opt(msg, "tid"),
    )


def access_result(msg: simulation_pb2.MemoryAccessResponse) -> AccessResult:
    return AccessResult(hit=msg.hit, dr6=msg.dr6, hits=tuple(hit(h) for h in msg.hits))


def event(msg: types_pb2.Event) -> EventInfo:
    return EventInfo(
        kind=_KINDS_BACK.get(msg.kind, EventKind.UNSPECIFIED),
        host=msg.host,
        cpu=_opt(msg, "cpu"),
        task=_opt(msg, "task"),
        generation=msg.generation,
        request_id=msg.request_id,
        seq=msg.seq,
        reason=msg.reason,
        reservation=reservation(msg.reservation) if msg.HasField("reservation") else None,
        hit=hit(msg.hit) if msg.HasField("hit") else None,
        session=msg.session,
        owner=msg.owner,
        reservation_ids=tuple(msg.reservation_ids),
    )


def trap(msg: ptrace_pb2.Trap) -> TrapInfo:
    return TrapInfo(
        host=msg.host,
        task=msg.task,
        ptrace_index=msg.ptrace_index,
        addr=msg.addr,
        cpu=msg.cpu,
        dr6=msg.dr6,
        ip=msg.ip,
        seq=msg.seq,
    )
