"""The agent's real backend: one perf_event_open(2) breakpoint per assignment.

The kernel is the final authority on the debug registers. The arbiter admits a
reservation from its own ledger; this backend asks the kernel for it and reports back
exactly what the kernel accepted. Anything outside the arbiter (perf, gdb, ptrace) that
holds registers shows up here as ENOSPC, which is why ``apply`` is all-or-nothing: a
refused reload must leave the CPU as the arbiter last saw it.

A tracer-applied breakpoint (``Breakpoint.tracer_applied``) is armed by the task's own
tracer (hwbp-gdbserver opens its perf event), so this backend accounts it in its image
but never opens an event for it: the kernel holds it once, not once per agent as well.

The class is synchronous; the agent loop watches ``fds()`` for readability and then
calls ``poll_hits()`` / ``exited_tasks()``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from hwbp import dr7
from hwbp.agent import perf_sys as ps
from hwbp.errors import HwbpError, KernelNoSpace, KernelRefused
from hwbp.model import Assignment, BpType, Breakpoint
from hwbp.registers import HitRecord, RegisterImage
from hwbp.wire import procfs

_LONG = ctypes.sizeof(ctypes.c_long)  # the only length the kernel takes for exec
_KERNEL_TYPE = {
    BpType.EXEC: ps.HW_BREAKPOINT_X,
    BpType.WRITE: ps.HW_BREAKPOINT_W,
    BpType.RW: ps.HW_BREAKPOINT_RW,
    BpType.READ: ps.HW_BREAKPOINT_R,  # x86 refuses it (EINVAL); the kernel says so
}
# ioctl not known to this kernel: fall back to close and reopen.
_NO_MODIFY = (errno.ENOTTY, errno.EOPNOTSUPP)


class Hit(NamedTuple):
    """A hit and the thread that made it.

    HitRecord is a fixed contract without a tid, so the tid travels beside it; a
    Hit unpacks as ``(record, tid)``.
    """

    record: HitRecord
    tid: int


def _attr(bp: Breakpoint, *, inherit: bool = False) -> ps.PerfEventAttr:
    is_exec = bp.type is BpType.EXEC
    return ps.breakpoint_attr(
        bp_type=_KERNEL_TYPE[bp.type],
        addr=bp.addr,
        length=_LONG if is_exec else bp.length,
        disabled=not bp.enabled,
        exclude_kernel=not bp.kernel,
        inherit=inherit,
    )


def probe() -> str | None:
    """None when this process may open hardware breakpoints, else why not, in plain words."""
    probe_var = ctypes.c_char(b"\0")
    attr = ps.breakpoint_attr(
        bp_type=ps.HW_BREAKPOINT_W,
        addr=ctypes.addressof(probe_var),
        length=1,
        disabled=True,
        exclude_kernel=True,
    )
    try:
        fd = ps.perf_event_open(attr, pid=0, cpu=-1)
    except OSError as e:
        name = errno.errorcode.get(e.errno or 0, str(e.errno))
        return f"perf_event_open refused a hardware breakpoint ({name}: {e.strerror}){_hint(e)}"
    os.close(fd)
    return None


def _hint(e: OSError) -> str:
    if e.errno in (errno.EACCES, errno.EPERM):
        return "; needs root, CAP_PERFMON or a lower kernel.perf_event_paranoid"
    if e.errno in (errno.ENOENT, errno.ENODEV, errno.EOPNOTSUPP, errno.ENOSYS):
        return "; this kernel or CPU offers no hardware breakpoints to perf"
    if e.errno == errno.ENOSPC:
        return "; every debug register is already taken"
    return ""


def _pid_words(ev: _Event) -> str:
    a = ev.assignment
    if a.task is None:
        return "pid -1"
    if a.process:
        return f"process {a.task}, {1 + len(ev.threads)} threads inheriting"
    return f"pid {a.task}"


def _dr7(slots: Sequence[Breakpoint | None]) -> int:
    """DR7 for the enabled breakpoints, via the shared encoder.

    Exec breakpoints are shown at the generic length; a shape x86 cannot express (a
    read-only breakpoint, or a length no x86 CPU has) leaves its slot empty.
    """
    shown: list[Breakpoint | None] = []
    for bp in slots:
        if bp is not None and bp.type is BpType.EXEC:
            bp = replace(bp, length=dr7.EXEC_LENGTH)
        elif bp is not None and (bp.type is BpType.READ or bp.length & (bp.length - 1)):
            bp = None  # (a range, an aligned power of two, is LEN 00 with its mask)
        shown.append(bp)
    return dr7.encode(shown)


class _Drained(NamedTuple):
    """A sample read from an event's ring, with the breakpoint it belonged to then."""

    assignment: Assignment
    register: int  # the DRi it is laid out in
    sample: ps.Sample


