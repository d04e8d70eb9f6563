"""gdb's hardware breakpoints and watchpoints: reserved in the arbiter, armed by us.

Each debug register a ``Z1``/``Z2``/``Z4`` needs is first reserved in the arbiter's
ledger (a task-scoped, tracer-applied reservation of the inferior, held by our leased
session), and only then armed: one perf event per thread, ``perf_event_open(pid=tid,
cpu=-1)`` with ``sigtrap`` (the thread stops with SIGTRAP/TRAP_PERF on a hit, and the
kernel's own accounting takes the slot exactly once per thread, as a ptrace watchpoint
would) and ``remove_on_exec`` (which the kernel requires with sigtrap). A refusal at any
step undoes the earlier ones, so a refused insert leaves nothing behind.

Which watchpoint fired is read from the events' counters, not from the signal: a hit
during a single step arrives folded into the step's SIGTRAP (TRAP_TRACE), and only the
counter says it happened. Only the holder of the fd can read it, one reason the
gdbserver arms its watchpoints itself rather than through the agents.

gdb removes every breakpoint whenever the inferior stops and inserts them again before
it resumes. A removed point is therefore only disabled ("parked", keeping its
reservation and its kernel slot); it is released for good when the inferior resumes
without it, so a stop and a continue cost no arbiter round trip and nobody can take the
register in between.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from hwbp.agent import perf_sys as ps
from hwbp.errors import HwbpError, ReservationNotFound
from hwbp.gdbserver.watchplan import Chunk, ZType, plan, stop_reason
from hwbp.model import BpType

FLAG_REMOVE_ON_EXEC = 1 << 36
FLAG_SIGTRAP = 1 << 37
_KERNEL_TYPE = {BpType.EXEC: ps.HW_BREAKPOINT_X, BpType.WRITE: ps.HW_BREAKPOINT_W}
_KERNEL_TYPE[BpType.RW] = ps.HW_BREAKPOINT_RW


class Ledger(Protocol):
    """The arbiter side: a reservation per register (``bridge.ArbiterBridge``)."""

    def reserve(self, chunk: Chunk) -> str: ...

    def release(self, reservation_id: str) -> None: ...


class Refused(Exception):
    """An insert that was refused; the message says by whom and why, for gdb's user."""


def _attr(chunk: Chunk, *, enabled: bool, sig_data: int) -> ps.PerfEventAttr:
    attr = ps.breakpoint_attr(
        bp_type=_KERNEL_TYPE[chunk.type],
        addr=chunk.addr,
        length=chunk.length,
        disabled=not enabled,
        exclude_kernel=True,
    )
    attr.flags |= FLAG_SIGTRAP | FLAG_REMOVE_ON_EXEC
    attr.sig_data = sig_data
    return attr


def open_event(tid: int, chunk: Chunk, *, enabled: bool, sig_data: int = 0) -> int:
    """One thread's perf breakpoint that stops it with SIGTRAP on every hit."""
    return ps.perf_event_open(_attr(chunk, enabled=enabled, sig_data=sig_data), pid=tid, cpu=-1)


def probe() -> str | None:
    """None when this kernel arms stopping breakpoints for us, else why not."""
    var = (ctypes.c_char * 8)()
    chunk = Chunk(ctypes.addressof(var), 8, BpType.WRITE)
    try:
        os.close(open_event(0, chunk, enabled=False))
    except OSError as e:
        if e.errno == errno.ENOSPC:
            return None  # understood, only every register is taken right now
        name = errno.errorcode.get(e.errno or 0, str(e.errno))
        hint = (
            " (perf_event_attr.sigtrap needs Linux 5.13 or later)"
            if e.errno in (errno.EINVAL, errno.E2BIG)
            else ""
        )
        return f"perf_event_open refused a stopping hardware breakpoint: {name}{hint}"
    return None


def _kernel_refusal(chunk: Chunk, tid: int, e: OSError) -> str:
    name = errno.errorcode.get(e.errno or 0, str(e.errno))
    what = f"{chunk.length} bytes at {chunk.addr:#x}"
    if e.errno == errno.ENOSPC:
        return (
            f"the kernel has no free debug register for thread {tid} ({what}): something "
            f"outside the arbiter holds them ({name})"
        )
    return f"the kernel refused a breakpoint on {what} for thread {tid}: {e.strerror} ({name})"


@dataclass
class _Register:
    """One chunk: its reservation and one perf event per thread."""

    chunk: Chunk
    reservation: str
    fds: dict[int, int] = field(default_factory=dict)
    seen: dict[int, int] = field(default_factory=dict)  # counter at the last look

    def close(self, tid: int | None = None) -> None:
        for t in [tid] if tid is not None else list(self.fds):
            fd = self.fds.pop(t, None)
            self.seen.pop(t, None)
            if fd is not None:
                os.close(fd)


