"""Raw Linux perf_event_open(2) layer for hardware breakpoints, through ctypes.

Only what the breakpoint backend needs: the attr struct, the syscall, the ioctls, the
counter read, the sample ring buffer and pidfds, and what this host offers (CPU flags,
kprobes, capabilities). No policy lives here; errors surface as ``OSError`` with the
kernel's errno so the backend can word the refusal.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import gzip
import mmap
import os
import platform
import re
import struct
from dataclasses import dataclass

from hwbp.arch import HostFeatures

# Syscall numbers differ per architecture; pidfd_open is the same on both (new table).
_PERF_EVENT_OPEN_NR = {"x86_64": 298, "aarch64": 241}

PERF_TYPE_BREAKPOINT = 5

# <linux/hw_breakpoint.h>
HW_BREAKPOINT_R = 1
HW_BREAKPOINT_W = 2
HW_BREAKPOINT_RW = HW_BREAKPOINT_R | HW_BREAKPOINT_W
HW_BREAKPOINT_X = 4

# sample_type bits
PERF_SAMPLE_IP = 1 << 0
PERF_SAMPLE_TID = 1 << 1
PERF_SAMPLE_TIME = 1 << 2
PERF_SAMPLE_ADDR = 1 << 3
PERF_SAMPLE_CPU = 1 << 7
PERF_SAMPLE_REGS_USER = 1 << 12
# The user registers at the trap tell one debug exception from the next: every
# perf_bp_event() of one #DB gets the same pt_regs. x86-64's general registers and ip
# (perf_regs.h: AX..DI, BP, SP, IP, R8..R15; flags and segments say nothing more).
REGS_USER_MASK = {"x86_64": sum(1 << r for r in (*range(9), *range(16, 24)))}.get(
    platform.machine(), 0
)
SAMPLE_TYPE = (
    PERF_SAMPLE_IP
    | PERF_SAMPLE_TID
    | PERF_SAMPLE_TIME
    | PERF_SAMPLE_ADDR
    | PERF_SAMPLE_CPU
    | (PERF_SAMPLE_REGS_USER if REGS_USER_MASK else 0)
)

# attr flag bits (the u64 bitfield after read_format)
FLAG_DISABLED = 1 << 0
FLAG_INHERIT = 1 << 1  # threads (and, without inherit_thread, processes) it creates inherit it
FLAG_EXCLUDE_KERNEL = 1 << 5
FLAG_EXCLUDE_HV = 1 << 6
FLAG_INHERIT_THREAD = 1 << 35  # inherit only into threads (CLONE_THREAD), not forks (5.13+)

PERF_FLAG_FD_CLOEXEC = 1 << 3

# ioctls: _IO('$', n) and _IOW('$', 11, struct perf_event_attr *) (pointer size 8)
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_DISABLE = 0x2401
PERF_EVENT_IOC_RESET = 0x2403
PERF_EVENT_IOC_SET_OUTPUT = 0x2405  # write samples to another event's ring (same cpu)
PERF_EVENT_IOC_MODIFY_ATTRIBUTES = 0x4008240B

PERF_RECORD_LOST = 2
PERF_RECORD_SAMPLE = 9

# struct perf_event_mmap_page offsets
_DATA_HEAD = 1024
_DATA_TAIL = 1032
_DATA_OFFSET = 1040
_DATA_SIZE = 1048


class PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr up to sig_data (PERF_ATTR_SIZE_VER7, 128 bytes)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("bp_addr", ctypes.c_uint64),
        ("bp_len", ctypes.c_uint64),
        ("branch_sample_type", ctypes.c_uint64),
        ("sample_regs_user", ctypes.c_uint64),
        ("sample_stack_user", ctypes.c_uint32),
        ("clockid", ctypes.c_int32),
        ("sample_regs_intr", ctypes.c_uint64),
        ("aux_watermark", ctypes.c_uint32),
        ("sample_max_stack", ctypes.c_uint16),
        ("reserved_2", ctypes.c_uint16),
        ("aux_sample_size", ctypes.c_uint32),
        ("reserved_3", ctypes.c_uint32),
        ("sig_data", ctypes.c_uint64),
    ]


assert ctypes.sizeof(PerfEventAttr) == 128


def breakpoint_attr(
    *,
    bp_type: int,
    addr: int,
    length: int,
    disabled: bool,
    exclude_kernel: bool,
    inherit: bool = False,
) -> PerfEventAttr:
    """A sampling breakpoint attr: one sample and one wakeup per hit, so counts are exact.

    ``inherit``: the threads the task creates later get a copy (counted against each of
    them, as the kernel's inherit_event() reserves a slot for it); their samples go to
    this event's ring buffer, naming the thread."""
    attr = PerfEventAttr()
    attr.type = PERF_TYPE_BREAKPOINT
    attr.size = ctypes.sizeof(PerfEventAttr)
    attr.sample_period = 1
    attr.sample_type = SAMPLE_TYPE
    attr.sample_regs_user = REGS_USER_MASK
    attr.flags = (
        (FLAG_DISABLED if disabled else 0)
        | (FLAG_EXCLUDE_KERNEL if exclude_kernel else 0)
        | (FLAG_INHERIT | FLAG_INHERIT_THREAD if inherit else 0)
    )
    attr.wakeup_events = 1
    attr.bp_type = bp_type
    attr.bp_addr = addr
    attr.bp_len = length
    return attr


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_ioctl = _libc.ioctl
_ioctl.restype = ctypes.c_int


def _perf_nr() -> int:
    machine = platform.machine()
    try:
        return _PERF_EVENT_OPEN_NR[machine]
    except KeyError:
        raise OSError(0, f"perf_event_open: no syscall number known for {machine}") from None


def perf_event_open(attr: PerfEventAttr, pid: int, cpu: int, group_fd: int = -1) -> int:
    """The raw syscall; returns the fd (close-on-exec) or raises OSError(errno)."""
    fd = _syscall(
        ctypes.c_long(_perf_nr()),
        ctypes.byref(attr),
        ctypes.c_int(pid),
        ctypes.c_int(cpu),
        ctypes.c_int(group_fd),
        ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(fd)


def ioctl(fd: int, request: int, arg: int = 0) -> None:
    rc = _ioctl(ctypes.c_int(fd), ctypes.c_ulong(request), ctypes.c_ulong(arg))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def modify_attributes(fd: int, attr: PerfEventAttr) -> None:
    """PERF_EVENT_IOC_MODIFY_ATTRIBUTES: change addr/type/len/disabled keeping the slot."""
    ioctl(fd, PERF_EVENT_IOC_MODIFY_ATTRIBUTES, ctypes.addressof(attr))


def read_count(fd: int) -> int:
    """The event's counter (read_format 0: one u64)."""
    data = os.read(fd, 8)
    return int(struct.unpack("<Q", data)[0]) if len(data) == 8 else 0


PIDFD_THREAD = os.O_EXCL  # a pidfd of one thread, readable when it exits (6.9+)


def pidfd_open(pid: int) -> int:
    """A pidfd that becomes readable when the task exits (Linux 5.3+): a process's when
    ``pid`` leads one, else (a thread that is not its process's leader) the thread's,
    where the kernel offers PIDFD_THREAD. Raises ProcessLookupError when it is gone."""
    try:
        return os.pidfd_open(pid)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise
        if not os.path.exists(f"/proc/{pid}"):
            raise ProcessLookupError(errno.ESRCH, os.strerror(errno.ESRCH), pid) from None
    return os.pidfd_open(pid, PIDFD_THREAD)  # a thread: kernels before 6.9 say EINVAL


# --- what this host offers (hwbp.arch.HostFeatures) -------------------------------------

CAP_SYS_ADMIN = 21


def cpu_flags(cpuinfo: str) -> set[str]:
    """The flags of the first CPU in /proc/cpuinfo's text (x86: "flags", arm64: "Features")."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def has_capability(status: str, cap: int) -> bool:
    """Is ``cap`` in the effective set of /proc/self/status's text (its CapEff line)?"""
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split(":", 1)[1], 16) >> cap & 1)
    return False