def _one_exception(group: list[_Drained], d: _Drained) -> bool:
    """Is ``d`` (the next sample in time) part of the same #DB as ``group``? The kernel
    passes one pt_regs to each perf_bp_event() of an exception, so its samples share the
    thread, ip and user registers; and each breakpoint fires at most once in it."""
    first = group[0].sample
    s = d.sample
    return (s.tid, s.ip, s.regs) == (first.tid, first.ip, first.regs) and all(
        g.assignment.reservation_id != d.assignment.reservation_id for g in group
    )


@dataclass(eq=False)
class _Event:
    """The open perf events of one assignment: one, or one per thread of a process (each
    inherited by the threads that thread creates). ``base`` carries the count of earlier
    fds."""

    assignment: Assignment
    fd: int
    ring: ps.RingBuffer
    base: int = 0
    # The other threads' events, writing their samples into ``ring`` (SET_OUTPUT).
    threads: list[int] = field(default_factory=list)

    def count(self) -> int:
        return self.base + sum(ps.read_count(fd) for fd in (self.fd, *self.threads))

    def close(self) -> None:
        self.ring.close()
        for fd in (self.fd, *self.threads):
            os.close(fd)


@dataclass
class _Txn:
    """What one apply() has changed so far, so a refusal can undo it."""

    opened: list[_Event] = field(default_factory=list)
    modified: list[tuple[_Event, Assignment]] = field(default_factory=list)
    closed: list[_Event] = field(default_factory=list)


