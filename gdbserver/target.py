"""The inferior under ptrace: its threads, their stops, registers, memory, int3s.

All-stop, as gdb's remote protocol wants by default: when one thread stops for a
reason gdb must hear about, every other thread is stopped too (PTRACE_INTERRUPT) before
the stop is reported; events other threads report meanwhile are kept and reported at
the next resume without running anything. Threads are attached with PTRACE_SEIZE, so
stopping them injects no SIGSTOP the program could see, and new threads are traced
from their first instruction (PTRACE_O_TRACECLONE).

Hardware watchpoint hits are recognised through ``hw_hits`` (see ``hwpoints``), which
the gdbserver wires to the perf events it armed.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from hwbp.gdbserver import ptrace_sys as pt
from hwbp.gdbserver import regs
from hwbp.gdbserver.memory import Memory, TargetError

_GROUP_STOPS = (signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)


@dataclass(frozen=True, slots=True)
class Stop:
    """What gdb is told: ``kind`` is "signal" (tid stopped with host ``signal``, plus a
    stop ``reason`` field such as ``watch:ADDR;``), "exited" (``signal`` is the exit
    code) or "killed" (``signal`` ended the process)."""

    kind: str
    tid: int
    signal: int = 0
    reason: bytes = b""


@dataclass(frozen=True, slots=True)
class Action:
    """How to resume one thread: step or continue, delivering ``signal`` (host number)."""

    step: bool = False
    signal: int = 0


@dataclass
class Thread:
    tid: int
    running: bool = False
    stepping: bool = False
    pending: Stop | None = None  # seen while stopping the others; reported later
    cache: tuple[bytes, bytes] | None = None  # (gp, fp) while stopped


@dataclass
class Inferior:
    pid: int
    attached: bool  # --attach: detach at the end; launched: kill at the end
    hw_hits: Callable[[int], list[bytes]] = lambda tid: []
    on_new_thread: Callable[[int], None] = lambda tid: None
    on_thread_gone: Callable[[int], None] = lambda tid: None
    threads: dict[int, Thread] = field(default_factory=dict)
    exit: Stop | None = None
    memory: Memory | None = None  # None until the exec stop (or the attach) is reached
    _early: dict[int, int] = field(default_factory=dict)  # status of a thread not yet known
    _order: list[int] = field(default_factory=list)  # tids with a pending stop, oldest first
    _resuming: bool = False  # between a resume and the stop that ends it
    _interrupted: bool = False

    # --- starting -------------------------------------------------------------------

    @classmethod
    def launch(cls, argv: list[str]) -> Inferior:
        """Fork and exec ``argv``, traced from its first instruction (the exec stop)."""
        go_r, go_w = os.pipe()
        err_r, err_w = os.pipe()  # close-on-exec: empty when the exec succeeded
        pid = os.fork()
        if pid == 0:  # the child: only async-signal-safe work until exec
            try:
                os.close(go_w)
                os.close(err_r)
                os.setpgid(0, 0)  # Ctrl-C on our terminal is not the inferior's
                os.read(go_r, 1)
                os.execvp(argv[0], argv)
            except OSError as e:
                os.write(err_w, str(e.errno or 0).encode())
            finally:
                os._exit(127)
        os.close(go_r)
        os.close(err_w)
        try:
            pt.seize(pid, pt.O_TRACECLONE | pt.O_TRACEEXEC | pt.O_EXITKILL)
        except OSError as e:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise TargetError(f"ptrace refused to trace {argv[0]}: {e.strerror}") from None
        finally:
            os.write(go_w, b"x")
            os.close(go_w)
        failed = os.read(err_r, 32)
        os.close(err_r)
        if failed:
            os.waitpid(pid, 0)
            raise TargetError(f"cannot run {argv[0]}: {os.strerror(int(failed))}")
        _, status = pt.waitpid(pid, 0)
        if not os.WIFSTOPPED(status) or status >> 16 != pt.EVENT_EXEC:
            raise TargetError(f"{argv[0]} did not stop after exec (wait status {status:#x})")
        inf = cls(pid, attached=False)
        inf.threads[pid] = Thread(pid)
        inf.memory = Memory(inf.pid)
        return inf

    @classmethod
    def attach(cls, pid: int) -> Inferior:
        """Seize every thread of ``pid`` and stop them all."""
        inf = cls(pid, attached=True)
        try:
            while True:
                tids = {int(t) for t in os.listdir(f"/proc/{pid}/task")} - set(inf.threads)
                if not tids:
                    break
                for tid in sorted(tids):
                    try:
                        pt.seize(tid, pt.O_TRACECLONE | pt.O_TRACEEXEC)
                    except ProcessLookupError:
                        continue  # it exited meanwhile
                    inf.threads[tid] = Thread(tid, running=True)
        except FileNotFoundError:
            raise TargetError(f"no process {pid}") from None
        except PermissionError as e:
            raise TargetError(f"ptrace refused to attach to {pid}: {e.strerror}") from None
        if pid not in inf.threads:
            raise TargetError(f"process {pid} exited before it could be attached")
        inf._stop_all()
        inf.memory = Memory(inf.pid)
        return inf

    @property
    def sw(self) -> dict[int, bytes]:
        """Our int3s: address -> the byte each hides."""
        return self.mem.sw

    @property
    def mem(self) -> Memory:
        if self.memory is None:
            raise TargetError(f"process {self.pid} has no memory open")
        return self.memory

    # --- resuming and waiting -------------------------------------------------------

    def resume(self, actions: Mapping[int, Action], default: Action | None) -> Stop | None:
        """Resume as vCont says; a stop already pending is returned instead, and nothing
        runs (all-stop: gdb hears of it before anything else happens)."""
        chosen = {
            tid: actions.get(tid, default)
            for tid in self.threads
            if actions.get(tid, default) is not None
        }
        for tid in list(self._order):
            if tid in chosen:
                stop = self._take_pending(tid)
                if stop is not None:
                    return stop
        self._interrupted = False
        self._resuming = True
        for tid, act in chosen.items():
            assert act is not None
            self._run(self.threads[tid], act)
        return None

    def interrupt(self) -> None:
        """gdb's Ctrl-C: stop everything; ``poll`` reports SIGINT unless a real event won."""
        self._interrupted = True
        for t in self.threads.values():
            if t.running:
                with contextlib.suppress(ProcessLookupError):
                    pt.interrupt(t.tid)

    def poll(self) -> Stop | None:
        """Handle every wait status there is; the stop to report once one is due."""
        while self.exit is None:
            try:
                tid, status = pt.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if tid == 0:
                break
            self._handle(tid, status)
        if self.exit is not None:
            self._resuming = False
            return self.exit
        if self._order or (self._interrupted and not self._any_running()):
            self._stop_all()
            if self.exit is not None:
                return self.exit
            self._resuming = False
            while self._order:
                stop = self._take_pending(self._order[0])
                if stop is not None:
                    return stop
            if self._interrupted or not self.threads:
                self._interrupted = False
                leader = self.pid if self.pid in self.threads else min(self.threads, default=0)
                return Stop("signal", leader, signal.SIGINT)
            self._resuming = True  # only stale stops: run on as gdb asked
            for t in self.threads.values():
                self._run(t, Action())
        return None

    def _any_running(self) -> bool:
        return any(t.running for t in self.threads.values())

    def _run(self, t: Thread, act: Action) -> None:
        t.cache = None
        t.stepping = act.step
        try:
            (pt.step if act.step else pt.cont)(t.tid, act.signal)
        except ProcessLookupError:
            return  # it died; its exit status is on its way
        t.running = True

    def _stop_all(self) -> None:
        """PTRACE_INTERRUPT every running thread and wait until none runs."""
        for t in self.threads.values():
            if t.running:
                with contextlib.suppress(ProcessLookupError):
                    pt.interrupt(t.tid)
        while self.exit is None and self._any_running():
            try:
                tid, status = pt.waitpid(-1, 0)
            except ChildProcessError:
                break
            self._handle(tid, status, stopping=True)

    def _handle(self, tid: int, status: int, *, stopping: bool = False) -> None:
        t = self.threads.get(tid)
        if t is None:
            if tid == self.pid or not os.WIFSTOPPED(status):
                return
            self._early[tid] = status  # a new thread's first stop, before its clone event
            return
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self._gone(t, status)
            return
        if not os.WIFSTOPPED(status):
            return
        t.running = False
        t.cache = None
        sig, event = os.WSTOPSIG(status), status >> 16
        stop: Stop | None = None
        if event == pt.EVENT_CLONE:
            self._cloned(pt.event_msg(tid), stopping)
        elif event == pt.EVENT_EXEC:
            stop = Stop("signal", tid, signal.SIGTRAP)
        elif event == 0:
            stop = self._classify(t, sig)
        # else: an interrupt, a new thread's first stop, or a group-stop: internal.
        t.stepping = False if stop is not None else t.stepping
        if stop is not None:
            t.pending = stop
            self._order.append(tid)
        elif self._resuming and not stopping and not self._order and not self._interrupted:
            self._run(t, Action(step=t.stepping))

    def _classify(self, t: Thread, sig: int) -> Stop | None:
        """A signal-delivery-stop: what, if anything, gdb must be told."""
        if sig != signal.SIGTRAP:
            return Stop("signal", t.tid, sig)
        info = pt.siginfo(t.tid)
        reasons = self.hw_hits(t.tid)
        if reasons:
            return Stop("signal", t.tid, signal.SIGTRAP, reasons[0])
        if info.code in (pt.SI_KERNEL, pt.TRAP_BRKPT):
            gp, fp = self.registers(t.tid)
            pc = regs.pc(gp) - 1
            if pc in self.sw:
                self.set_registers(t.tid, regs.with_pc(gp, pc), fp)
                return Stop("signal", t.tid, signal.SIGTRAP, b"swbreak:;")
        if info.code == pt.TRAP_PERF:
            return None  # a hit already counted and reported (or of a parked point)
        return Stop("signal", t.tid, signal.SIGTRAP)

    def _take_pending(self, tid: int) -> Stop | None:
        """The pending stop of ``tid``, unless it went stale (its int3 was removed)."""
        self._order.remove(tid)
        t = self.threads[tid]
        stop, t.pending = t.pending, None
        if stop is not None and stop.reason == b"swbreak:;":
            pc = regs.pc(self.registers(tid)[0])
            if pc not in self.sw:
                return None  # the PC is already back on the instruction: it just runs
        return stop

    def _cloned(self, tid: int, stopping: bool) -> None:
        t = Thread(tid, running=True)  # it reports its own first stop
        self.threads[tid] = t
        self.on_new_thread(tid)
        early = self._early.pop(tid, None)
        if early is not None:
            self._handle(tid, early, stopping=stopping)

    def _gone(self, t: Thread, status: int) -> None:
        del self.threads[t.tid]
        if t.tid in self._order:
            self._order.remove(t.tid)
        self.on_thread_gone(t.tid)
        if t.tid != self.pid:
            return
        for other in list(self.threads.values()):
            self.on_thread_gone(other.tid)
        self.threads.clear()
        self._order.clear()
        if os.WIFEXITED(status):
            self.exit = Stop("exited", t.tid, os.WEXITSTATUS(status))
        else:
            self.exit = Stop("killed", t.tid, os.WTERMSIG(status))

    # --- registers --------------------------------------------------------------------

    def registers(self, tid: int) -> tuple[bytes, bytes]:
        t = self._stopped(tid)
        if t.cache is None:
            t.cache = (pt.get_regs(tid), pt.get_fpregs(tid))
        return t.cache

    def set_registers(self, tid: int, gp: bytes, fp: bytes) -> None:
        t = self._stopped(tid)
        old = self.registers(tid)
        if gp != old[0]:
            pt.set_regs(tid, gp)
        if fp != old[1]:
            pt.set_fpregs(tid, fp)
        t.cache = (gp, fp)

    def _stopped(self, tid: int) -> Thread:
        t = self.threads.get(tid)
        if t is None or t.running:
            raise TargetError(f"thread {tid} is not a stopped thread of process {self.pid}")
        return t

    # --- other views of the process -----------------------------------------------

    def siginfo(self, tid: int) -> bytes:
        self._stopped(tid)
        return pt.siginfo_raw(tid)

    def auxv(self) -> bytes:
        with open(f"/proc/{self.pid}/auxv", "rb") as f:
            return f.read()

    def thread_name(self, tid: int) -> str:
        try:
            with open(f"/proc/{self.pid}/task/{tid}/comm") as f:
                return f.read().strip()
        except OSError:
            return ""

    # --- ending -----------------------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL the process and reap every thread."""
        if self.exit is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            while self.exit is None and self.threads:
                try:
                    tid, status = pt.waitpid(-1, 0)
                except ChildProcessError:
                    break
                if tid in self.threads and (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
                    self._gone(self.threads[tid], status)
        self.close()

    def detach(self) -> None:
        """Take our int3s out and let every thread go, delivering pending real signals."""
        if self.exit is None:
            for addr in list(self.sw):
                with contextlib.suppress(TargetError):
                    self.mem.remove_sw(addr)
            for t in list(self.threads.values()):
                if t.running:
                    continue
                sig = 0
                if t.pending is not None and t.pending.signal != signal.SIGTRAP:
                    sig = t.pending.signal
                self._drain_traps(t)
                with contextlib.suppress(ProcessLookupError):
                    pt.detach(t.tid, sig)
            self.threads.clear()
        self.close()

    def _drain_traps(self, t: Thread) -> None:
        """A watchpoint SIGTRAP queued but not yet delivered would kill the process once
        we are gone: let the thread take it now, and discard it."""
        for _ in range(4):
            if not _sigtrap_pending(t.tid):
                return
            try:
                pt.cont(t.tid, 0)
                pt.waitpid(t.tid, 0)
            except (ProcessLookupError, ChildProcessError):
                return

    def close(self) -> None:
        if self.memory is not None:
            self.memory.close()

    def tids(self) -> Iterable[int]:
        return list(self.threads)


def _sigtrap_pending(tid: int) -> bool:
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith("SigPnd:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGTRAP - 1)))
    except OSError:
        pass
    return False
