"""A process for the perf backend to watch: real stores and calls on command.

Prints one JSON line ``{"pid", "addr", "getpid"}`` (the watched long's address and
libc getpid's address in this process), then answers one line per command on stdin:

    w N    store to the long N times          -> "done"
    x N    call libc getpid N times           -> "done"
    s OFF LEN  one store of LEN (1, 2, 4, 8) bytes at the long's address + OFF -> "done"
    h CPU  hold CPU-bound breakpoints on CPU until the kernel refuses -> the count held
    q      exit

``--cpu`` pins the process (so a task+cpu breakpoint applies); ``--at`` maps the long at
a fixed address, so two processes can use the same virtual address.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import sys

from hwbp.agent import perf_sys as ps  # run with the repository on PYTHONPATH

MAP_FIXED_NOREPLACE = 0x100000
# One store instruction of each width (ctypes writes a simple type with one move).
_STORE = {1: ctypes.c_uint8, 2: ctypes.c_uint16, 4: ctypes.c_uint32, 8: ctypes.c_uint64}


def _page(at: int | None) -> int:
    """A private page nothing else in the process touches, so every store is ours."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | (MAP_FIXED_NOREPLACE if at else 0)
    addr = libc.mmap(at, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_WRITE, flags, -1, 0)
    if addr in (None, ctypes.c_void_p(-1).value) or (at and addr != at):
        raise OSError(ctypes.get_errno(), f"mmap at {at!r} failed")
    return int(addr)


def _hold(cpu: int, var: int) -> int:
    """Take every free debug register on ``cpu``, as an outside perf or gdb would."""
    held = 0
    while held < 16:
        attr = ps.breakpoint_attr(
            bp_type=ps.HW_BREAKPOINT_W, addr=var, length=8, disabled=True, exclude_kernel=True
        )
        try:
            ps.perf_event_open(attr, pid=-1, cpu=cpu)  # kept open until this process exits
        except OSError:
            break
        held += 1
    return held


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpu", type=int)
    parser.add_argument("--at", type=lambda s: int(s, 0))
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    addr = _page(args.at)
    var = ctypes.c_long.from_address(addr)
    libc = ctypes.CDLL(None)
    getpid = libc.getpid
    info = {"pid": os.getpid(), "addr": addr, "getpid": ctypes.cast(getpid, ctypes.c_void_p).value}
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "w":
            for i in range(int(arg)):
                var.value = i
            print("done", flush=True)
        elif cmd == "s":
            off, size = (int(v, 0) for v in arg.split())
            _STORE[size].from_address(addr + off).value = 0x5A
            print("done", flush=True)
        elif cmd == "x":
            for _ in range(int(arg)):
                getpid()
            print("done", flush=True)
        elif cmd == "h":
            print(_hold(int(arg), addr), flush=True)
        elif cmd == "q":
            return


if __name__ == "__main__":
    main()
