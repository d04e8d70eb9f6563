"""The inferior's memory through /proc/PID/mem, and the int3s we plant in it.

gdb must see memory as the program wrote it, so reads show the bytes our software
breakpoints hide, and a write over one updates the hidden byte and keeps the int3.
"""

from __future__ import annotations

import os

INT3 = b"\xcc"
_MAX_ADDR = (1 << 63) - 1  # /proc/PID/mem takes an off_t


class TargetError(Exception):
    """The inferior could not be started, attached or accessed; the message says why."""


class Memory:
    def __init__(self, pid: int) -> None:
        self.sw: dict[int, bytes] = {}  # int3 address -> the byte it hides
        self._fd = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)

    def _raw_read(self, addr: int, length: int) -> bytes:
        if addr > _MAX_ADDR:
            raise TargetError(f"cannot read memory at {addr:#x}")
        try:
            data = os.pread(self._fd, length, addr)
        except OSError as e:
            raise TargetError(f"cannot read memory at {addr:#x}: {e.strerror}") from None
        if not data and length:
            raise TargetError(f"cannot read memory at {addr:#x}")
        return data

    def _raw_write(self, addr: int, data: bytes) -> None:
        if addr > _MAX_ADDR:
            raise TargetError(f"cannot write memory at {addr:#x}")
        try:
            done = os.pwrite(self._fd, data, addr)
        except OSError as e:
            raise TargetError(f"cannot write memory at {addr:#x}: {e.strerror}") from None
        if done != len(data):
            raise TargetError(f"wrote {done} of {len(data)} bytes at {addr:#x}")

    def read(self, addr: int, length: int) -> bytes:
        """Memory as the program wrote it: our int3s are shown as the bytes they hide."""
        data = bytearray(self._raw_read(addr, length))
        for a, orig in self.sw.items():
            if addr <= a < addr + len(data):
                data[a - addr] = orig[0]
        return bytes(data)

    def write(self, addr: int, data: bytes) -> None:
        """Write, keeping our int3s in place (their hidden byte takes the new value)."""
        out = bytearray(data)
        for a in self.sw:
            if addr <= a < addr + len(out):
                self.sw[a] = bytes((out[a - addr],))
                out[a - addr] = INT3[0]
        self._raw_write(addr, bytes(out))

    def insert_sw(self, addr: int) -> None:
        if addr in self.sw:
            return
        orig = self._raw_read(addr, 1)
        self._raw_write(addr, INT3)
        self.sw[addr] = orig

    def remove_sw(self, addr: int) -> bool:
        orig = self.sw.pop(addr, None)
        if orig is None:
            return False
        self._raw_write(addr, orig)
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
