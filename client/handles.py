# Generated from client/aio_handles.py by scripts/sync_sdk.py: edit that file, then `make sdk`.
"""What a client hands out: reservation handles, leased sessions, tracers.

Written once, for ``AsyncClient``; ``client/handles.py`` is generated from this file for
the synchronous ``Client`` (see ``client/aio.py`` for why). Calls go through the client's
``_call`` and ``_open``, so deadlines, retries and error decoding stay in one place.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

import grpc

from hwbp.client import calls, wire
from hwbp.client.concurrency import SyncEvent, SyncLock, SyncStream, SyncWorker, log
from hwbp.client.errors import from_rpc_error
from hwbp.client.values import Change, ReservationFields, ReservationInfo, TrapInfo
from hwbp.errors import HwbpError, NotAttached, ReservationNotFound, SessionNotFound
from hwbp.model import BpType
from hwbp.v1 import ptrace_pb2, session_pb2

if TYPE_CHECKING:
    from hwbp.client.sdk import Client

JOIN_TIMEOUT = 5.0  # seconds a closing session waits for its keep-alive worker


class ReservationHandle(ReservationFields):
    """A reservation you hold: fields, ``release()``, ``modify()``; ``with`` releases it.

    ``change`` is what the last reserve, modify or release answered, including the CPUs
    it is still pending on (``pending_cpus``: their agent is offline or fenced).
    """

    def __init__(self, client: Client, change: Change) -> None:
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

    def release(self, *, expect_owner: str = "") -> Change | None:
        done = self._client.release(self.id, session_id=self.session_id, expect_owner=expect_owner)
        self.released = True
        if done is not None:
            self.change = done
        return done

    def modify(
        self,
        *,
        addr: int | None = None,
        len: int | None = None,
        type: BpType | str | None = None,
        enabled: bool | None = None,
        expect_owner: str = "",
    ) -> Change:
        self.change = self._client.modify(
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

    def __enter__(self) -> ReservationHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.released:
            return
        # Already released by someone else or by the session's end: the goal is met.
        with contextlib.suppress(ReservationNotFound):
            self.release()


class Session:
    """A leased session: what it holds is released when it closes or its keep-alive stops.

    A background worker pings every ttl/3, so two pings can be lost before the lease ends.
    """

    def __init__(self, client: Client, session_id: str, ttl: float, owner: str) -> None:
        self._client = client
        self.id = session_id
        self.ttl = ttl
        self.owner = owner
        self.expired = False  # the arbiter forgot the session (lease lapsed)
        self.remaining: float | None = None  # seconds left on the lease at the last ping
        self._closed = False
        self._stop = SyncEvent()
        self._lock = SyncLock()
        self._call: SyncStream[session_pb2.KeepAliveResponse] | None = None
        self._worker = SyncWorker(self._keep_alive, name=f"hwbp-keepalive-{session_id}")

    def _pings(self) -> Iterator[session_pb2.KeepAliveRequest]:
        while True:
            yield session_pb2.KeepAliveRequest(request_id=wire.new_id(), session_id=self.id)
            if self._stop.wait(self.ttl / 3):
                return

    def _keep_alive(self) -> None:
        while not self._stop.is_set() and not self._client.closed:
            with self._lock:
                if self._stop.is_set():
                    return
                self._call = call = self._client._open(calls.KEEP_ALIVE, self._pings())
            try:
                for resp in call:
                    self.remaining = resp.remaining_seconds
            except grpc.RpcError as e:
                if self._stop.is_set():
                    return
                err = from_rpc_error(e)
                if isinstance(err, SessionNotFound):
                    self.expired = True
                    return
                self._client._follow(err)  # replicas: the leader may have moved
            except Exception:  # a bug of ours must not end the lease: report, go on
                log.exception("keep-alive of session %s failed; reconnecting", self.id)
            # The stream broke (arbiter restart, network blip): reconnect soon enough
            # to renew the lease before it lapses.
            self._stop.wait(min(self.ttl / 6, 1.0))

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
        pid: int | None = None,
        threads: Sequence[int] = (),
        tracer_applied: bool = False,
    ) -> ReservationHandle:
        """Like ``Client.reserve``, but released with the session at the latest."""
        return self._client.reserve(
            host,
            system=system,
            cpu=cpu,
            task=task,
            pid=pid,
            threads=threads,
            addr=addr,
            len=len,
            type=type,
            owner=owner or self.owner,
            kernel=kernel,
            enabled=enabled,
            request_id=request_id,
            idempotency_key=idempotency_key,
            session_id=self.id,
            tracer_applied=tracer_applied,
        )

    def list(self) -> builtins.list[ReservationInfo]:
        return self._client.list(session_id=self.id)

    def attach(self, host: str, pid: int) -> Tracer:
        """PTRACE_ATTACH: the task's debug registers become ours for the session."""
        req = ptrace_pb2.AttachRequest(
            request_id=wire.new_id(), session_id=self.id, host=host, task=pid
        )
        self._client._call(calls.ATTACH, req)
        return Tracer(self._client, host, pid, session_id=self.id)

    def close(self) -> int:
        """Stop the keep-alive and release everything the session holds; returns how many
        (0 when it was closed before or its lease had lapsed)."""
        with self._lock:
            if self._closed:
                return 0
            self._closed = True
            self._stop.set()
            if self._call is not None:
                self._call.cancel()
        self._worker.join(JOIN_TIMEOUT)
        if self.expired:
            return 0
        req = session_pb2.CloseSessionRequest(request_id=wire.new_id(), session_id=self.id)
        resp = self._client._call_or_gone(calls.CLOSE_SESSION, req)
        return 0 if resp is None else int(resp.released)

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except HwbpError:
            if exc is None:
                raise  # otherwise keep the caller's error; the lease expires on its own