def kprobes_configured(config: str | None, kallsyms: str | None) -> bool | None:
    """CONFIG_KPROBES, from the kernel's config text, else from whether its symbol table
    has register_kprobe; None when neither could be read."""
    if config is not None:
        return "\nCONFIG_KPROBES=y" in "\n" + config
    if kallsyms is not None:
        return re.search(r"^\S+ [Tt] register_kprobe$", kallsyms, re.MULTILINE) is not None
    return None


def _read(path: str, *, gz: bool = False) -> str | None:
    try:
        if gz:
            with gzip.open(path, "rt") as f:
                return f.read()
        with open(path) as f:
            return f.read()
    except (OSError, EOFError, UnicodeDecodeError):
        return None


@functools.cache
def host_features() -> HostFeatures:
    """This machine's: bpext from /proc/cpuinfo, kprobes from the kernel's config (or its
    symbols), privilege from this process's capabilities. Unknown kprobes count as present
    (the kernel still refuses what it cannot do)."""
    config = _read("/proc/config.gz", gz=True) or _read(f"/boot/config-{os.uname().release}")
    kprobes = kprobes_configured(config, None if config else _read("/proc/kallsyms"))
    return HostFeatures(
        bpext="bpext" in cpu_flags(_read("/proc/cpuinfo") or ""),
        kprobes=True if kprobes is None else kprobes,
        privileged=has_capability(_read("/proc/self/status") or "", CAP_SYS_ADMIN),
    )


