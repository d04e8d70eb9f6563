"""What an ``AsyncClient`` hands out: reservation handles, leased sessions, tracers.

The asyncio twins of ``client.handles``; the keep-alive is a task instead of a thread.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from hwbp.client import wire
from hwbp.client.errors import from_rpc_error
from hwbp.client.retry import MUTATE_TIMEOUT, READ_TIMEOUT, SESSION_TIMEOUT
from hwbp.client.values import Change, ReservationFields, ReservationInfo, TrapInfo
from hwbp.errors import HwbpError, NotAttached, ReservationNotFound, SessionNotFound
from hwbp.model import BpType
from hwbp.v1 import ptrace_pb2, session_pb2

if TYPE_CHECKING:
    from hwbp.client.aio import AsyncClient


class AsyncReservationHandle(ReservationFields):
    """A reservation you hold; ``async with`` releases it. ``change`` as on the sync
    handle: the last answer, with the CPUs it is pending on."""

    def __init__(self, client: AsyncClient, change: Change) -> None:
        self._client = client
        self._info = change.reservation
        self.change = change
        self.released = False

    @property
    def info(self) -> ReservationInfo:
        return self._info

    @property
    def applied_cpus(self) -> tuple[int, ...]:
        return self.change.applied_cpus

    @property
    def pending_cpus(self) -> tuple[int, ...]:
        return self.change.pending_cpus

    async def release(self, *, expect_owner: str = "") -> Change | None:
        done = await self._client.release(
            self.id, session_id=self.session_id, expect_owner=expect_owner
        )
        self.released = True
        if done is not None:
            self.change = done
        return done

    async def modify(
        self,
        *,
        addr: int | None = None,
        len: int | None = None,
        type: BpType | str | None = None,
        enabled: bool | None = None,
        expect_owner: str = "",
    ) -> Change:
        self.change = await self._client.modify(
            self.id,
            addr=addr,
            len=len,
            type=type,
            enabled=enabled,
            session_id=self.session_id,
            expect_owner=expect_owner,
        )
        self._info = self.change.reservation
        return self.change

    async def __aenter__(self) -> AsyncReservationHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self.released:
            with contextlib.suppress(ReservationNotFound):
                await self.release()


class AsyncSession:
    """A leased session kept alive by a task that pings every ttl/3."""

    def __init__(self, client: AsyncClient, session_id: str, ttl: float, owner: str) -> None:
        self._client = client
        self.id = session_id
        self.ttl = ttl
        self.owner = owner
        self.expired = False
        self.remaining: float | None = None
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(
            self._keep_alive(), name=f"hwbp-keepalive-{session_id}"
        )

    async def _pings(self) -> AsyncIterator[session_pb2.KeepAliveRequest]:
        while True:
            yield session_pb2.KeepAliveRequest(request_id=wire.new_id(), session_id=self.id)
            await asyncio.sleep(self.ttl / 3)

    async def _keep_alive(self) -> None:
        while True:
            call = self._client._sessions.KeepAlive(self._pings())
            try:
                async for resp in call:
                    self.remaining = resp.remaining_seconds
            except grpc.RpcError as e:
                if isinstance(from_rpc_error(e), SessionNotFound):
                    self.expired = True
                    return
            finally:
                call.cancel()
            # The stream broke: reconnect soon enough to renew the lease before it lapses.
            await asyncio.sleep(min(self.ttl / 6, 1.0))

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
    ) -> AsyncReservationHandle:
        return await self._client.reserve(
            host,
            system=system,
            cpu=cpu,
            task=task,
            addr=addr,
            len=len,
            type=type,
            owner=owner or self.owner,
            kernel=kernel,
            enabled=enabled,
            request_id=request_id,
            idempotency_key=idempotency_key,
            session_id=self.id,
        )

    async def list(self) -> builtins.list[ReservationInfo]:
        return await self._client.list(session_id=self.id)

    async def attach(self, host: str, pid: int) -> AsyncTracer:
        req = ptrace_pb2.AttachRequest(
            request_id=wire.new_id(), session_id=self.id, host=host, task=pid
        )
        await self._client._call(
            self._client._ptrace.Attach, req, timeout=MUTATE_TIMEOUT, retry=False
        )
        return AsyncTracer(self._client, host, pid, session_id=self.id)

    async def close(self) -> int:
        """Stop the keep-alive and release everything the session holds."""
        if self._closing:
            return 0
        self._closing = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self.expired:
            return 0
        req = session_pb2.CloseSessionRequest(request_id=wire.new_id(), session_id=self.id)
        resp = await self._client._call(
            self._client._sessions.CloseSession,
            req,
            timeout=SESSION_TIMEOUT,
            retry=True,
            gone=SessionNotFound,
        )
        return 0 if resp is None else int(resp.released)

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            await self.close()
        except HwbpError:
            if exc is None:
                raise  # otherwise keep the caller's error; the lease expires on its own


class AsyncTracer:
    """Async PTRACE_POKEUSER / PEEKUSER on one task's u_debugreg."""

    def __init__(self, client: AsyncClient, host: str, task: int, *, session_id: str) -> None:
        self._client = client
        self.host = host
        self.task = task
        self.session_id = session_id

    async def poke(self, reg: int, value: int, *, request_id: str | None = None) -> int:
        req = ptrace_pb2.PokeUserRequest(
            request_id=request_id or wire.new_id(),
            session_id=self.session_id,
            host=self.host,
            task=self.task,
            reg=reg,
            value=value,
        )
        resp = await self._client._call(
            self._client._ptrace.PokeUser, req, timeout=MUTATE_TIMEOUT, retry=False
        )
        return int(resp.generation)

    async def peek(self, reg: int, *, request_id: str | None = None) -> int:
        req = ptrace_pb2.PeekUserRequest(
            request_id=request_id or wire.new_id(),
            session_id=self.session_id,
            host=self.host,
            task=self.task,
            reg=reg,
        )
        resp = await self._client._call(
            self._client._ptrace.PeekUser, req, timeout=READ_TIMEOUT, retry=True
        )
        return int(resp.value)

    async def detach(self, *, request_id: str | None = None) -> int:
        """PTRACE_DETACH: the task keeps its breakpoints, DR6 and DR7 (and their slots)
        until ``flush()``, its exit, or the end of this session; returns 0 (released)."""
        req = ptrace_pb2.DetachRequest(
            request_id=request_id or wire.new_id(),
            session_id=self.session_id,
            host=self.host,
            task=self.task,
        )
        resp = await self._client._call(
            self._client._ptrace.Detach, req, timeout=MUTATE_TIMEOUT, retry=True, gone=NotAttached
        )
        return 0 if resp is None else int(resp.released)

    async def flush(self, *, request_id: str | None = None) -> int:
        """flush_ptrace_hw_breakpoint(), as the task's exit or exec would: its ptrace
        breakpoints are released, DR6 and DR7 cleared, and it is no longer traced.
        Returns how many were released."""
        req = ptrace_pb2.FlushRequest(
            request_id=request_id or wire.new_id(),
            session_id=self.session_id,
            host=self.host,
            task=self.task,
        )
        resp = await self._client._call(
            self._client._ptrace.Flush, req, timeout=MUTATE_TIMEOUT, retry=True, gone=NotAttached
        )
        return 0 if resp is None else int(resp.released)

    def traps(self, *, timeout: float | None = None) -> AsyncIterator[TrapInfo]:
        req = ptrace_pb2.TrapsRequest(request_id=wire.new_id(), host=self.host, task=self.task)
        call = self._client._ptrace.Traps(req, timeout=timeout)
        return self._client._stream(call, wire.trap, timeout)

    async def __aenter__(self) -> AsyncTracer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(NotAttached):
            await self.detach()
