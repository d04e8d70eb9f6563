# Generated from client/aio.py by scripts/sync_sdk.py: edit that file, then `make sdk`.
"""The SDK's client, written once: ``AsyncClient`` here, ``Client`` generated from it.

    async with AsyncClient() as c, await c.session(ttl=10) as s:
        r = await s.reserve("h1", cpu=0, addr=0x1000, len=4, type="w")
        async for ev in c.watch("h1", timeout=5): ...

    with Client() as c, c.session(ttl=10) as s:
        with s.reserve("h1", cpu=0, addr=0x1000, len=4, type="w") as r: ...

Why one async source and a generated sync twin (as httpcore does with unasync), rather
than a synchronous facade over the async client: the sync client stays plainly
synchronous (a blocking gRPC channel, no event loop or thread behind each client), so it
works inside programs that run their own loop, after fork, and under Ctrl-C; both
surfaces keep real signatures a type checker reads; and a method is written once, here
or in ``aio_handles.py``, then ``make sdk`` regenerates ``sdk.py`` and ``handles.py``
(``make test`` fails when they drift). What a call may do (its deadline, whether a
repeat is safe) is not written here at all but in one table, ``client.calls``; what
differs between the two flavours is ``client.concurrency``.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from hwbp.client import calls, paging, wire
from hwbp.client.concurrency import SyncChannel, SyncStream, sync_attempts
from hwbp.client.endpoints import NOT_LEADER, Endpoints
from hwbp.client.errors import RemoteError, from_rpc_error
from hwbp.client.handles import ReservationHandle, Session, Tracer
from hwbp.client.resume import RECONNECT, Resumer, StateListener, reconnectable
from hwbp.client.retry import FAILOVER_RETRY, Deadlines, RetryPolicy
from hwbp.client.values import (
    AccessResult,
    Change,
    CpuInfo,
    EventInfo,
    EventKind,
    ForgottenHost,
    ReservationInfo,
    SessionSummary,
)
from hwbp.errors import HwbpError
from hwbp.model import AccessType, BpType
from hwbp.registers import RegisterImage
from hwbp.v1 import arbiter_pb2, session_pb2, simulation_pb2
from hwbp.wire.tls import TlsConfig, channel

T = TypeVar("T")
M = TypeVar("M")
Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


class Client:
    """A connection to one arbiter. Cheap to create; close it (or use it with ``with``)."""

    def __init__(
        self,
        endpoint: str | Sequence[str] | None = None,
        *,
        retry: RetryPolicy | None = None,
        tls: TlsConfig | None = None,
        deadlines: Deadlines | None = None,
    ) -> None:
        """``endpoint``: "HOST:PORT", or the replicas of a replicated arbiter as
        "a:1,b:2,c:3" or a list (calls follow the leader); default $HWBP_ARBITER.
        ``tls``: client certificate, key and CA; default $HWBP_TLS_*, else plaintext.
        ``deadlines``: seconds per kind of call (``retry.Deadlines``' defaults)."""
        self.endpoints = Endpoints.of(endpoint)
        self.endpoint = self.endpoints.current
        # Several replicas: ride out a failover (a lease ttl and an election) on retries.
        self.retry = retry or (FAILOVER_RETRY if self.endpoints.several else RetryPolicy())
        self.deadlines = deadlines or Deadlines()
        self.tls = tls if tls is not None else TlsConfig.resolve()
        self.closed = False
        self._retired: list[SyncChannel] = []  # channels to replicas we moved away from
        self._channel = channel(self.endpoint, self.tls)
        self._stubs = calls.stubs(self._channel)

    def close(self) -> None:
        self.closed = True
        for ch in [*self._retired, self._channel]:
            ch.close()

    def _follow(self, err: HwbpError) -> None:
        """A follower named the leader, or a replica is gone: use the next one
        (``client.endpoints`` decides). The old channel is closed with the client, not
        now: a session's keep-alive may still be reading from it."""
        reason = err.remote_reason if isinstance(err, RemoteError) else ""
        metadata = err.metadata if isinstance(err, RemoteError) else {}
        if reason in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            reason = ""  # a transport failure: no ErrorInfo from an arbiter
        target = self.endpoints.after(reason, metadata)
        if target is not None and target != self.endpoint:
            self._retired.append(self._channel)
            self.endpoint = target
            self._channel = channel(target, self.tls)
            self._stubs = calls.stubs(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing: every call goes through one of these two ---------------------------

    def _call(self, rpc: calls.Rpc[Req, Resp], request: Req) -> Resp:
        """One unary call under ``rpc``'s rules (see ``_call_or_gone``) that has no
        ``gone`` error, so it always answers."""
        resp = self._call_or_gone(rpc, request)
        if resp is None:
            raise AssertionError(f"{rpc.method} answered nothing: call it with _call_or_gone")
        return resp

    def _call_or_gone(self, rpc: calls.Rpc[Req, Resp], request: Req) -> Resp | None:
        """One unary call under ``rpc``'s rules: its deadline, transient failures retried
        when it is safe to, and None when a repeat finds ``rpc.gone`` (done already).
        A follower's NOT_LEADER refusal is repeated once on the leader it names, even
        for a call never retried: it was refused before anything was done."""
        try:
            return self._attempts(rpc, request)
        except RemoteError as err:
            if rpc.retry or err.remote_reason != NOT_LEADER or not self.endpoints.several:
                raise
        return self._attempts(rpc, request)

    def _attempts(self, rpc: calls.Rpc[Req, Resp], request: Req) -> Resp | None:
        timeout = calls.timeout(rpc, self.deadlines)
        attempts = 0
        for attempt in sync_attempts(self.retry, rpc.retry):
            with attempt:
                attempts += 1
                method = getattr(self._stubs[rpc.service], rpc.method)  # the leader may move
                try:
                    resp: Resp = method(request, timeout=timeout)
                    return resp
                except grpc.RpcError as e:
                    err = from_rpc_error(e)
                    self._follow(err)
                    if rpc.gone is not None and attempts > 1 and isinstance(err, rpc.gone):
                        return None
                    raise err from None
        raise AssertionError("tenacity re-raises the last failure")

    def _open(
        self,
        rpc: calls.Rpc[Req, Resp],
        request: Req | Iterator[Req],
        timeout: float | None = None,
    ) -> SyncStream[Resp]:
        """Start a streaming call (its answers are read with ``_stream``)."""
        call: SyncStream[Resp] = getattr(self._stubs[rpc.service], rpc.method)(
            request, timeout=timeout
        )
        return call

    def _stream(
        self, call: SyncStream[M], convert: Callable[[M], T], timeout: float | None
    ) -> Iterator[T]:
        """Iterate a server stream; a deadline the caller asked for ends it quietly."""
        try:
            for msg in call:
                yield convert(msg)
        except grpc.RpcError as e:
            err = from_rpc_error(e)
            if timeout is not None and err.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return
            raise err from None
        finally:
            call.cancel()

    # --- reservations -----------------------------------------------------------------

    def reserve(
        self,
        host: str,
        *,
        system: bool = False,
        cpu: int | None = None,
        task: int | None = None,
        addr: int,
        len: int | None = None,
        type: BpType | str,
        owner: str = "",
        kernel: bool = False,
        enabled: bool = True,
        request_id: str | None = None,
        idempotency_key: str | None = None,
        session_id: str = "",
        pid: int | None = None,
        threads: Sequence[int] = (),
        tracer_applied: bool = False,
    ) -> ReservationHandle:
        """Reserve a debug register; with no session it persists until released.

        ``tracer_applied``: the caller arms the register itself (a debugger's own perf
        event or ptrace write); the agents account the slot but do not program it.

        ``pid``: every thread of that process, present and future (``threads``: the tids
        it has now, e.g. ``hwbp.wire.procfs.threads_of(pid)`` on its host; empty: its
        main thread alone is counted until the agent covers the rest)."""
        req = wire.reserve_request(
            host,
            system=system,
            cpu=cpu,
            task=task,
            pid=pid,
            threads=threads,
            addr=addr,
            len=len,
            type=type,
            owner=owner,
            kernel=kernel,
            enabled=enabled,
            session_id=session_id,
            request_id=request_id,
            idempotency_key=idempotency_key,
            tracer_applied=tracer_applied,
        )
        resp = self._call(calls.RESERVE, req)
        return ReservationHandle(self, wire.change(resp))

    def release(
        self,
        id: str,
        *,
        session_id: str = "",
        request_id: str | None = None,
        expect_owner: str = "",
    ) -> Change | None:
        """Release; None when a retry found it already gone (our first attempt did it).

        ``expect_owner``: refused unless the reservation belongs to that owner, so a
        stale id that now names someone else's reservation is never released.
        """
        req = wire.release_request(
            id, session_id=session_id, request_id=request_id, expect_owner=expect_owner
        )
        resp = self._call_or_gone(calls.RELEASE, req)
        return None if resp is None else wire.change(resp)

    def modify(
        self,
        id: str,
        *,
        addr: int | None = None,
        len: int | None = None,
        type: BpType | str | None = None,
        enabled: bool | None = None,
        session_id: str = "",
        request_id: str | None = None,
        expect_owner: str = "",
    ) -> Change:
        """Change a reservation in place; on failure it stays as it was."""
        req = wire.modify_request(
            id,
            addr=addr,
            len=len,
            type=type,
            enabled=enabled,
            session_id=session_id,
            request_id=request_id,
            expect_owner=expect_owner,
        )
        return wire.change(self._call(calls.MODIFY, req))

    def list(
        self,
        host: str | None = None,
        *,
        session_id: str = "",
        owner: str = "",
        request_id: str | None = None,
        page_size: int = paging.LIST_PAGE_SIZE,
    ) -> builtins.list[ReservationInfo]:
        """Every reservation (of ``host``, of the session, of ``owner``), however many pages
        it takes (``page_size`` per call; the arbiter may cap it)."""
        rid = request_id or wire.new_id()

        def page(token: str) -> paging.Page[ReservationInfo]:
            req = wire.list_request(
                host,
                session_id=session_id,
                owner=owner,
                page_token=token,
                request_id=rid,
                page_size=page_size,
            )
            resp = self._call(calls.LIST, req)
            return [wire.reservation(r) for r in resp.reservations], resp.next_page_token

        return paging.collect(page, key=lambda r: r.id)

    def inventory(
        self,
        host: str | None = None,
        *,
        request_id: str | None = None,
        page_size: int = paging.INVENTORY_PAGE_SIZE,
    ) -> builtins.list[CpuInfo]:
        """Every CPU (of ``host``), however many pages it takes."""
        rid = request_id or wire.new_id()

        def page(token: str) -> paging.Page[CpuInfo]:
            req = wire.inventory_request(
                host, page_token=token, request_id=rid, page_size=page_size
            )
            resp = self._call(calls.INVENTORY, req)
            return [wire.cpu_inventory(c) for c in resp.cpus], resp.next_page_token

        return paging.collect(page, key=lambda c: (c.host, c.cpu))

    def watch(
        self,
        host: str | None = None,
        task: int | None = None,
        kinds: Iterable[EventKind | str] = (),
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        announce_subscribed: bool = False,
        since: int | None = None,
        resume: bool = False,
        on_state: StateListener | None = None,
        reconnect: RetryPolicy = RECONNECT,
    ) -> Iterator[EventInfo]:
        """Events as they happen; ``timeout`` ends the stream quietly after that many
        seconds (none by default: a watch lasts as long as its reader).

        ``announce_subscribed``: the first event is ``EventKind.SUBSCRIBED``, sent once
        every later event reaches this watch; wait for it before doing what you want
        to see (an arbiter too old to know the flag sends no such event).

        ``since``: first replay the kept change events numbered after this seq (the
        last ``EventInfo.seq`` you saw); ``SeqCompacted`` if some are no longer kept.
        ``resume``: ride out an arbiter restart or failover: reconnect with ``reconnect``'s
        jittered backoff and resume after the last seq delivered, so no event is lost or
        repeated; ``on_state`` hears one line per change (lost, reconnected).
        """
        if resume:
            state = Resumer(since, on_state)
            return self._resumed(host, task, kinds, timeout, announce_subscribed, state, reconnect)
        req = wire.watch_request(host, task, kinds, request_id, announce_subscribed, since)
        return self._stream(self._open(calls.WATCH, req, timeout), wire.event, timeout)

    def _resumed(
        self,
        host: str | None,
        task: int | None,
        kinds: Iterable[EventKind | str],
        timeout: float | None,
        announce: bool,
        state: Resumer,
        policy: RetryPolicy,
    ) -> Iterator[EventInfo]:
        """A watch that reconnects: tenacity waits between attempts to subscribe (open the
        stream and read its SUBSCRIBED event); events are read outside it. The first
        subscription gets the client's own retries (a wrong address fails as any call
        does); once it streamed, ``policy``'s."""
        kinds = builtins.list(kinds)
        first = True
        opening = replace(self.retry, when=reconnectable)
        end = None if timeout is None else time.monotonic() + timeout  # of the whole watch
        while True:
            events: Iterator[EventInfo] | None = None
            subscribed: EventInfo | None = None
            for attempt in sync_attempts(opening if first else policy, True):
                with attempt:
                    left = None if end is None else end - time.monotonic()
                    if left is not None and left <= 0:
                        return
                    req = wire.watch_request(host, task, kinds, None, True, state.since)
                    events = self._stream(self._open(calls.WATCH, req, left), wire.event, left)
                    try:
                        subscribed = events.__next__()
                    except StopIteration:
                        return  # the caller's timeout ended it before anything came
                    except RemoteError as err:
                        self._follow(err)
                        if reconnectable(err) and not first:
                            state.lost(self.endpoint, err)
                        raise
            if events is None or subscribed is None:
                raise AssertionError("tenacity re-raises the last failure")
            state.back(self.endpoint)
            state.delivered(subscribed.seq)
            if announce and first:
                yield subscribed
            first = False
            try:
                for ev in events:
                    state.delivered(ev.seq)
                    yield ev
                return  # the caller's timeout ended it
            except RemoteError as err:
                if not reconnectable(err):
                    raise
                self._follow(err)
                state.lost(self.endpoint, err)

    # --- simulation -------------------------------------------------------------------

    def forget_host(self, host: str, *, request_id: str | None = None) -> ForgottenHost | None:
        """Retire ``host`` (admin only): refused (``HostBusy``, naming them) while it has
        reservations, ptrace attachments or agents; a later agent registers it afresh.
        None when a retry found it already gone (our first attempt did it)."""
        req = arbiter_pb2.ForgetHostRequest(request_id=request_id or wire.new_id(), host=host)
        resp = self._call_or_gone(calls.FORGET_HOST, req)
        if resp is None:
            return None
        return ForgottenHost(resp.host, resp.ncpus, resp.generation)

    def context_switch(
        self, host: str, cpu: int, task: int | None, *, request_id: str | None = None
    ) -> RegisterImage:
        """Make ``task`` current on a simulated CPU (None: idle); returns its registers."""
        req = simulation_pb2.ContextSwitchRequest(
            request_id=request_id or wire.new_id(), host=host, cpu=cpu, task=task
        )
        resp = self._call(calls.CONTEXT_SWITCH, req)
        return wire.register_image(resp.image)

    def access(
        self,
        host: str,
        cpu: int,
        addr: int,
        len: int,
        type: AccessType | str,
        *,
        request_id: str | None = None,
    ) -> AccessResult:
        """A memory access by the CPU's current task (a hit is an event: never repeated)."""
        req = wire.access_request(host, cpu, addr, len, type, request_id)
        return wire.access_result(self._call(calls.MEMORY_ACCESS, req))

    def exit_task(self, host: str, task: int, *, request_id: str | None = None) -> int:
        """The task exited: its breakpoints and ptrace state go. Returns how many."""
        req = simulation_pb2.ExitTaskRequest(
            request_id=request_id or wire.new_id(), host=host, task=task
        )
        resp = self._call(calls.EXIT_TASK, req)
        return int(resp.released)

    # --- sessions and ptrace ----------------------------------------------------------

    def session(self, ttl: float = 10.0, owner: str = "") -> Session:
        """Open a leased session; use it as a context manager so it closes."""
        req = session_pb2.OpenSessionRequest(request_id=wire.new_id(), ttl_seconds=ttl, owner=owner)
        info = self._call(calls.OPEN_SESSION, req)
        return Session(self, info.session_id, info.ttl_seconds or ttl, info.owner or owner)

    def sessions(
        self,
        owner: str = "",
        *,
        request_id: str | None = None,
        page_size: int = paging.LIST_PAGE_SIZE,
    ) -> builtins.list[SessionSummary]:
        """Every open session (of ``owner``): its lease and how much it holds."""
        rid = request_id or wire.new_id()

        def page(token: str) -> paging.Page[SessionSummary]:
            req = session_pb2.ListSessionsRequest(
                request_id=rid, owner=owner, page_size=page_size, page_token=token
            )
            resp = self._call(calls.LIST_SESSIONS, req)
            return [wire.session_summary(s) for s in resp.sessions], resp.next_page_token

        return paging.collect(page, key=lambda s: s.session_id)

    def ptrace(self, host: str, task: int) -> Tracer:
        """A tracer outside any session: pokes persist until ``flush()``."""
        return Tracer(self, host, task, session_id="")