@dataclass(frozen=True, slots=True)
class Sample:
    """One PERF_RECORD_SAMPLE in the order the kernel writes IP, TID, TIME, ADDR, CPU,
    REGS_USER."""

    ip: int
    pid: int
    tid: int
    addr: int
    cpu: int
    time: int = 0  # perf_clock() nanoseconds: orders samples across events
    regs: tuple[int, ...] = ()  # the user registers at the trap (empty: none sampled)


_SAMPLE = struct.Struct("<QIIQQII")  # ip, pid, tid, time, addr, cpu, res
_REGS = struct.Struct(f"<{bin(REGS_USER_MASK).count('1')}Q")
_HEADER = struct.Struct("<IHH")  # type, misc, size


def _regs(body: bytes, at: int) -> tuple[int, ...]:
    """PERF_SAMPLE_REGS_USER: an ABI word, then the registers unless the ABI is NONE
    (a kernel thread has no user registers)."""
    if not REGS_USER_MASK or len(body) < at + 8:
        return ()
    (abi,) = struct.unpack_from("<Q", body, at)
    if not abi or len(body) < at + 8 + _REGS.size:
        return ()
    return tuple(_REGS.unpack_from(body, at + 8))


class RingBuffer:
    """The event's mmap'ed sample buffer: one metadata page plus 2^n data pages.

    Reading follows the documented protocol: load data_head, consume records up to it,
    then store data_tail so the kernel may reuse the space. x86 orders these loads and
    stores already; on weaker CPUs the interpreter's own work between them is what
    we rely on, which is adequate for a debugging tool but not a formal barrier.
    """

    def __init__(self, fd: int, data_pages: int = 16) -> None:
        if data_pages & (data_pages - 1):
            raise ValueError("data_pages must be a power of two")
        page = mmap.PAGESIZE
        self._map = mmap.mmap(
            fd, (1 + data_pages) * page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
        )
        self.lost = 0

    def _u64(self, off: int) -> int:
        return int(struct.unpack_from("<Q", self._map, off)[0])

    def drain(self) -> list[Sample]:
        """Every sample written since the last drain; counts PERF_RECORD_LOST in ``lost``."""
        m = self._map
        head = self._u64(_DATA_HEAD)
        tail = self._u64(_DATA_TAIL)
        base = self._u64(_DATA_OFFSET) or mmap.PAGESIZE
        size = self._u64(_DATA_SIZE) or (len(m) - mmap.PAGESIZE)
        out: list[Sample] = []
        while tail < head:
            rtype, _misc, rsize = _HEADER.unpack(self._copy(base, size, tail, _HEADER.size))
            if rsize < _HEADER.size:
                break  # corrupt header: drop the rest rather than spin
            body = self._copy(base, size, tail + _HEADER.size, rsize - _HEADER.size)
            if rtype == PERF_RECORD_SAMPLE and len(body) >= _SAMPLE.size:
                ip, pid, tid, time, addr, cpu, _res = _SAMPLE.unpack_from(body)
                regs = _regs(body, _SAMPLE.size)
                out.append(Sample(ip, pid, tid, addr, cpu, time, regs))
            elif rtype == PERF_RECORD_LOST and len(body) >= 16:
                self.lost += int(struct.unpack_from("<QQ", body)[1])
            tail += rsize
        struct.pack_into("<Q", m, _DATA_TAIL, tail)
        return out

    def _copy(self, base: int, size: int, pos: int, n: int) -> bytes:
        start = pos % size
        first = self._map[base + start : base + min(start + n, size)]
        if len(first) == n:
            return first
        return first + self._map[base : base + n - len(first)]

    def close(self) -> None:
        self._map.close()
