"""The Arbiter service: reserve, release, modify, list, inventory and watch."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator

from grpc.aio import ServicerContext

from hwbp.errors import FailedPrecondition, HwbpError, InvalidArgument, NotOwner
from hwbp.model import BpType, Reservation
from hwbp.registers import RegisterImage
from hwbp.server import paging
from hwbp.server.authz import Action, Target, reservation_target, reserve_target
from hwbp.server.errors import rpc, stream_rpc
from hwbp.server.events import ALL_EVENTS, Item
from hwbp.server.fleet import Fleet, check_open
from hwbp.server.hosts import Edit, Host
from hwbp.server.sessions import SessionTable
from hwbp.server.store.base import id_order
from hwbp.v1 import arbiter_pb2_grpc, types_pb2
from hwbp.v1.arbiter_pb2 import (
    ForgetHostRequest,
    ForgetHostResponse,
    InventoryRequest,
    InventoryResponse,
    ListRequest,
    ListResponse,
    ModifyRequest,
    ModifyResponse,
    ReleaseRequest,
    ReleaseResponse,
    ReserveRequest,
    ReserveResponse,
    WatchRequest,
)
from hwbp.wire import convert

__all__ = ["ArbiterServicer", "check_open", "check_owner", "cpu_inventory"]

log = logging.getLogger("hwbp.server")
LIST_PAGE, LIST_PAGE_MAX = 1000, 10_000
INVENTORY_PAGE, INVENTORY_PAGE_MAX = 256, 4096
INVENTORY_HOLDERS = 20_000  # holders per inventory page, whatever the page size


def fingerprint(request: ReserveRequest) -> str:
    """What an idempotency key is bound to: the request without its ids."""
    body = type(request)()
    body.CopyFrom(request)
    body.request_id = ""
    body.idempotency_key = ""
    return hashlib.sha256(body.SerializeToString(deterministic=True)).hexdigest()


def check_expected_owner(res: Reservation, expect_owner: str) -> None:
    """A caller that names whom it expects to find refuses to touch anyone else's (a stale
    or retried request never hits a newer holder)."""
    if expect_owner and res.owner != expect_owner:
        raise FailedPrecondition(
            f"reservation {res.id} is held by {res.owner or 'anonymous'!r}, not the expected "
            f"{expect_owner!r}; nothing was changed",
            reservation=res.id,
            expected=expect_owner,
            holder=res.owner,
        )


def check_owner(res: Reservation, session_id: str) -> None:
    """Only the session holding a reservation may change it; session-less ones are shared."""
    if res.session is not None and res.session != session_id:
        raise NotOwner(
            f"reservation {res.id} belongs to session {res.session}, not "
            f"{session_id or 'a session-less caller'}",
            reservation=res.id,
            holder=res.owner,
        )
    if res.ptrace_index is not None:
        raise FailedPrecondition(
            f"reservation {res.id} is ptrace debug register {res.ptrace_index} of task "
            f"{res.target.task}; change it through the ptrace service",
            reservation=res.id,
        )


class ArbiterServicer(arbiter_pb2_grpc.ArbiterServicer):
    def __init__(self, fleet: Fleet, sessions: SessionTable) -> None:
        self.fleet = fleet
        self.sessions = sessions

    @rpc
    async def Reserve(
        self,
        request: ReserveRequest,
        context: ServicerContext[ReserveRequest, ReserveResponse],
    ) -> ReserveResponse:
        check_open(self.fleet)
        if not request.HasField("target") or not request.HasField("spec"):
            raise InvalidArgument("target and spec are required", field="target/spec")
        into = self.sessions.sessions.get(request.session_id) if request.session_id else None
        wanted = reserve_target(request, into.owner if into is not None else None)
        who = self.fleet.authz.check(context, request.request_id, Action.RESERVE, wanted)
        host = self.fleet.host(convert.name(request.target.host, "target.host"))
        target = convert.target_from(request.target)
        bp = convert.bp_from(request.spec)
        owner = who.name or convert.name(request.owner, "owner", required=False)
        session = convert.name(request.session_id, "session_id", required=False)
        key = convert.name(request.idempotency_key, "idempotency_key", required=False)
        if session:
            self.sessions.get(session)
        outcome = await host.reserve(
            request.request_id,
            target,
            bp,
            owner=owner,
            session=session or None,
            key=f"{who.name}\0{key}" if key else "",
            fingerprint=fingerprint(request) if key else "",
        )
        reply = ReserveResponse(
            generation=outcome.generation,
            applied_cpus=outcome.applied,
            pending_cpus=outcome.pending,
        )
        convert.reservation_into(reply.reservation, outcome.result, outcome.generation)
        return reply

    @rpc
    async def Release(
        self,
        request: ReleaseRequest,
        context: ServicerContext[ReleaseRequest, ReleaseResponse],
    ) -> ReleaseResponse:
        check_open(self.fleet)
        host, res = self.fleet.locate(convert.name(request.reservation_id, "reservation_id"))
        self.fleet.authz.check(context, request.request_id, Action.RELEASE, reservation_target(res))
        check_expected_owner(res, request.expect_owner)
        check_owner(res, request.session_id)
        outcome = await host.release(request.request_id, res.id)
        reply = ReleaseResponse(
            generation=outcome.generation,
            applied_cpus=outcome.applied,
            pending_cpus=outcome.pending,
        )
        convert.reservation_into(reply.reservation, outcome.result, outcome.generation)
        return reply

    @rpc
    async def Modify(
        self,
        request: ModifyRequest,
        context: ServicerContext[ModifyRequest, ModifyResponse],
    ) -> ModifyResponse:
        check_open(self.fleet)
        host, res = self.fleet.locate(convert.name(request.reservation_id, "reservation_id"))
        moved = reservation_target(res, request.addr if request.HasField("addr") else None)
        self.fleet.authz.check(context, request.request_id, Action.MODIFY, moved)
        check_expected_owner(res, request.expect_owner)
        check_owner(res, request.session_id)
        edit = Edit(
            addr=request.addr if request.HasField("addr") else None,
            length=request.len if request.HasField("len") else None,
            type=convert.bp_type(request.type) if request.HasField("type") else None,
            enabled=request.enabled if request.HasField("enabled") else None,
        )
        outcome = await host.modify(request.request_id, res.id, edit)
        reply = ModifyResponse(
            generation=outcome.generation,
            applied_cpus=outcome.applied,
            pending_cpus=outcome.pending,
        )
        convert.reservation_into(reply.reservation, outcome.result, outcome.generation)
        return reply

    @rpc
    async def List(
        self, request: ListRequest, context: ServicerContext[ListRequest, ListResponse]
    ) -> ListResponse:
        """Committed reservations, in pages ordered by host then admission."""
        self.fleet.authz.check(context, request.request_id, Action.READ, Target(request.host))
        size = paging.page_size(request.page_size, LIST_PAGE, LIST_PAGE_MAX)
        after = paging.decode(request.page_token)
        out: list[types_pb2.Reservation] = []
        for h in self._hosts(request.host):
            if after is not None and h.name < after[0]:
                continue
            start = after[1] if after is not None and h.name == after[0] else None
            for r in h.committed():
                if start is not None and id_order(r.id) <= id_order(start):
                    continue
                if request.session_id and r.session != request.session_id:
                    continue
                if request.owner and r.owner != request.owner:
                    continue
                if len(out) == size:
                    last = out[-1]
                    return ListResponse(
                        reservations=out,
                        next_page_token=paging.encode(last.target.host, last.id),
                    )
                out.append(convert.reservation_to(r, h.generation))
        return ListResponse(reservations=out)

    @rpc
    async def Inventory(
        self,
        request: InventoryRequest,
        context: ServicerContext[InventoryRequest, InventoryResponse],
    ) -> InventoryResponse:
        """CPUs in pages; a page ends early once it holds INVENTORY_HOLDERS holders, so
        one read of a huge host never holds the event loop for long."""
        self.fleet.authz.check(context, request.request_id, Action.READ, Target(request.host))
        size = paging.page_size(request.page_size, INVENTORY_PAGE, INVENTORY_PAGE_MAX)
        after = paging.decode(request.page_token)
        out: list[types_pb2.CpuInventory] = []
        holders = 0
        for h in self._hosts(request.host):
            if after is not None and h.name < after[0]:
                continue
            first = _cpu_after(after[1]) + 1 if after is not None and h.name == after[0] else 0
            for c in range(first, h.ncpus):
                if len(out) == size or holders >= INVENTORY_HOLDERS:
                    last = out[-1]
                    return InventoryResponse(
                        cpus=out, next_page_token=paging.encode(last.host, str(last.cpu))
                    )
                cpu = cpu_inventory(h, c)
                holders += len(cpu.holders)
                out.append(cpu)
        return InventoryResponse(cpus=out)

    @stream_rpc
    async def Watch(
        self, request: WatchRequest, context: ServicerContext[WatchRequest, types_pb2.Event]
    ) -> AsyncIterator[types_pb2.Event]:
        who = self.fleet.authz.check(context, request.request_id, Action.READ, Target(request.host))
        if request.host:
            self.fleet.host(request.host)
        kinds = set(request.kinds)
        task = request.task if request.HasField("task") else None

        def accept(ev: Item) -> bool:
            if not isinstance(ev, types_pb2.Event):
                return False
            if request.host and ev.host != request.host:
                return False
            if kinds and ev.kind not in kinds:
                return False
            if task is not None:
                own = ev.task if ev.HasField("task") else ev.reservation.target.task
                return bool(own == task)
            return True

        # Replayed change events come from the log, later ones from the subscription:
        # both taken in this one step, so none falls between them or comes twice.
        backlog = self.fleet.changes.since(request.since) if request.HasField("since") else []
        start = self.fleet.bus.change_seq
        sub = self.fleet.bus.subscribe(
            accept,
            frozenset(kinds) if kinds else ALL_EVENTS,
            host=request.host or None,
            identity=who.name,
        )
        try:
            if request.announce_subscribed:  # subscribed: every later event reaches us
                # Its seq: the stream is complete after it (a resuming watcher's start).
                yield types_pb2.Event(
                    kind=types_pb2.EVENT_KIND_SUBSCRIBED,
                    host=request.host,
                    seq=request.since if request.HasField("since") else start,
                )
            for kept in backlog:
                if accept(kept):
                    yield kept
            while True:
                event = await sub.get()
                if isinstance(event, types_pb2.Event):  # what accept() took
                    yield event
        finally:
            self.fleet.bus.unsubscribe(sub)

    @rpc
    async def ForgetHost(
        self,
        request: ForgetHostRequest,
        context: ServicerContext[ForgetHostRequest, ForgetHostResponse],
    ) -> ForgetHostResponse:
        name = convert.name(request.host, "host")
        target = Target(name, name=f"host {name}")
        self.fleet.authz.check(context, request.request_id, Action.HOST_FORGET, target)
        check_open(self.fleet)
        gone = await self.fleet.forget(name)
        return ForgetHostResponse(host=name, ncpus=gone.ncpus, generation=gone.generation)

    def _hosts(self, name: str) -> list[Host]:
        if name:
            return [self.fleet.host(name)]
        return [self.fleet.hosts[n] for n in sorted(self.fleet.hosts)]


def _cpu_after(token_cpu: str) -> int:
    if not token_cpu.isdigit():
        raise InvalidArgument("page_token is not one this arbiter issued", field="page_token")
    return int(token_cpu)


def cpu_inventory(host: Host, cpu: int) -> types_pb2.CpuInventory:
    """The seed's /proc interface: one CPU, reported against expected, with its holders."""
    channel = host.channels[cpu]
    link, link_reason = host.link_state(cpu)
    expected = host.expected_image(cpu)
    committed = host.holders(cpu)
    reported = channel.image if channel is not None else None
    mismatch = (
        channel is not None
        and reported is not None
        and (
            _perf_differs(reported, committed)
            if channel.backend == "perf"
            else _differs(reported, expected)
        )
    )
    holders = [
        types_pb2.Holder(
            reservation_id=r.id,
            owner=r.owner,
            scope=convert.SCOPE_PB[r.target.scope],
            cpu=r.target.cpu,
            task=r.target.task,
        )
        for r in committed
    ]
    return types_pb2.CpuInventory(
        host=host.name,
        cpu=cpu,
        online=host.live_channel(cpu) is not None,
        generation=channel.sent_generation if channel else 0,
        acked_generation=channel.acked_generation if channel else 0,
        current_task=reported.current_task if reported else None,
        reported=convert.image_to(reported),
        expected=convert.image_to(expected),
        mismatch=mismatch,
        used=host.used(cpu, committed),
        slots=host.profile.registers,
        holders=holders,
        backend=host.backends[cpu],
        detail=channel.detail if channel else "offline",
        link=link.value,
        link_reason=link_reason,
        pending=cpu in host.pipeline.pending_cpus(),
    )


def _perf_differs(reported: RegisterImage, holders: list[Reservation]) -> bool:
    """A real CPU's image is what the kernel accepted, not a register read: every
    CPU-bound breakpoint must be there, and nothing the ledger does not know."""
    ids = {s for s in reported.slots if s is not None}
    known = {r.id for r in holders}
    cpu_bound = {r.id for r in holders if r.target.cpu_bound and r.bp.enabled}
    return not (ids <= known and cpu_bound <= ids)


def _differs(reported: RegisterImage, expected: RegisterImage) -> bool:
    """Placement may differ (stable vs fresh); the installed set and DR7 fields may not."""
    from hwbp.dr7 import decode

    def installed(img: RegisterImage) -> set[tuple[str, int, tuple[int, BpType] | None]]:
        fields = decode(img.dr7)
        out = set()
        for i, slot in enumerate(img.slots):
            f = fields[i]
            if slot is not None:
                out.add((slot, img.dr[i], (f.length, f.type) if f is not None else None))
        return out

    try:
        return installed(reported) != installed(expected)
    except HwbpError:
        return True
