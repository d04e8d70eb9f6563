"""The synchronous SDK: ``Client``, sessions with a keep-alive, reservation handles, tracers.

    with Client() as c, c.session(ttl=10) as s:
        with s.reserve("h1", cpu=0, addr=0x1000, len=4, type="w") as r:
            ...  # released on exit; everything the session holds goes when it closes

Errors are the typed ``hwbp.errors`` classes (decoded by ``client.errors``).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import grpc

from hwbp.client import paging, wire
from hwbp.client.errors import from_rpc_error
from hwbp.client.handles import ReservationHandle, Session, Tracer
from hwbp.client.retry import MUTATE_TIMEOUT, NO_RETRY, READ_TIMEOUT, SESSION_TIMEOUT, RetryPolicy
from hwbp.client.values import AccessResult, Change, CpuInfo, EventInfo, EventKind, ReservationInfo
from hwbp.errors import HwbpError, ReservationNotFound
from hwbp.model import AccessType, BpType
from hwbp.registers import RegisterImage
from hwbp.v1 import (
    arbiter_pb2_grpc,
    ptrace_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
    simulation_pb2,
    simulation_pb2_grpc,
)
from hwbp.wire.tls import TlsConfig, channel

T = TypeVar("T")
M = TypeVar("M")


class Client:
    """A connection to one arbiter. Cheap to create; close it (or use ``with``)."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        tls: TlsConfig | None = None,
    ) -> None:
        """``tls``: client certificate, key and CA; default $HWBP_TLS_*, else plaintext."""
        self.endpoint = wire.endpoint_or_default(endpoint)
        self.retry = retry or RetryPolicy()
        self.tls = tls if tls is not None else TlsConfig.resolve()
        self._channel = channel(self.endpoint, self.tls)
        self._arbiter = arbiter_pb2_grpc.ArbiterStub(self._channel)
        self._sessions = session_pb2_grpc.SessionsStub(self._channel)
        self._ptrace = ptrace_pb2_grpc.PtraceStub(self._channel)
        self._sim = simulation_pb2_grpc.SimulationStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------

    def _call(
        self,
        method: Callable[..., Any],
        request: Any,
        *,
        timeout: float,
        retry: bool,
        gone: type[HwbpError] | None = None,
    ) -> Any:
        """One unary call with a deadline; transient failures retried when ``retry``.

        ``gone``: an error that, on a retried attempt, means an earlier attempt already
        did the work (the release went through but its answer was lost): return None.
        """
        attempts = 0
        for attempt in (self.retry if retry else NO_RETRY).sync():
            with attempt:
                attempts += 1
                try:
                    return method(request, timeout=timeout)
                except grpc.RpcError as e:
                    err = from_rpc_error(e)
                    if gone is not None and attempts > 1 and isinstance(err, gone):
                        return None
                    raise err from None
        raise AssertionError("tenacity re-raises the last failure")

    def _stream(self, call: Any, convert: Callable[[M], T], timeout: float | None) -> Iterator[T]:
        """Iterate a server stream; a deadline we set ourselves ends it quietly."""
        try:
            for msg in call:
                yield convert(msg)
        except grpc.RpcError as e:
            if timeout is not None and e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return
            raise from_rpc_error(e) from None
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
    ) -> ReservationHandle:
        """Reserve a debug register; with no session it persists until released."""
        req = wire.reserve_request(
            host,
            system=system,
            cpu=cpu,
            task=task,
            addr=addr,
            len=len,
            type=type,
            owner=owner,
            kernel=kernel,
            enabled=enabled,
            session_id=session_id,
            request_id=request_id,
            idempotency_key=idempotency_key,
        )
        # Safe to retry: the idempotency key makes a repeat return the first result.
        resp = self._call(self._arbiter.Reserve, req, timeout=MUTATE_TIMEOUT, retry=True)
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
        resp = self._call(
            self._arbiter.Release,
            req,
            timeout=MUTATE_TIMEOUT,
            retry=True,
            gone=ReservationNotFound,
        )
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
        # Not retried: a lost answer followed by a repeat would bump the generation twice
        # and could race another client's modify in between.
        resp = self._call(self._arbiter.Modify, req, timeout=MUTATE_TIMEOUT, retry=False)
        return wire.change(resp)

    def list(
        self,
        host: str | None = None,
        *,
        session_id: str = "",
        request_id: str | None = None,
        page_size: int = paging.LIST_PAGE_SIZE,
    ) -> builtins.list[ReservationInfo]:
        """Every reservation (of ``host``, of the session), however many pages it takes
        (``page_size`` per call; the arbiter may cap it)."""
        rid = request_id or wire.new_id()

        def page(token: str) -> paging.Page[ReservationInfo]:
            req = wire.list_request(
                host, session_id=session_id, page_token=token, request_id=rid, page_size=page_size
            )
            resp = self._call(self._arbiter.List, req, timeout=READ_TIMEOUT, retry=True)
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
            resp = self._call(self._arbiter.Inventory, req, timeout=READ_TIMEOUT, retry=True)
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
    ) -> Iterator[EventInfo]:
        """Events as they happen; ``timeout`` ends the stream quietly after that many seconds."""
        # No deadline unless asked: a watch is meant to last as long as its reader does.
        req = wire.watch_request(host, task, kinds, request_id)
        return self._stream(self._arbiter.Watch(req, timeout=timeout), wire.event, timeout)

    # --- simulation -------------------------------------------------------------------

    def context_switch(
        self, host: str, cpu: int, task: int | None, *, request_id: str | None = None
    ) -> RegisterImage:
        """Make ``task`` current on a simulated CPU (None: idle); returns its registers."""
        req = simulation_pb2.ContextSwitchRequest(
            request_id=request_id or wire.new_id(), host=host, cpu=cpu, task=task
        )
        resp = self._call(self._sim.ContextSwitch, req, timeout=MUTATE_TIMEOUT, retry=False)
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
        """A memory access by the CPU's current task; not retried (a hit is an event)."""
        req = wire.access_request(host, cpu, addr, len, type, request_id)
        resp = self._call(self._sim.MemoryAccess, req, timeout=MUTATE_TIMEOUT, retry=False)
        return wire.access_result(resp)

    def exit_task(self, host: str, task: int, *, request_id: str | None = None) -> int:
        """The task exited: its breakpoints and ptrace state go. Returns how many."""
        req = simulation_pb2.ExitTaskRequest(
            request_id=request_id or wire.new_id(), host=host, task=task
        )
        resp = self._call(self._sim.ExitTask, req, timeout=MUTATE_TIMEOUT, retry=False)
        return int(resp.released)

    # --- sessions and ptrace ----------------------------------------------------------

    def session(self, ttl: float = 10.0, owner: str = "") -> Session:
        """Open a leased session; use it as a context manager so it closes."""
        req = session_pb2.OpenSessionRequest(request_id=wire.new_id(), ttl_seconds=ttl, owner=owner)
        # Not retried: a lost answer would leave an orphan session (harmless, it expires,
        # but a repeat would not return the same one).
        info = self._call(self._sessions.OpenSession, req, timeout=SESSION_TIMEOUT, retry=False)
        return Session(self, info.session_id, info.ttl_seconds or ttl, info.owner or owner)

    def ptrace(self, host: str, task: int) -> Tracer:
        """A tracer outside any session: pokes persist until ``flush()`` (as hwbpctl does)."""
        return Tracer(self, host, task, session_id="")
