"""PTRACE_PEEKUSER / POKEUSER on a real child's ``u_debugreg``, through ctypes.

The suite's way to ask this machine's kernel what a ptrace debugger would see: seize a
``perf_target.py`` child, write its debug registers, let it run a command, and catch
the SIGTRAP its watchpoints raise. Every wait is bounded; ``Traced.release`` detaches
or kills and reaps, so no stopped child outlives a test.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import time
from types import TracebackType

from tests.integration.targets import WAIT, Target

PTRACE_PEEKUSER = 3
PTRACE_POKEUSER = 6
PTRACE_CONT = 7
PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_EVENT_STOP = 128
U_DEBUGREG = 848  # offsetof(struct user, u_debugreg) on x86-64
WALL = 0x40000000  # __WALL
MASK = (1 << 64) - 1

_libc = ctypes.CDLL(None, use_errno=True)
_ptrace = _libc.ptrace
_ptrace.restype = ctypes.c_long
_ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


def ptrace(request: int, pid: int, addr: int = 0, data: int = 0) -> int:
    """The raw call; OSError(errno) on failure (PEEK's -1 is told apart by errno)."""
    ctypes.set_errno(0)
    result = int(_ptrace(request, pid, addr, data))
    err = ctypes.get_errno()
    if result == -1 and err:
        raise OSError(err, f"ptrace({request}) on {pid}: {os.strerror(err)}")
    return result


def probe() -> str | None:
    """None when this process may ptrace a child, else why not."""
    pid = os.fork()
    if pid == 0:  # the child waits to be traced, then leaves
        time.sleep(WAIT)
        os._exit(0)
    try:
        ptrace(PTRACE_SEIZE, pid)
    except OSError as err:
        return f"the kernel refused PTRACE_SEIZE of a child ({errno.errorcode.get(err.errno or 0)})"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return None


class Traced:
    """A Target seized by this thread (the tracer): stopped between ``run`` calls."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.pid = target.pid
        self.attached = False
        self.attach()

    # --- attach and stop -------------------------------------------------------------

    def attach(self) -> None:
        ptrace(PTRACE_SEIZE, self.pid)
        self.attached = True
        ptrace(PTRACE_INTERRUPT, self.pid)
        sig, event = self._wait_stop()
        if event != PTRACE_EVENT_STOP:
            raise RuntimeError(f"expected an interrupt stop, got signal {sig} event {event}")

    def detach(self) -> None:
        """PTRACE_DETACH from a stop; the child runs on, untraced."""
        ptrace(PTRACE_DETACH, self.pid)
        self.attached = False

    def _wait_stop(self) -> tuple[int, int]:
        """(signal, ptrace event) of the next stop; bounded by WAIT."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG | WALL)
            if pid == 0:
                time.sleep(0.001)
                continue
            if os.WIFSTOPPED(status):
                return os.WSTOPSIG(status), status >> 16
            raise RuntimeError(f"traced child {self.pid} ended (status {status:#x})")
        raise TimeoutError(f"traced child {self.pid} did not stop within {WAIT}s")

    # --- registers -------------------------------------------------------------------

    def peek(self, n: int) -> int:
        return ptrace(PTRACE_PEEKUSER, self.pid, U_DEBUGREG + 8 * n) & MASK

    def poke(self, n: int, value: int) -> int:
        """0, or the errno the kernel answered (the state it keeps is read with peek)."""
        try:
            ptrace(PTRACE_POKEUSER, self.pid, U_DEBUGREG + 8 * n, value)
        except OSError as err:
            return err.errno or -1
        return 0

    # --- running ---------------------------------------------------------------------

    def run(self, command: str) -> list[int]:
        """Continue the child through one perf_target command; return the DR6 read at
        each SIGTRAP it took (each trap is suppressed), stopped again afterwards."""
        stdin, stdout = self.target.proc.stdin, self.target.proc.stdout
        assert stdin is not None and stdout is not None
        stdin.write(command + "\n")
        stdin.flush()
        ptrace(PTRACE_CONT, self.pid)
        traps: list[int] = []
        fd = stdout.fileno()
        answer = ""
        deadline = time.monotonic() + WAIT
        while not answer.endswith("\n"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"traced child {self.pid} did not finish {command!r}")
            pid, status = os.waitpid(self.pid, os.WNOHANG | WALL)
            if pid and os.WIFSTOPPED(status):
                sig = os.WSTOPSIG(status)
                if sig == signal.SIGTRAP and status >> 16 == 0:
                    traps.append(self.peek(6))
                    ptrace(PTRACE_CONT, self.pid, 0, 0)  # swallow the SIGTRAP
                else:
                    ptrace(PTRACE_CONT, self.pid, 0, 0 if status >> 16 else sig)
                continue
            if pid:
                raise RuntimeError(f"traced child {self.pid} ended (status {status:#x})")
            answer += _read_ready(fd)
        ptrace(PTRACE_INTERRUPT, self.pid)
        self._wait_stop()
        if answer.strip() != "done":
            raise RuntimeError(f"traced child answered {answer!r} to {command!r}")
        return traps

    # --- teardown --------------------------------------------------------------------

    def release(self) -> None:
        """Kill the child and reap it here (a traced child's stops must not reach Popen)."""
        proc = self.target.proc
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG | WALL)
            except ChildProcessError:
                break
            if pid and (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
                proc.returncode = -signal.SIGKILL
                break
            time.sleep(0.001)
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()

    def __enter__(self) -> Traced:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_ready(fd: int) -> str:
    """Whatever the child has written so far, without blocking for more."""
    import select

    ready, _, _ = select.select([fd], [], [], 0.001)
    if not ready:
        return ""
    data = os.read(fd, 4096)
    if not data:
        raise EOFError("traced child closed its stdout")
    return data.decode()
