"""The Arbiter service: reserve, release, modify, list, inventory and watch."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

from hwbp.errors import Draining, FailedPrecondition, HwbpError, InvalidArgument, NotOwner
from hwbp.model import Reservation
from hwbp_pb import arbiter_pb2, arbiter_pb2_grpc, types_pb2
from server.authz import Action, Target, reservation_target, reserve_target
from server.errors import rpc, stream_rpc
from server.fleet import Fleet
from server.hosts import Host
from server.sessions import SessionTable
from wire import convert

log = logging.getLogger("hwbp.server")


def check_open(fleet: Fleet) -> None:
    if fleet.draining:
        raise Draining("the arbiter is shutting down and takes no new changes; retry elsewhere")


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
    async def Reserve(self, request: Any, context: Any) -> Any:
        check_open(self.fleet)
        rid_req = request.request_id
        if not request.HasField("target") or not request.HasField("spec"):
            raise InvalidArgument("target and spec are required", field="target/spec")
        who = self.fleet.authz.check(context, rid_req, Action.RESERVE, reserve_target(request))
        host = self.fleet.host(convert.name(request.target.host, "target.host"))
        target = convert.target_from(request.target)
        bp = convert.bp_from(request.spec)
        owner = who.name or convert.name(request.owner, "owner", required=False)
        session = convert.name(request.session_id, "session_id", required=False)
        key = convert.name(request.idempotency_key, "idempotency_key", required=False)
        if session:
            self.sessions.get(session)
        again = self.fleet.recall(key)
        if again is not None:
            log.info("request %s: reserve repeated (key %s) -> %s", rid_req, key, again.id)
            return arbiter_pb2.ReserveResponse(
                reservation=convert.reservation_to(again, host.generation),
                generation=host.generation,
            )

        def apply() -> tuple[Reservation, Any]:
            res = Reservation(
                id=self.fleet.new_id(),
                host=host.name,
                target=target,
                bp=bp,
                owner=owner,
                session=session or None,
            )
            host.ledger.reserve(res)
            if key:
                self.fleet.pending_keys[res.id] = key
            return res, host.ledger.affected_cpus(target)

        try:
            res, gen = await host.commit(rid_req, apply)
        except HwbpError as err:
            log.info(
                "request %s: reserve on %s %s refused: %s",
                rid_req,
                host.name,
                target.describe(),
                err.reason,
            )
            raise
        self.fleet.remember(key, host.name, res.id)
        log.info(
            "request %s: reserve %s on %s %s addr=%#x len=%d type=%s -> generation %d",
            rid_req,
            res.id,
            host.name,
            target.describe(),
            bp.addr,
            bp.length,
            bp.type.value,
            gen,
        )
        self._event(host, types_pb2.EVENT_KIND_RESERVED, rid_req, res, gen)
        return arbiter_pb2.ReserveResponse(
            reservation=convert.reservation_to(res, gen), generation=gen
        )

    @rpc
    async def Release(self, request: Any, context: Any) -> Any:
        check_open(self.fleet)
        host, res = self.fleet.locate(convert.name(request.reservation_id, "reservation_id"))
        self.fleet.authz.check(context, request.request_id, Action.RELEASE, reservation_target(res))
        check_owner(res, request.session_id)

        def apply() -> tuple[Reservation, Any]:
            gone = host.ledger.release(res.id)
            return gone, host.ledger.affected_cpus(gone.target)

        gone, gen = await host.commit(request.request_id, apply)
        log.info(
            "request %s: release %s on %s -> generation %d",
            request.request_id,
            res.id,
            host.name,
            gen,
        )
        self._event(host, types_pb2.EVENT_KIND_RELEASED, request.request_id, gone, gen)
        return arbiter_pb2.ReleaseResponse(
            reservation=convert.reservation_to(gone, gen), generation=gen
        )

    @rpc
    async def Modify(self, request: Any, context: Any) -> Any:
        check_open(self.fleet)
        host, res = self.fleet.locate(convert.name(request.reservation_id, "reservation_id"))
        moved = reservation_target(res, request.addr if request.HasField("addr") else None)
        self.fleet.authz.check(context, request.request_id, Action.MODIFY, moved)
        check_owner(res, request.session_id)
        changes: dict[str, Any] = {}
        if request.HasField("addr"):
            changes["addr"] = request.addr
        if request.HasField("len"):
            changes["length"] = request.len
        if request.HasField("type"):
            changes["type"] = convert.bp_type(request.type)
        if request.HasField("enabled"):
            changes["enabled"] = request.enabled
        if not changes:
            raise InvalidArgument("modify names no field to change (addr, len, type, enabled)")

        def apply() -> tuple[Reservation, Any]:
            current = host.ledger.get(res.id)
            new = host.ledger.modify(res.id, dataclasses.replace(current.bp, **changes))
            return new, host.ledger.affected_cpus(new.target)

        new, gen = await host.commit(request.request_id, apply)
        log.info(
            "request %s: modify %s on %s %s -> generation %d",
            request.request_id,
            res.id,
            host.name,
            changes,
            gen,
        )
        self._event(host, types_pb2.EVENT_KIND_MODIFIED, request.request_id, new, gen)
        return arbiter_pb2.ModifyResponse(
            reservation=convert.reservation_to(new, gen), generation=gen
        )

    @rpc
    async def List(self, request: Any, context: Any) -> Any:
        self.fleet.authz.check(context, request.request_id, Action.READ, Target(request.host))
        hosts = self._hosts(request.host)
        out = [
            convert.reservation_to(r, h.generation)
            for h in hosts
            for r in h.ledger
            if not request.session_id or r.session == request.session_id
        ]
        return arbiter_pb2.ListResponse(reservations=out)

    @rpc
    async def Inventory(self, request: Any, context: Any) -> Any:
        self.fleet.authz.check(context, request.request_id, Action.READ, Target(request.host))
        return arbiter_pb2.InventoryResponse(
            cpus=[cpu_inventory(h, c) for h in self._hosts(request.host) for c in range(h.ncpus)]
        )

    @stream_rpc
    async def Watch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.fleet.authz.check(context, request.request_id, Action.READ, Target(request.host))
        if request.host:
            self.fleet.host(request.host)
        kinds = set(request.kinds)
        task = request.task if request.HasField("task") else None

        def accept(ev: Any) -> bool:
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

        sub = self.fleet.bus.subscribe(accept, frozenset(kinds) if kinds else None)
        try:
            while True:
                yield await sub.get()
        finally:
            self.fleet.bus.unsubscribe(sub)

    def _hosts(self, name: str) -> list[Host]:
        if name:
            return [self.fleet.host(name)]
        return [self.fleet.hosts[n] for n in sorted(self.fleet.hosts)]

    def _event(
        self,
        host: Host,
        kind: types_pb2.EventKind,
        request_id: str,
        res: Reservation,
        generation: int,
    ) -> None:
        if not self.fleet.bus.wants(kind):
            return  # nobody watches this kind: build nothing
        ev = types_pb2.Event(
            kind=kind,
            host=host.name,
            generation=generation,  # type: ignore[arg-type]
            request_id=request_id,
            seq=self.fleet.bus.next_seq(),
            task=res.target.task,
            cpu=res.target.cpu,
        )
        ev.reservation.CopyFrom(convert.reservation_to(res, generation))
        self.fleet.bus.publish(ev)


def cpu_inventory(host: Host, cpu: int) -> types_pb2.CpuInventory:
    """The seed's /proc interface: one CPU, reported against expected, with its holders."""
    channel = host.channels[cpu]
    expected = host.expected_image(cpu)
    reported = channel.image if channel is not None else None
    mismatch = (
        channel is not None
        and reported is not None
        and (
            _perf_differs(reported, host.ledger.for_cpu(cpu))
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
        for r in host.ledger.holders(cpu)
    ]
    return types_pb2.CpuInventory(
        host=host.name,
        cpu=cpu,
        online=channel is not None and channel.open,
        generation=channel.sent_generation if channel else 0,
        acked_generation=channel.acked_generation if channel else 0,
        current_task=reported.current_task if reported else None,
        reported=convert.image_to(reported),
        expected=convert.image_to(expected),
        mismatch=mismatch,
        used=host.ledger.used(cpu),
        slots=host.profile.registers,
        holders=holders,
        backend=host.backends[cpu],
        detail=channel.detail if channel else "offline",
    )


def _perf_differs(reported: Any, applying: list[Any]) -> bool:
    """A real CPU's image is what the kernel accepted, not a register read: every
    CPU-bound breakpoint must be there, and nothing the ledger does not know."""
    ids = {s for s in reported.slots if s is not None}
    known = {a.reservation_id for a in applying}
    cpu_bound = {a.reservation_id for a in applying if a.task is None and a.bp.enabled}
    return not (ids <= known and cpu_bound <= ids)


def _differs(reported: Any, expected: Any) -> bool:
    """Placement may differ (stable vs fresh); the installed set and DR7 fields may not."""
    from hwbp.dr7 import decode

    def installed(img: Any) -> set[tuple[str | None, int, Any]]:
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