@dataclass
class Point:
    """What gdb inserted with one ``Z`` packet."""

    ztype: ZType
    addr: int
    kind: int
    registers: list[_Register]
    parked: bool = False

    @property
    def key(self) -> tuple[ZType, int, int]:
        return (self.ztype, self.addr, self.kind)

    def reason(self) -> bytes:
        return stop_reason(self.ztype, self.addr)


class HwPoints:
    """The inferior's hardware points, kept equal in the ledger and in the kernel."""

    def __init__(
        self,
        ledger: Ledger,
        threads: Callable[[], Iterable[int]],
        log: Callable[[str], None],
    ) -> None:
        self._ledger = ledger
        self._threads = threads
        self._log = log
        self.points: list[Point] = []
        self.last_refusal = ""

    # --- gdb's Z and z ---------------------------------------------------------------

    def insert(self, ztype: ZType, addr: int, kind: int) -> None:
        """Reserve, then arm on every thread; raise Refused having undone everything."""
        for p in self.points:
            if p.key == (ztype, addr, kind) and p.parked:
                self._unpark(p)
                return
        try:
            chunks = plan(ztype, addr, kind)
        except ValueError as e:
            raise self._refused(str(e)) from None
        made: list[_Register] = []
        try:
            for chunk in chunks:
                try:
                    rid = self._ledger.reserve(chunk)
                except HwbpError as e:
                    raise self._refused(str(e)) from None
                reg = _Register(chunk, rid)
                made.append(reg)
                for tid in self._threads():
                    try:
                        reg.fds[tid] = open_event(tid, chunk, enabled=True)
                    except ProcessLookupError:
                        continue  # the thread is exiting; its exit is on its way to us
                    except OSError as e:
                        raise self._refused(_kernel_refusal(chunk, tid, e)) from None
                    reg.seen[tid] = 0
        except BaseException:
            self._drop(made)
            raise
        self.points.append(Point(ztype, addr, kind, made))

    def remove(self, ztype: ZType, addr: int, kind: int) -> bool:
        """Disable (park) the point; it is released if the inferior resumes without it."""
        for p in self.points:
            if p.key == (ztype, addr, kind) and not p.parked:
                for reg in p.registers:
                    for fd in reg.fds.values():
                        ps.ioctl(fd, ps.PERF_EVENT_IOC_DISABLE)
                p.parked = True
                return True
        return False

    def settle(self) -> None:
        """Before a resume: release every point gdb removed and did not insert again."""
        gone = [p for p in self.points if p.parked]
        self.points = [p for p in self.points if not p.parked]
        for p in gone:
            self._drop(p.registers)

    def release_all(self) -> None:
        """Disarm and release everything (detach, kill, exit, or a lost connection)."""
        points, self.points = self.points, []
        for p in points:
            self._drop(p.registers)

    # --- threads and hits ------------------------------------------------------------

    def thread_added(self, tid: int) -> None:
        """A new thread gets every point before it first runs."""
        for p in self.points:
            for reg in p.registers:
                try:
                    reg.fds[tid] = open_event(tid, reg.chunk, enabled=not p.parked)
                    reg.seen[tid] = 0
                except ProcessLookupError:
                    return
                except OSError as e:
                    self._log(f"warning: {_kernel_refusal(reg.chunk, tid, e)}")

    def thread_gone(self, tid: int) -> None:
        for p in self.points:
            for reg in p.registers:
                reg.close(tid)

    def hits(self, tid: int) -> list[Point]:
        """Points whose counter on ``tid`` moved since the last look (the thread's DR6)."""
        fired: list[Point] = []
        for p in self.points:
            for reg in p.registers:
                fd = reg.fds.get(tid)
                if fd is None:
                    continue
                count = ps.read_count(fd)
                if count != reg.seen.get(tid, 0):
                    reg.seen[tid] = count
                    if p not in fired:
                        fired.append(p)
        return fired

    def reservations(self) -> dict[str, Point]:
        return {reg.reservation: p for p in self.points for reg in p.registers}

    # --- internals -------------------------------------------------------------------

    def _unpark(self, p: Point) -> None:
        for reg in p.registers:
            for tid, fd in reg.fds.items():
                ps.ioctl(fd, ps.PERF_EVENT_IOC_ENABLE)
                reg.seen[tid] = ps.read_count(fd)
        p.parked = False

    def _drop(self, registers: list[_Register]) -> None:
        """Disarm first, then release: the ledger never shows free what the kernel holds."""
        for reg in registers:
            reg.close()
        for reg in registers:
            try:
                self._ledger.release(reg.reservation)
            except ReservationNotFound:
                pass  # the process exited and its agents released it first
            except HwbpError as e:  # the arbiter is unreachable: the lease will release it
                self._log(f"release of {reg.reservation}: {e}")

    def _refused(self, why: str) -> Refused:
        self.last_refusal = why
        self._log(f"hardware breakpoint refused: {why}")
        return Refused(why)
