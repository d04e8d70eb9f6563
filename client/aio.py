"""The asyncio SDK: the same surface as ``client.sdk`` on ``grpc.aio``.

    async with AsyncClient() as c, await c.session(ttl=10) as s:
        r = await s.reserve("h1", cpu=0, addr=0x1000, len=4, type="w")
        async for ev in c.watch("h1", timeout=5): ...

Requests and values come from ``client.wire``, so both clients send the same bytes.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

import grpc

from hwbp.client import paging, wire
from hwbp.client.aio_handles import AsyncReservationHandle, AsyncSession, AsyncTracer
from hwbp.client.errors import from_rpc_error
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
from hwbp.wire.tls import TlsConfig, aio_channel

T = TypeVar("T")
M = TypeVar("M")


class AsyncClient:
    """An asyncio connection to one arbiter; ``async with`` closes the channel."""

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
        self._channel = aio_channel(self.endpoint, self.tls)
        self._arbiter = arbiter_pb2_grpc.ArbiterStub(self._channel)
        self._sessions = session_pb2_grpc.SessionsStub(self._channel)
        self._ptrace = ptrace_pb2_grpc.PtraceStub(self._channel)
        self._sim = simulation_pb2_grpc.SimulationStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(
        self,
        method: Callable[..., Any],
        request: Any,
        *,
        timeout: float,
        retry: bool,
        gone: type[HwbpError] | None = None,
    ) -> Any:
        """As ``Client._call``: deadline, transient retries, ``gone`` means done already."""
        attempts = 0
        async for attempt in (self.retry if retry else NO_RETRY).aio():
            with attempt:
                attempts += 1
                try:
                    return await method(request, timeout=timeout)
                except grpc.RpcError as e:
                    err = from_rpc_error(e)
                    if gone is not None and attempts > 1 and isinstance(err, gone):
                        return None
                    raise err from None
        raise AssertionError("tenacity re-raises the last failure")

    async def _stream(
        self, call: Any, convert: Callable[[M], T], timeout: float | None
    ) -> AsyncIterator[T]:
        try:
            async for msg in call:
                yield convert(msg)
        except grpc.RpcError as e:
            if timeout is not None and from_rpc_error(e).code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return
            raise from_rpc_error(e) from None
        finally:
            call.cancel()

    # --- reservations -----------------------------------------------------------------

    async def reserve(
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
    ) -> AsyncReservationHandle:
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
        resp = await self._call(self._arbiter.Reserve, req, timeout=MUTATE_TIMEOUT, retry=True)
        return AsyncReservationHandle(self, wire.change(resp))

    async def release(
        self,
        id: str,
        *,
        session_id: str = "",
        request_id: str | None = None,
        expect_owner: str = "",
    ) -> Change | None:
        """As ``Client.release``: None when a retry found it already gone."""
        req = wire.release_request(
            id, session_id=session_id, request_id=request_id, expect_owner=expect_owner
        )
        resp = await self._call(
            self._arbiter.Release, req, timeout=MUTATE_TIMEOUT, retry=True, gone=ReservationNotFound
        )
        return None if resp is None else wire.change(resp)

    async def modify(
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
        resp = await self._call(self._arbiter.Modify, req, timeout=MUTATE_TIMEOUT, retry=False)
        return wire.change(resp)

    async def list(
        self,
        host: str | None = None,
        *,
        session_id: str = "",
        request_id: str | None = None,
        page_size: int = paging.LIST_PAGE_SIZE,
    ) -> builtins.list[ReservationInfo]:
        rid = request_id or wire.new_id()

        async def page(token: str) -> paging.Page[ReservationInfo]:
            req = wire.list_request(
                host, session_id=session_id, page_token=token, request_id=rid, page_size=page_size
            )
            resp = await self._call(self._arbiter.List, req, timeout=READ_TIMEOUT, retry=True)
            return [wire.reservation(r) for r in resp.reservations], resp.next_page_token

        return await paging.collect_aio(page, key=lambda r: r.id)

    async def inventory(
        self,
        host: str | None = None,
        *,
        request_id: str | None = None,
        page_size: int = paging.INVENTORY_PAGE_SIZE,
    ) -> builtins.list[CpuInfo]:
        rid = request_id or wire.new_id()

        async def page(token: str) -> paging.Page[CpuInfo]:
            req = wire.inventory_request(
                host, page_token=token, request_id=rid, page_size=page_size
            )
            resp = await self._call(self._arbiter.Inventory, req, timeout=READ_TIMEOUT, retry=True)
            return [wire.cpu_inventory(c) for c in resp.cpus], resp.next_page_token

        return await paging.collect_aio(page, key=lambda c: (c.host, c.cpu))

    def watch(
        self,
        host: str | None = None,
        task: int | None = None,
        kinds: Iterable[EventKind | str] = (),
        *,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> AsyncIterator[EventInfo]:
        """``async for`` over events; ``timeout`` ends the stream quietly."""
        req = wire.watch_request(host, task, kinds, request_id)
        return self._stream(self._arbiter.Watch(req, timeout=timeout), wire.event, timeout)

    # --- simulation -------------------------------------------------------------------

    async def context_switch(
        self, host: str, cpu: int, task: int | None, *, request_id: str | None = None
    ) -> RegisterImage:
        req = simulation_pb2.ContextSwitchRequest(
            request_id=request_id or wire.new_id(), host=host, cpu=cpu, task=task
        )
        resp = await self._call(self._sim.ContextSwitch, req, timeout=MUTATE_TIMEOUT, retry=False)
        return wire.register_image(resp.image)

    async def access(
        self,
        host: str,
        cpu: int,
        addr: int,
        len: int,
        type: AccessType | str,
        *,
        request_id: str | None = None,
    ) -> AccessResult:
        req = wire.access_request(host, cpu, addr, len, type, request_id)
        resp = await self._call(self._sim.MemoryAccess, req, timeout=MUTATE_TIMEOUT, retry=False)
        return wire.access_result(resp)

    async def exit_task(self, host: str, task: int, *, request_id: str | None = None) -> int:
        req = simulation_pb2.ExitTaskRequest(
            request_id=request_id or wire.new_id(), host=host, task=task
        )
        resp = await self._call(self._sim.ExitTask, req, timeout=MUTATE_TIMEOUT, retry=False)
        return int(resp.released)

    # --- sessions and ptrace ----------------------------------------------------------

    async def session(self, ttl: float = 10.0, owner: str = "") -> AsyncSession:
        """Open a leased session: ``async with await client.session() as s``."""
        req = session_pb2.OpenSessionRequest(request_id=wire.new_id(), ttl_seconds=ttl, owner=owner)
        info = await self._call(
            self._sessions.OpenSession, req, timeout=SESSION_TIMEOUT, retry=False
        )
        return AsyncSession(self, info.session_id, info.ttl_seconds or ttl, info.owner or owner)

    def ptrace(self, host: str, task: int) -> AsyncTracer:
        """A tracer outside any session: pokes persist until ``flush()``."""
        return AsyncTracer(self, host, task, session_id="")