class Tracer:
    """PTRACE_POKEUSER / PEEKUSER on one task's u_debugreg, with the kernel's semantics."""

    def __init__(self, client: Client, host: str, task: int, *, session_id: str) -> None:
        self._client = client
        self.host = host
        self.task = task
        self.session_id = session_id

    def poke(self, reg: int, value: int, *, request_id: str | None = None) -> int:
        """Write DR``reg`` (0..7); returns the generation that installed it."""
        req = ptrace_pb2.PokeUserRequest(
            request_id=request_id or wire.new_id(),
            session_id=self.session_id,
            host=self.host,
            task=self.task,
            reg=reg,
            value=value,
        )
        resp = self._client._call(calls.POKE_USER, req)
        return int(resp.generation)

    def peek(self, reg: int, *, request_id: str | None = None) -> int:
        """Read DR``reg`` (0..7) as the kernel would report it."""
        req = ptrace_pb2.PeekUserRequest(
            request_id=request_id or wire.new_id(),
            session_id=self.session_id,
            host=self.host,
            task=self.task,
            reg=reg,
        )
        resp = self._client._call(calls.PEEK_USER, req)
        return int(resp.value)

    def detach(self, *, request_id: str | None = None) -> int:
        """PTRACE_DETACH: the task keeps its breakpoints, DR6 and DR7 (and their slots)
        until ``flush()``, its exit, or the end of this session; returns 0 (released)."""
        req = ptrace_pb2.DetachRequest(
            request_id=request_id or wire.new_id(),
            session_id=self.session_id,
            host=self.host,
            task=self.task,
        )
        resp = self._client._call_or_gone(calls.DETACH, req)
        return 0 if resp is None else int(resp.released)

    def flush(self, *, request_id: str | None = None) -> int:
        """flush_ptrace_hw_breakpoint(), as the task's exit or exec would: its ptrace
        breakpoints are released, DR6 and DR7 cleared, and it is no longer traced.
        Returns how many were released."""
        req = ptrace_pb2.FlushRequest(
            request_id=request_id or wire.new_id(),
            session_id=self.session_id,
            host=self.host,
            task=self.task,
        )
        resp = self._client._call_or_gone(calls.FLUSH, req)
        return 0 if resp is None else int(resp.released)

    def traps(self, *, timeout: float | None = None) -> Iterator[TrapInfo]:
        """Traps of this task as they happen; ``timeout`` ends the stream quietly."""
        req = ptrace_pb2.TrapsRequest(request_id=wire.new_id(), host=self.host, task=self.task)
        call = self._client._open(calls.TRAPS, req, timeout)
        return self._client._stream(call, wire.trap, timeout)

    def __enter__(self) -> Tracer:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(NotAttached):
            self.detach()
