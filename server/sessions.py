"""Client sessions with leases, and the Sessions service.

A lease is renewed by each keep-alive ping. When pings stop (a crash, a cut network)
the reaper ends the session after its TTL and releases everything it held, as closing
a perf fd or a traced task exiting would.

Expiry never waits for anything unrelated: each expired session is ended by a task of
its own, and a session is released on all its hosts at once, so a host whose agent does
not answer (it costs one ack timeout before it is fenced) delays only what is on that
host. A release or a ledger write that fails is logged and retried a second later; the
session keeps refusing keep-alives meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from grpc.aio import ServicerContext

from hwbp.errors import HwbpError, InvalidArgument, SessionNotFound
from hwbp.server import paging
from hwbp.server.authz import Action, Peer, Target
from hwbp.server.errors import Malformed, abort, rpc, well_formed
from hwbp.server.fleet import Fleet
from hwbp.v1 import session_pb2_grpc
from hwbp.v1.session_pb2 import (
    CloseSessionRequest,
    CloseSessionResponse,
    KeepAliveRequest,
    KeepAliveResponse,
    ListSessionsRequest,
    ListSessionsResponse,
    OpenSessionRequest,
    SessionInfo,
    SessionSummary,
)
from hwbp.wire import convert

log = logging.getLogger("hwbp.server")
MIN_TTL, MAX_TTL = 0.5, 3600.0
REAP_EVERY = 0.1  # seconds; expiry frees slots within TTL + this
RETRY_END = 1.0  # seconds before a session whose end failed is tried again
SESSIONS_PAGE, SESSIONS_PAGE_MAX = 1000, 10_000


@dataclass
class Session:
    id: str
    owner: str
    ttl: float
    expires_at: float
    ending: bool = False  # being released: keep-alives no longer renew it


class SessionTable:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.sessions: dict[str, Session] = {}
        self.on_open: Callable[[Session], Awaitable[None]] | None = None  # durable record
        self.on_end: Callable[[str], Awaitable[None]] | None = None
        self.ending: dict[str, asyncio.Task[int]] = {}  # sessions being ended, by id

    async def open(self, ttl: float, owner: str) -> Session:
        """A new session, durable before it is used (raises LedgerWriteFailed if not)."""
        if not MIN_TTL <= ttl <= MAX_TTL:
            raise InvalidArgument(
                f"ttl_seconds must be in {MIN_TTL}..{MAX_TTL}, got {ttl}", field="ttl_seconds"
            )
        sid = "s-" + uuid.uuid4().hex[:16]
        if self.on_open is not None:
            await self.on_open(Session(sid, owner, ttl, self.clock() + ttl))
        session = Session(sid, owner, ttl, self.clock() + ttl)  # the lease starts now
        self.sessions[sid] = session
        return session

    def get(self, sid: str) -> Session:
        try:
            return self.sessions[sid]
        except KeyError:
            raise SessionNotFound(
                f"session {sid!r} does not exist or has expired", session=sid
            ) from None

    def renew(self, sid: str) -> Session:
        session = self.get(sid)
        if session.ending:
            raise SessionNotFound(f"session {sid!r} has expired", session=sid)
        session.expires_at = self.clock() + session.ttl
        return session

    def expired(self) -> list[Session]:
        now = self.clock()
        return [s for s in self.sessions.values() if s.expires_at <= now]

    def remove(self, sid: str) -> None:
        self.sessions.pop(sid, None)


def summaries(
    fleet: Fleet, table: SessionTable, owner: str = "", after: str = ""
) -> list[SessionSummary]:
    """The open sessions after id ``after`` in id order (of ``owner`` if given), each with
    its lease and what it holds, counted from the committed ledger of every host."""
    held: dict[str, int] = {}
    hosts: dict[str, set[str]] = {}
    for host in fleet.hosts.values():
        for res in host.committed():
            if res.session:
                held[res.session] = held.get(res.session, 0) + 1
                hosts.setdefault(res.session, set()).add(host.name)
        for att in host.attachments.values():
            if att.session:
                hosts.setdefault(att.session, set()).add(host.name)
    now = table.clock()
    return [
        SessionSummary(
            session_id=s.id,
            owner=s.owner,
            ttl_seconds=s.ttl,
            remaining_seconds=max(0.0, s.expires_at - now),
            reservations=held.get(s.id, 0),
            ending=s.ending,
            hosts=sorted(hosts.get(s.id, ())),
        )
        for s in sorted(table.sessions.values(), key=lambda s: s.id)
        if s.id > after and (not owner or s.owner == owner)
    ]


async def end_session(fleet: Fleet, table: SessionTable, sid: str, reason: str) -> int:
    """Release everything a session holds on every host; returns how many were released.

    The session stops accepting keep-alives at once, but is forgotten (and its durable
    record deleted) only once every host released its breakpoints and that deletion is
    written; if a host or the ledger could not, this raises why (what was released stays
    released) and the reaper tries again a second later. Ending a session that is already
    being ended joins that attempt.
    """
    return await asyncio.shield(_start_end(fleet, table, sid, reason))


def _start_end(fleet: Fleet, table: SessionTable, sid: str, reason: str) -> asyncio.Task[int]:
    running = table.ending.get(sid)
    if running is None:
        running = asyncio.get_running_loop().create_task(_end(fleet, table, sid, reason))
        table.ending[sid] = running

        def done(task: asyncio.Task[int]) -> None:
            table.ending.pop(sid, None)
            err = None if task.cancelled() else task.exception()
            if err is not None and not isinstance(err, HwbpError):  # a bug: say where
                log.error("session %s: ending it failed", sid, exc_info=err)

        running.add_done_callback(done)
    return running


async def _end(fleet: Fleet, table: SessionTable, sid: str, reason: str) -> int:
    session = table.sessions.get(sid)
    if session is None:
        return 0
    session.ending = True
    try:
        return await _release_all(fleet, table, session, reason)
    except Exception:
        session.expires_at = table.clock() + RETRY_END
        raise


async def _release_all(fleet: Fleet, table: SessionTable, session: Session, reason: str) -> int:
    sid = session.id
    hosts = [host for host in fleet.hosts.values() if host.holds_session(sid)]
    results = await asyncio.gather(
        *(host.release_session(sid, reason, session.owner) for host in hosts),
        return_exceptions=True,
    )
    released, failure = 0, None
    for host, result in zip(hosts, results, strict=True):
        if isinstance(result, BaseException):
            failure = failure or result
            log.error("session %s: releasing on host %s failed: %s", sid, host.name, result)
        else:
            released += result
    if failure is None and table.on_end is not None:
        try:
            await table.on_end(sid)
        except Exception as err:
            failure = err
            log.error("session %s: its end could not be written: %s", sid, err)
    if failure is not None:  # tried again by the reaper; a closing caller is told why
        session.expires_at = table.clock() + RETRY_END
        raise failure
    table.remove(sid)
    log.info("session %s ended (%s): %d released", sid, reason, released)
    return released


async def reaper(fleet: Fleet, table: SessionTable) -> None:
    """End each expired session in a task of its own, so none waits for another."""
    while True:
        await asyncio.sleep(REAP_EVERY)
        for session in table.expired():
            if session.id not in table.ending:
                _start_end(fleet, table, session.id, "lease expired")


class SessionsServicer(session_pb2_grpc.SessionsServicer):
    def __init__(self, fleet: Fleet, table: SessionTable) -> None:
        self.fleet = fleet
        self.table = table

    @rpc
    async def OpenSession(
        self, request: OpenSessionRequest, context: ServicerContext[OpenSessionRequest, SessionInfo]
    ) -> SessionInfo:
        who = self.fleet.authz.check(context, request.request_id, Action.SESSION_OPEN, Target())
        owner = who.name or convert.name(request.owner, "owner", required=False)
        session = await self.table.open(request.ttl_seconds, owner)
        log.info(
            "request %s: session %s opened (ttl %.1fs, owner %r)",
            request.request_id,
            session.id,
            session.ttl,
            owner,
        )
        return SessionInfo(session_id=session.id, ttl_seconds=session.ttl, owner=owner)

    def _guard(
        self, context: Peer, request: KeepAliveRequest | CloseSessionRequest, action: Action
    ) -> None:
        known = self.table.sessions.get(request.session_id)
        owner = known.owner if known is not None else None
        target = Target(owner=owner, name=request.session_id)
        self.fleet.authz.check(context, request.request_id, action, target)

    async def KeepAlive(
        self,
        request_iterator: AsyncIterator[KeepAliveRequest | Malformed],
        context: ServicerContext[KeepAliveRequest, KeepAliveResponse],
    ) -> AsyncIterator[KeepAliveResponse]:
        async for sent in request_iterator:
            try:
                ping = well_formed(sent)
                self._guard(context, ping, Action.SESSION_KEEPALIVE)
                session = self.table.renew(ping.session_id)
            except HwbpError as err:
                await abort(context, err, sent.request_id)
            yield KeepAliveResponse(
                session_id=session.id,
                remaining_seconds=max(0.0, session.expires_at - self.table.clock()),
            )

    @rpc
    async def CloseSession(
        self,
        request: CloseSessionRequest,
        context: ServicerContext[CloseSessionRequest, CloseSessionResponse],
    ) -> CloseSessionResponse:
        self.table.get(request.session_id)
        self._guard(context, request, Action.SESSION_CLOSE)
        released = await end_session(self.fleet, self.table, request.session_id, "closed")
        return CloseSessionResponse(released=released)

    @rpc
    async def ListSessions(
        self,
        request: ListSessionsRequest,
        context: ServicerContext[ListSessionsRequest, ListSessionsResponse],
    ) -> ListSessionsResponse:
        """Open sessions in pages, in id order (ids are random, so the order is stable
        across pages and says nothing else)."""
        self.fleet.authz.check(context, request.request_id, Action.READ, Target())
        size = paging.page_size(request.page_size, SESSIONS_PAGE, SESSIONS_PAGE_MAX)
        after = paging.decode(request.page_token)
        found = summaries(self.fleet, self.table, request.owner, after[1] if after else "")
        if len(found) <= size:
            return ListSessionsResponse(sessions=found)
        page = found[:size]
        return ListSessionsResponse(
            sessions=page, next_page_token=paging.encode("", page[-1].session_id)
        )