class PerfBackend:
    """Breakpoints for one CPU as perf events: CPU-bound ones with pid -1, task ones with pid T.

    ``apply`` returns the accepted set laid out as x86 would place it; user space cannot
    read the real debug registers, so the image is what the kernel accepted, not a
    register read. CPU-bound breakpoints take DR0.. in order; each task's breakpoints
    follow them in order (the first free registers when that task runs here). With
    several tasks their indices overlap and the image shows the first one listed.
    """

    name = "perf"
    polls = True  # the kernel reports hits and exits on fds the agent watches

    # 32 pages (128 KiB) hold ~680 samples of ~190 bytes (with the trap's registers).
    def __init__(self, cpu: int, ring_pages: int = 32) -> None:
        self.cpu = cpu
        self.features = ps.host_features()  # what this machine's CPU and kernel offer
        self._ring_pages = ring_pages
        self._events: dict[str, _Event] = {}
        self._traced: dict[str, Assignment] = {}  # armed by the task's tracer, not by us
        self._index: dict[str, int] = {}
        self._image = self._layout([])
        self._pidfds: dict[int, int] = {}
        self._exited: list[int] = []
        self._pending: list[_Drained] = []  # drained before a reload changed their events
        self._exceptions = 0  # debug exceptions seen so far (numbers the hits of each)

    # --- breakpoints -------------------------------------------------------------------

    def apply(self, assignments: Sequence[Assignment]) -> RegisterImage:
        """Make the open set equal ``assignments``, all or nothing; return the accepted image."""
        wanted: dict[str, Assignment] = {}
        traced: dict[str, Assignment] = {}
        for a in assignments:
            if a.reservation_id in wanted or a.reservation_id in traced:
                raise ValueError(f"reservation {a.reservation_id} assigned twice to cpu {self.cpu}")
            (traced if a.bp.tracer_applied else wanted)[a.reservation_id] = a
        removals = [ev for rid, ev in self._events.items() if rid not in wanted]
        opens: list[tuple[Assignment, _Event | None]] = []  # (new, the event it replaces)
        txn = _Txn()
        current: Assignment | None = None
        try:
            for a in wanted.values():
                current = a
                ev = self._events.get(a.reservation_id)
                if ev is None:
                    opens.append((a, None))
                elif ev.assignment != a and not self._modify(ev, a, txn):
                    opens.append((a, ev))
                    removals.append(ev)
            for a, _ in opens:
                current = a
                txn.opened.append(self._open_or_make_room(a, removals, txn))
        except OSError as e:
            assert current is not None
            self._rollback(txn)
            raise self._refusal(current, e) from None
        # Commit: the kernel holds the whole new set; drop what it replaces.
        for ev in removals:
            if ev not in txn.closed:
                self._retire(ev)
        for (_, old), ev in zip(opens, txn.opened, strict=True):
            if old is not None:
                ev.base = old.base  # the same reservation keeps counting from where it was
        for ev in removals:
            del self._events[ev.assignment.reservation_id]
        for ev in txn.opened:
            self._events[ev.assignment.reservation_id] = ev
        self._events = {rid: self._events[rid] for rid in wanted}
        self._traced = traced
        self._image = self._layout(self._accounted())
        return self._image

    def _accounted(self) -> list[Assignment]:
        """What this CPU's kernel holds: our events and the tracers' breakpoints."""
        return [ev.assignment for ev in self._events.values()] + list(self._traced.values())

    def _open(self, a: Assignment) -> _Event:
        if a.process and a.task is not None:
            return self._open_process(a, a.task)
        pid = -1 if a.task is None else a.task
        fd, ring = self._open_one(a.bp, pid, inherit=False)
        return _Event(assignment=a, fd=fd, ring=ring)

    def _open_one(self, bp: Breakpoint, pid: int, *, inherit: bool) -> tuple[int, ps.RingBuffer]:
        fd = ps.perf_event_open(_attr(bp, inherit=inherit), pid=pid, cpu=self.cpu)
        try:
            return fd, ps.RingBuffer(fd, self._ring_pages)
        except BaseException:
            os.close(fd)
            raise

    def _open_process(self, a: Assignment, pid: int) -> _Event:
        """One inherited event per thread the process has; listed again until no thread
        is new, since one created by a thread not yet covered would inherit nothing. A
        thread that exits meanwhile (ESRCH) needs none; the process itself must exist.
        Every event writes into the first one's ring (the threads they create do too),
        so a process of many threads costs one buffer per CPU, not one per thread."""
        fds: dict[int, int] = {}  # tid -> fd; the first owns the ring
        gone: set[int] = set()
        ring: ps.RingBuffer | None = None
        try:
            while True:
                try:
                    new = [t for t in procfs.threads_of(pid) if t not in fds and t not in gone]
                except HwbpError:
                    raise OSError(errno.ESRCH, os.strerror(errno.ESRCH)) from None
                if not new:
                    break
                for tid in new:
                    try:
                        fd = ps.perf_event_open(_attr(a.bp, inherit=True), pid=tid, cpu=self.cpu)
                    except OSError as e:
                        if e.errno != errno.ESRCH or tid == pid:
                            raise
                        gone.add(tid)
                        continue
                    fds[tid] = fd
                    if ring is None:
                        ring = ps.RingBuffer(fd, self._ring_pages)
                    else:
                        first = next(iter(fds.values()))
                        ps.ioctl(fd, ps.PERF_EVENT_IOC_SET_OUTPUT, first)
        except BaseException:
            if ring is not None:
                ring.close()
            for fd in fds.values():
                os.close(fd)
            raise
        if ring is None:
            raise OSError(errno.ESRCH, os.strerror(errno.ESRCH))
        first, *rest = fds.values()
        return _Event(assignment=a, fd=first, ring=ring, threads=rest)

    def _open_or_make_room(self, a: Assignment, removals: list[_Event], txn: _Txn) -> _Event:
        """Open while the old set still holds its slots; only on ENOSPC free the removals.

        Keeping removals open first means an unrelated refusal never touches them; but a
        full CPU that swaps one breakpoint for another needs the old slot freed first.
        """
        pending = [ev for ev in removals if ev not in txn.closed]
        try:
            return self._open(a)
        except OSError as e:
            if e.errno != errno.ENOSPC or not pending:
                raise
        for ev in pending:
            self._retire(ev)
            txn.closed.append(ev)
        return self._open(a)

    def _modify(self, ev: _Event, new: Assignment, txn: _Txn) -> bool:
        """Change the event in place, keeping its slot; False when it must be reopened."""
        old = ev.assignment
        if (old.task, old.process, old.bp.kernel) != (new.task, new.process, new.bp.kernel):
            return False  # pid, inherit and exclude_kernel are fixed for the event's life
        if ev.threads:
            return False  # one event per thread: reopened whole, so it stays all-or-nothing
        self._pending += self._drain(ev)  # earlier hits belong to the old breakpoint
        try:
            ps.modify_attributes(ev.fd, _attr(new.bp, inherit=new.process))
        except OSError as e:
            if e.errno in _NO_MODIFY:
                return False
            raise
        txn.modified.append((ev, old))
        ev.assignment = new
        return True

    def _retire(self, ev: _Event) -> None:
        """Close an event, keeping its count and the hits it still buffers."""
        self._pending += self._drain(ev)
        ev.base = ev.count()
        ev.close()

    def _rollback(self, txn: _Txn) -> None:
        """Undo in reverse: close what was opened, unmodify, reopen what was closed."""
        for ev in txn.opened:
            ev.close()
        for ev, old in reversed(txn.modified):
            # The old attrs were valid already.
            ps.modify_attributes(ev.fd, _attr(old.bp, inherit=old.process))
            ev.assignment = old
        shrunk = False
        for ev in txn.closed:
            rid = ev.assignment.reservation_id
            try:
                again = self._open(ev.assignment)
            except OSError:
                # Someone outside took the slot in the instant it was free.
                del self._events[rid]
                shrunk = True
                continue
            again.base = ev.base
            self._events[rid] = again
        if shrunk:
            self._image = self._layout(self._accounted())

    def _refusal(self, a: Assignment, e: OSError) -> KernelRefused:
        err = e.errno or 0
        name = errno.errorcode.get(err, str(err))
        where = f"cpu {self.cpu}" + ("" if a.task is None else f" (task {a.task})")
        meta: dict[str, object] = {"cpu": self.cpu, "reservation": a.reservation_id, "task": a.task}
        if err == errno.ENOSPC:
            return KernelNoSpace(
                f"the kernel refused reservation {a.reservation_id}: no free debug register "
                f"on {where} (something outside the arbiter, e.g. perf or gdb, holds "
                f"registers; errno {name})",
                kernel_errno=err,
                **meta,
            )
        why = {
            errno.EACCES: "not permitted to open breakpoints",
            errno.EPERM: "not permitted (a kernel address needs CAP_SYS_ADMIN)",
            errno.ESRCH: f"task {a.task} does not exist",
            errno.EINVAL: "the address, length or type is invalid for this CPU",
            errno.EOPNOTSUPP: "this CPU has no debug register of that type",
        }.get(err, e.strerror or "")
        return KernelRefused(
            f"the kernel refused reservation {a.reservation_id} on {where}: {why} (errno {name})",
            kernel_errno=err,
            **meta,
        )

    def _layout(self, order: Sequence[Assignment]) -> RegisterImage:
        index: dict[str, int] = {}
        cpu_bound = [a for a in order if a.task is None]
        for i, a in enumerate(cpu_bound):
            index[a.reservation_id] = i
        rank: dict[int, int] = {}
        for a in order:
            if a.task is not None:
                index[a.reservation_id] = len(cpu_bound) + rank.get(a.task, 0)
                rank[a.task] = rank.get(a.task, 0) + 1
        slots: list[Assignment | None] = [None] * dr7.HBP_NUM
        for a in [*cpu_bound, *(a for a in order if a.task is not None)]:
            i = index[a.reservation_id]
            if i < dr7.HBP_NUM and slots[i] is None:
                slots[i] = a
        self._index = index
        bps = [None if s is None else s.bp for s in slots]
        dr = [0 if bp is None else bp.addr for bp in bps]
        ids = [None if s is None else s.reservation_id for s in slots]
        return RegisterImage(
            dr=(dr[0], dr[1], dr[2], dr[3]),
            dr7=_dr7(bps),
            dr6=dr7.DR6_RESERVED,
            current_task=None,
            slots=(ids[0], ids[1], ids[2], ids[3]),
        )

    def detail(self) -> str:
        """What the kernel accepted, for the inventory: one perf event per breakpoint."""
        if not self._events and not self._traced:
            return f"cpu {self.cpu}: kernel holds no breakpoint events"
        parts = [
            f"{rid} ({_pid_words(ev)}, fd {ev.fd}, {ev.count()} hits)"
            for rid, ev in sorted(self._events.items())
        ]
        parts += [f"{rid} (pid {a.task}, armed by its tracer)" for rid, a in self._traced.items()]
        return f"cpu {self.cpu}: kernel accepted " + ", ".join(parts)

    def image(self) -> RegisterImage:
        return self._image

    # --- hits and counters -------------------------------------------------------------

    def poll_hits(self) -> list[Hit]:
        """Drain every ring buffer: one Hit per sample, i.e. per breakpoint that fired.

        The samples of one debug exception (one access that hit several breakpoints)
        share an ``exception`` number and carry DR6 with all their bits, as
        hw_breakpoint_handler() saw it. They are told apart by the registers at the trap
        (``_one_exception``); the agent runs on the CPU its events watch, so it never
        reads half of an exception.
        """
        drained, self._pending = self._pending, []
        for ev in self._events.values():
            drained += self._drain(ev)
        drained.sort(key=lambda d: d.sample.time)
        hits: list[Hit] = []
        group: list[_Drained] = []
        for d in [*drained, None]:
            if d is not None and group and _one_exception(group, d):
                group.append(d)
                continue
            if group:
                hits += self._exception(group)
            group = [] if d is None else [d]
        return hits

    def _exception(self, group: list[_Drained]) -> list[Hit]:
        self._exceptions += 1
        dr6 = dr7.DR6_RESERVED
        for d in group:
            dr6 |= 1 << d.register
        return [
            Hit(
                HitRecord(
                    reservation_id=d.assignment.reservation_id,
                    index=d.register,
                    bp=d.assignment.bp,
                    task=d.assignment.task,
                    dr6=dr6,
                    access_addr=d.sample.addr,
                    ip=d.sample.ip,
                    exception=self._exceptions,
                ),
                d.sample.tid,
            )
            for d in group
        ]

    def _drain(self, ev: _Event) -> list[_Drained]:
        a = ev.assignment
        index = self._index.get(a.reservation_id, 0)
        return [_Drained(a, index, s) for s in ev.ring.drain()]

    def counts(self) -> dict[str, int]:
        """Reservation id -> hits counted by the kernel (kept across reopen of the same id)."""
        return {rid: ev.count() for rid, ev in self._events.items()}

    def lost(self) -> int:
        """Samples the kernel dropped because a ring buffer was full (counts stay exact)."""
        return sum(ev.ring.lost for ev in self._events.values())

    # --- task exits --------------------------------------------------------------------

    def watch_task(self, pid: int) -> None:
        """Report ``pid`` from exited_tasks() once it exits (already gone: at the next call)."""
        if pid in self._pidfds or pid in self._exited:
            return
        try:
            self._pidfds[pid] = ps.pidfd_open(pid)
        except ProcessLookupError:
            self._exited.append(pid)
        except OSError:
            # A thread on a kernel without PIDFD_THREAD: its breakpoint goes with it in
            # the kernel; the ledger's slot waits for a release (or its process's exit).
            pass

    def exited_tasks(self) -> list[int]:
        """Watched pids that have exited since the last call, each reported once."""
        out, self._exited = self._exited, []
        if self._pidfds:
            readable, _, _ = select.select(list(self._pidfds.values()), [], [], 0)
            for pid, fd in list(self._pidfds.items()):
                if fd in readable:
                    os.close(fd)
                    del self._pidfds[pid]
                    out.append(pid)
        return out

    def fds(self) -> list[int]:
        """Every fd whose readability means work: sample buffers and pidfds."""
        return [ev.fd for ev in self._events.values()] + list(self._pidfds.values())

    def close(self) -> None:
        for ev in self._events.values():
            ev.close()
        self._events.clear()
        self._traced.clear()
        for fd in self._pidfds.values():
            os.close(fd)
        self._pidfds.clear()
        self._image = self._layout([])
