"""Raw ptrace(2) and waitpid through ctypes: x86-64 Linux only.

No policy here; failures are ``OSError`` with the kernel's errno. Every call must come
from the thread that attached (ptrace's tracer is a thread, not a process), which is
why the gdbserver does all its tracing from its main thread.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

PTRACE_CONT = 7
PTRACE_SINGLESTEP = 9
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_GETFPREGS = 14
PTRACE_SETFPREGS = 15
PTRACE_DETACH = 17
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207

O_TRACECLONE = 0x8
O_TRACEEXEC = 0x10
O_EXITKILL = 0x100000

EVENT_CLONE = 3
EVENT_EXEC = 4
EVENT_STOP = 128

WALL = 0x40000000  # __WALL: threads and processes alike

# si_code values of SIGTRAP (include/uapi/asm-generic/siginfo.h)
TRAP_BRKPT = 1
TRAP_TRACE = 2
TRAP_HWBKPT = 4
TRAP_PERF = 6
SI_KERNEL = 0x80

_libc = ctypes.CDLL(None, use_errno=True)
_ptrace = _libc.ptrace
_ptrace.restype = ctypes.c_long
_ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]


def _check(rc: int) -> int:
    if rc == -1:
        err = ctypes.get_errno()
        if err:
            raise OSError(err, os.strerror(err))
    return rc


def ptrace(request: int, tid: int, addr: int = 0, data: int = 0) -> int:
    ctypes.set_errno(0)
    return _check(int(_ptrace(request, tid, ctypes.c_void_p(addr), ctypes.c_void_p(data))))


def seize(tid: int, options: int) -> None:
    ptrace(PTRACE_SEIZE, tid, 0, options)


def interrupt(tid: int) -> None:
    ptrace(PTRACE_INTERRUPT, tid)


def cont(tid: int, signal: int = 0) -> None:
    ptrace(PTRACE_CONT, tid, 0, signal)


def step(tid: int, signal: int = 0) -> None:
    ptrace(PTRACE_SINGLESTEP, tid, 0, signal)


def detach(tid: int, signal: int = 0) -> None:
    ptrace(PTRACE_DETACH, tid, 0, signal)


def _get(request: int, tid: int, size: int) -> bytes:
    buf = ctypes.create_string_buffer(size)
    ptrace(request, tid, 0, ctypes.addressof(buf))
    return buf.raw


def _set(request: int, tid: int, data: bytes) -> None:
    buf = ctypes.create_string_buffer(data, len(data))
    ptrace(request, tid, 0, ctypes.addressof(buf))


def get_regs(tid: int) -> bytes:
    return _get(PTRACE_GETREGS, tid, 216)


def set_regs(tid: int, data: bytes) -> None:
    _set(PTRACE_SETREGS, tid, data)


def get_fpregs(tid: int) -> bytes:
    return _get(PTRACE_GETFPREGS, tid, 512)


def set_fpregs(tid: int, data: bytes) -> None:
    _set(PTRACE_SETFPREGS, tid, data)


def event_msg(tid: int) -> int:
    value = ctypes.c_ulong(0)
    ptrace(PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(value))
    return int(value.value)


@dataclass(frozen=True, slots=True)
class SigInfo:
    """The fields of siginfo_t a debugger needs for SIGTRAP (and si_perf_data for perf)."""

    signo: int
    code: int
    addr: int  # si_addr: the fault or watched address
    perf_data: int  # si_perf_data: perf_event_attr.sig_data of a TRAP_PERF


def siginfo_raw(tid: int) -> bytes:
    """The 128-byte siginfo_t of the signal ``tid`` is stopped for (gdb's $_siginfo)."""
    return _get(PTRACE_GETSIGINFO, tid, 128)


def siginfo(tid: int) -> SigInfo:
    raw = siginfo_raw(tid)
    signo, _errno, code = (int.from_bytes(raw[i : i + 4], "little", signed=True) for i in (0, 4, 8))
    addr = int.from_bytes(raw[16:24], "little")
    perf_data = int.from_bytes(raw[24:32], "little")
    return SigInfo(signo, code, addr, perf_data)


def waitpid(tid: int, options: int) -> tuple[int, int]:
    """os.waitpid with __WALL, so cloned threads are reported too."""
    return os.waitpid(tid, options | WALL)
