"""Every host the arbiter knows, reservation ids, hits, and the idempotency keys.

Reservation ids are r1, r2, ... from one counter that only grows: each committed batch
writes it to the ledger (``next_id``), so after a restart ids continue where they
stopped and a released id is never issued again. Idempotency keys live in one
``KeyTable`` that every host's pipeline consults; committed ones are durable too.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from hwbp.arch import UNREPORTED_FEATURES, X86_64, ArchProfile, HostFeatures
from hwbp.errors import (
    Draining,
    HostBusy,
    HostNotFound,
    HostShapeConflict,
    ReservationNotFound,
)
from hwbp.keys import KeyTable
from hwbp.model import Reservation
from hwbp.pipeline import Keys, Persist
from hwbp.ptrace import on_hit, peek
from hwbp.server.authz import Authz
from hwbp.server.event_log import EventLog
from hwbp.server.events import EventBus
from hwbp.server.host_shell import HostShell
from hwbp.server.hosts import Host
from hwbp.server.store.base import EventRecord
from hwbp.v1 import ptrace_pb2, types_pb2

log = logging.getLogger("hwbp.server")


@dataclass(frozen=True)
class ChangeEvents:
    """A batch's change-log events as the store writes them, and the window's new end."""

    records: Sequence[EventRecord] = ()
    trimmed_through: int = 0


class Fleet:
    def __init__(self, *, ack_timeout: float, profile: ArchProfile = X86_64) -> None:
        self.profile = profile
        self.ack_timeout = ack_timeout
        self.bus = EventBus()
        self.hosts: dict[str, Host] = {}
        self.next_id = 1  # the next reservation is r<next_id>; never goes back
        self.draining = False
        self.paranoid = False
        # A host appeared or its cpu count changed: write its record (in the background).
        self.on_host_created: Callable[[Host], None] | None = None
        self.on_host_forgotten: Callable[[Host], Awaitable[None]] | None = None
        self.on_commit: Callable[[HostShell, Persist, ChangeEvents], Awaitable[None]] | None = None
        self.changes = EventLog()  # numbered change events, replayed to a resuming Watch
        self.keys: Keys = KeyTable()  # idempotency keys, fleet-wide
        self.authz = Authz()  # every servicer's permission hook; allows all until configured

    def reseed_ids(self, start: int) -> None:
        """After a restore: ids continue from the ledger's counter."""
        self.next_id = max(self.next_id, start)

    def new_id(self) -> str:
        rid = f"r{self.next_id}"
        self.next_id += 1
        return rid

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            known = ", ".join(sorted(self.hosts)) or "none"
            raise HostNotFound(
                f"host {name!r} is not known (no agent has said hello for it; known: {known})",
                host=name,
            ) from None

    def ensure_host(
        self,
        name: str,
        ncpus: int,
        features: HostFeatures | None = None,
        *,
        cpu: int | None = None,
    ) -> Host:
        """A hello names the host's CPU count, so CPUs without an agent are known offline,
        and what it offers (``features``). A host restored from the ledger has none
        reported yet, and none is held against a request until an agent says hello.

        Another CPU count than the one known resizes the host (``Host.resize``): more
        CPUs are accepted; fewer are refused with ``HostShrinkBlocked`` while something
        sits on a removed CPU, and the refusal is kept on the CPU whose agent (``cpu``)
        said hello, for the inventory to show."""
        host = self.hosts.get(name)
        if host is None:
            host = Host(
                name,
                ncpus,
                self.profile.with_features(features or UNREPORTED_FEATURES),
                ack_timeout=self.ack_timeout,
                bus=self.bus,
                keys=self.keys,
                writer=self._write,
                new_id=self.new_id,
            )
            host.paranoid = self.paranoid
            if self.on_host_created is not None:
                self.on_host_created(host)
            self.hosts[name] = host
            log.info("host %s appeared with %d cpus", name, ncpus)
        elif host.ncpus != ncpus:
            self._resize(host, ncpus, cpu)
        if features is not None and features != host.profile.features:
            log.info("host %s offers %s (was %s)", name, features, host.profile.features)
            host.profile = host.ledger.profile = host.profile.with_features(features)
        return host

    def _resize(self, host: Host, ncpus: int, cpu: int | None) -> None:
        old = host.ncpus
        try:
            host.resize(ncpus)
        except HostShapeConflict as err:
            if cpu is not None and cpu < host.ncpus:
                host.refusals[cpu] = err.message
            raise
        log.warning("host %s now has %d cpus (it had %d)", host.name, ncpus, old)
        if self.on_host_created is not None:  # its record, with the new count
            self.on_host_created(host)

    async def forget(self, name: str) -> Host:
        """Retire a host: it leaves the inventory and the ledger, so a later agent of that
        name registers it afresh. Refused (``HostBusy``, naming each) while it holds
        reservations or ptrace attachments, has agent streams or a change in flight;
        if the ledger cannot drop it, it stays."""
        host = self.host(name)
        why = host.busy()
        if why:
            raise HostBusy(
                f"host {name} cannot be forgotten: {'; '.join(why)}",
                host=name,
                reservations=",".join(r.id for r in host.ledger) or None,
            )
        del self.hosts[name]
        try:
            if self.on_host_forgotten is not None:
                await self.on_host_forgotten(host)
        except BaseException:
            self.hosts.setdefault(name, host)
            raise
        log.warning("host %s forgotten (%d cpus, generation %d)", name, host.ncpus, host.generation)
        return host

    async def _write(self, host: HostShell, ins: Persist) -> None:
        """Number the batch's change events, write them with it, publish them once it
        is durable (a failed write publishes nothing: its numbers are a gap)."""
        events = host.take_drafts(ins.generation)
        records, trimmed = self.changes.number(events)
        if self.on_commit is not None:
            await self.on_commit(host, ins, ChangeEvents(records, trimmed))
        self.changes.committed(events, trimmed)
        for ev in events:
            self.bus.publish(ev)

    def locate(self, res_id: str) -> tuple[Host, Reservation]:
        for host in self.hosts.values():
            if res_id in host.ledger:
                return host, host.ledger.get(res_id)
        raise ReservationNotFound(f"reservation {res_id!r} does not exist", reservation=res_id)

    # --- hits --------------------------------------------------------------------

    def publish_hit(self, host: Host, cpu: int, hit: types_pb2.Hit) -> types_pb2.Hit:
        """A hit that was a debug exception of its own."""
        return self.publish_hits(host, cpu, [hit])[0]

    def publish_hits(
        self, host: Host, cpu: int, hits: Sequence[types_pb2.Hit]
    ) -> list[types_pb2.Hit]:
        """Name the reservations behind one debug exception's hits (one access may hit
        several breakpoints), publish them, and feed ptrace's DR6.

        exc_debug_user() resets a traced task's virtual DR6 once per exception, then
        ptrace_triggered() ORs in the bit of each ptrace index that fired: the indexes of
        one exception land in DR6 together (DR0 and DR1: 0xffff0ff3), never one by one.
        """
        named = [self._named(host, cpu, hit) for hit in hits]
        fired: dict[int, list[int]] = {}
        for out, traced in named:
            if traced is not None:
                fired.setdefault(traced, []).append(out.ptrace_index)
        for task, indexes in fired.items():
            self._dr6(host, task, indexes)
        for out, traced in named:
            if traced is not None:
                self._trap(host, traced, out)
            ev = types_pb2.Event(
                kind=types_pb2.EVENT_KIND_HIT,
                host=host.name,
                cpu=cpu,
                generation=host.generation,
                seq=self.bus.change_seq,
            )
            if out.HasField("task"):
                ev.task = out.task
            ev.hit.CopyFrom(out)
            self.bus.publish(ev)
        return [out for out, _ in named]

    def _named(self, host: Host, cpu: int, hit: types_pb2.Hit) -> tuple[types_pb2.Hit, int | None]:
        """The hit as published, and the traced task whose ptrace breakpoint it was."""
        out = types_pb2.Hit()
        out.CopyFrom(hit)
        out.host, out.cpu, out.seq = host.name, cpu, self.bus.next_seq()
        res = host.ledger.get(hit.reservation_id) if hit.reservation_id in host.ledger else None
        out.ptrace_index = -1
        if res is None:
            return out, None
        out.addr = res.bp.addr
        if res.ptrace_index is None or res.target.task is None:
            return out, None
        out.ptrace_index = res.ptrace_index
        return out, res.target.task

    def _dr6(self, host: Host, task: int, indexes: list[int]) -> None:
        """One exception's ptrace indexes into the task's virtual DR6. A hit drained after
        a reload disabled its breakpoint cannot have fired under the task's current DR7:
        it is published, but DR6 is left alone."""
        att = host.attachments.get(task)
        if att is None:
            return
        live = [i for i in indexes if (bp := att.state.bps[i]) is not None and bp.enabled]
        if live:
            att.state = on_hit(att.state, *live)
        if len(live) < len(indexes):
            log.info(
                "host %s task %d: hit on ptrace breakpoint(s) %s disabled since; DR6 unchanged",
                host.name,
                task,
                sorted(set(indexes) - set(live)),
            )

    def _trap(self, host: Host, task: int, hit: types_pb2.Hit) -> None:
        att = host.attachments.get(task)
        if att is None:
            return
        self.bus.publish(
            ptrace_pb2.Trap(
                host=host.name,
                task=task,
                ptrace_index=hit.ptrace_index,
                addr=hit.addr,
                cpu=hit.cpu,
                dr6=peek(att.state, 6),
                ip=hit.ip,
                seq=hit.seq,
            )
        )


def by_exception(hits: Sequence[types_pb2.Hit]) -> list[list[types_pb2.Hit]]:
    """An agent's report split into debug exceptions: hits with the same nonzero
    ``exception`` id are one, in report order; a hit without one is its own."""
    groups: list[list[types_pb2.Hit]] = []
    current: dict[int, list[types_pb2.Hit]] = {}
    for hit in hits:
        if not hit.exception:
            groups.append([hit])
        elif hit.exception in current:
            current[hit.exception].append(hit)
        else:
            current[hit.exception] = [hit]
            groups.append(current[hit.exception])
    return groups


def check_open(fleet: Fleet) -> None:
    """Refuse new changes while the arbiter drains."""
    if fleet.draining:
        raise Draining("the arbiter is shutting down and takes no new changes; retry elsewhere")
