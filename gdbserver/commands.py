"""What each gdb packet does: queries, registers, memory, breakpoints, monitor.

``Commands.handle`` answers a packet with its reply, or with a ``Resume`` (continue,
step, vCont) that the server loop carries out while it listens for Ctrl-C, or with an
``End`` (detach, kill). Handlers raise ``ValueError`` for a malformed packet and
``TargetError`` when the inferior refuses; both become an ``Enn`` reply.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from hwbp.gdbserver import regs, signals
from hwbp.gdbserver.hwpoints import HwPoints, Refused
from hwbp.gdbserver.memory import TargetError
from hwbp.gdbserver.packets import (
    OK,
    UNSUPPORTED,
    error,
    hexlify,
    parse_addr_len,
    parse_hex,
    unhexlify,
    xfer_slice,
)
from hwbp.gdbserver.target import Action, Inferior, Stop
from hwbp.gdbserver.watchplan import Unsupported, ZType

log = logging.getLogger("hwbp.gdbserver")

SUPPORTED = (
    b"PacketSize=4000;QStartNoAckMode+;qXfer:features:read+;qXfer:auxv:read+;"
    b"qXfer:siginfo:read+;"
    b"swbreak+;hwbreak+;vContSupported+"
)
MAX_READ = 0x1000  # bytes per m reply (hex doubles it; PacketSize is 0x4000)
MONITOR_HELP = (
    "hwbp-gdbserver monitor commands:\n"
    "  monitor hwbp   this host's debug registers, CPU by CPU, and who holds them\n"
    "  monitor help   this text\n"
)


@dataclass(frozen=True, slots=True)
class Resume:
    actions: dict[int, Action]
    default: Action | None


@dataclass(frozen=True, slots=True)
class End:
    """The session is over: ``how`` is "detach" or "kill"; ``reply`` goes out first."""

    how: str
    reply: bytes | None


Outcome = bytes | Resume | End


def stop_reply(stop: Stop) -> bytes:
    if stop.kind == "exited":
        return b"W%02x" % (stop.signal & 0xFF)
    if stop.kind == "killed":
        return b"X%02x" % signals.to_gdb(stop.signal)
    return b"T%02x%sthread:%x;" % (signals.to_gdb(stop.signal), stop.reason, stop.tid)


def parse_vcont(body: bytes, current: int) -> Resume:
    """``vCont;ACTION[:TID];...``: the first action naming a thread wins, as specified."""
    actions: dict[int, Action] = {}
    default: Action | None = None
    for part in body.split(b";")[1:]:
        act, _, tid = part.partition(b":")
        kind = act[:1]
        if kind not in (b"c", b"C", b"s", b"S") or (kind in (b"c", b"s") and len(act) > 1):
            raise ValueError(f"vCont action {act!r} is not supported")
        sig = signals.from_gdb(parse_hex(act[1:], "signal")) if kind in (b"C", b"S") else 0
        action = Action(step=kind in (b"s", b"S"), signal=sig)
        if not tid or tid == b"-1":
            default = default or action
        else:
            t = parse_hex(tid, "thread id")
            actions.setdefault(current if t == 0 else t, action)
    return Resume(actions, default)


class Commands:
    """The state gdb sees between packets: threads selected, the last stop, ack mode."""

    def __init__(
        self,
        inferior: Inferior,
        points: HwPoints,
        monitor: Callable[[], str],
        initial: Stop,
    ) -> None:
        self.inf = inferior
        self.points = points
        self.monitor = monitor
        self.last_stop = initial
        self.g_thread = initial.tid  # Hg: registers and memory
        self.c_thread = -1  # Hc: legacy c/s
        self.no_ack = False  # set once QStartNoAckMode is answered
        self.output: list[str] = []  # monitor text to send as O packets before the reply

    def stopped(self, stop: Stop) -> bytes:
        self.last_stop = stop
        if stop.kind == "signal":
            self.g_thread = stop.tid
        return stop_reply(stop)

    def handle(self, payload: bytes) -> Outcome:
        try:
            return self._dispatch(payload)
        except Refused:
            return error(1)  # gdb: "Could not insert hardware watchpoint"; why is logged
        except (ValueError, TargetError) as e:
            log.info("packet %r refused: %s", payload[:40], e)
            return error(1)
        except OSError as e:
            log.info("packet %r failed: %s", payload[:40], e)
            return error(e.errno or 1)

    def _dispatch(self, p: bytes) -> Outcome:
        head = p[:1]
        if p.startswith(b"q") or p.startswith(b"Q"):
            return self._query(p)
        if p.startswith(b"v"):
            return self._v(p)
        simple: dict[bytes, Callable[[bytes], Outcome]] = {
            b"?": lambda _: stop_reply(self.last_stop),
            b"g": lambda _: self._read_all(),
            b"G": self._write_all,
            b"p": self._read_one,
            b"P": self._write_one,
            b"m": self._read_memory,
            b"M": self._write_memory,
            b"X": self._write_binary,
            b"Z": self._insert,
            b"z": self._remove,
            b"H": self._select_thread,
            b"T": self._thread_alive,
            b"c": self._legacy_resume,
            b"C": self._legacy_resume,
            b"s": self._legacy_resume,
            b"S": self._legacy_resume,
            b"D": lambda _: End("detach", OK),
            b"k": lambda _: End("kill", None),
        }
        handler = simple.get(head)
        return UNSUPPORTED if handler is None else handler(p)

    # --- queries ----------------------------------------------------------------------

    def _query(self, p: bytes) -> Outcome:
        name = p.partition(b":")[0]
        if name == b"qSupported":
            return SUPPORTED
        if p == b"QStartNoAckMode":
            self.no_ack = True
            return OK
        if p.startswith(b"qXfer:features:read:target.xml:"):
            return xfer_slice(regs.TARGET_XML, p.rsplit(b":", 1)[1])
        if p.startswith(b"qXfer:auxv:read::"):
            return xfer_slice(self.inf.auxv(), p.rsplit(b":", 1)[1])
        if p.startswith(b"qXfer:siginfo:read::"):
            return xfer_slice(self.inf.siginfo(self._current()), p.rsplit(b":", 1)[1])
        if p == b"qfThreadInfo":
            tids = sorted(self.inf.threads)
            return b"m" + b",".join(b"%x" % t for t in tids) if tids else b"l"
        if p == b"qsThreadInfo":
            return b"l"
        if p == b"qC":
            return b"QC%x" % self.g_thread
        if p == b"qAttached":
            return b"1" if self.inf.attached else b"0"
        if p.startswith(b"qThreadExtraInfo,"):
            tid = parse_hex(p.split(b",", 1)[1], "thread id")
            return hexlify(self.inf.thread_name(tid).encode())
        if p.startswith(b"qRcmd,"):
            return self._monitor(unhexlify(p.split(b",", 1)[1]).decode(errors="replace"))
        if name == b"qSymbol":
            return OK
        return UNSUPPORTED

    def _monitor(self, command: str) -> bytes:
        words = command.split()
        if words == ["hwbp"]:
            text = self.monitor()
        elif words in ([], ["help"]):
            text = MONITOR_HELP
        else:
            text = f"unknown monitor command {command!r}\n{MONITOR_HELP}"
        self.output.append(text)
        return OK

    def _v(self, p: bytes) -> Outcome:
        if p == b"vCont?":
            return b"vCont;c;C;s;S"
        if p.startswith(b"vCont;"):
            return parse_vcont(p, self._current())
        if p.startswith(b"vKill"):
            return End("kill", OK)
        return UNSUPPORTED  # vFile, vRun, vAttach...: gdb falls back to local files

    # --- threads ----------------------------------------------------------------------

    def _current(self) -> int:
        if self.g_thread in self.inf.threads:
            return self.g_thread
        return self.inf.pid if self.inf.pid in self.inf.threads else min(self.inf.threads)

    def _select_thread(self, p: bytes) -> bytes:
        which, tid_text = p[1:2], p[2:]
        tid = -1 if tid_text == b"-1" else parse_hex(tid_text, "thread id")
        if tid > 0 and tid not in self.inf.threads:
            return error(2)
        if which == b"g":
            self.g_thread = self._current() if tid <= 0 else tid
        elif which == b"c":
            self.c_thread = tid
        else:
            raise ValueError(f"H{which!r} selects no known operation")
        return OK

    def _thread_alive(self, p: bytes) -> bytes:
        return OK if parse_hex(p[1:], "thread id") in self.inf.threads else error(2)

    def _legacy_resume(self, p: bytes) -> Resume:
        step = p[:1] in (b"s", b"S")
        sig = 0
        if p[:1] in (b"C", b"S"):
            sig = signals.from_gdb(parse_hex(p[1:].split(b";")[0], "signal"))
        action = Action(step=step, signal=sig)
        if step or self.c_thread > 0:
            tid = self.c_thread if self.c_thread > 0 else self._current()
            return Resume({tid: action}, None)
        return Resume({}, action)

    # --- registers --------------------------------------------------------------------

    def _read_all(self) -> bytes:
        return hexlify(regs.read_all(*self.inf.registers(self._current())))

    def _write_all(self, p: bytes) -> bytes:
        tid = self._current()
        self.inf.set_registers(tid, *regs.write_all(unhexlify(p[1:]), *self.inf.registers(tid)))
        return OK

    def _read_one(self, p: bytes) -> bytes:
        n = parse_hex(p[1:], "register number")
        if not 0 <= n < len(regs.REGISTERS):
            return error(1)
        return hexlify(regs.read(n, *self.inf.registers(self._current())))

    def _write_one(self, p: bytes) -> bytes:
        num, sep, value = p[1:].partition(b"=")
        n = parse_hex(num, "register number")
        if not sep or not 0 <= n < len(regs.REGISTERS):
            return error(1)
        tid = self._current()
        self.inf.set_registers(tid, *regs.write(n, unhexlify(value), *self.inf.registers(tid)))
        return OK

    # --- memory -----------------------------------------------------------------------

    def _read_memory(self, p: bytes) -> bytes:
        addr, length = parse_addr_len(p[1:])
        return hexlify(self.inf.mem.read(addr, min(length, MAX_READ)))

    def _write_memory(self, p: bytes) -> bytes:
        where, sep, data = p[1:].partition(b":")
        addr, length = parse_addr_len(where)
        raw = unhexlify(data)
        if not sep or len(raw) != length:
            raise ValueError(f"M carries {len(raw)} bytes, announced {length}")
        self.inf.mem.write(addr, raw)
        return OK

    def _write_binary(self, p: bytes) -> bytes:
        where, sep, raw = p[1:].partition(b":")
        addr, length = parse_addr_len(where)
        if not sep or len(raw) != length:
            raise ValueError(f"X carries {len(raw)} bytes, announced {length}")
        if length:
            self.inf.mem.write(addr, raw)
        return OK

    # --- breakpoints and watchpoints -------------------------------------------------

    def _point(self, p: bytes) -> tuple[ZType, int, int]:
        fields = p[1:].split(b";")[0].split(b",")
        if len(fields) != 3:
            raise ValueError(f"expected TYPE,ADDR,KIND in {p[:40]!r}")
        ztype = ZType(parse_hex(fields[0], "breakpoint type"))
        return ztype, parse_hex(fields[1], "address"), parse_hex(fields[2], "kind")

    def _insert(self, p: bytes) -> bytes:
        ztype, addr, kind = self._point(p)
        if ztype is ZType.SOFTWARE:
            self.inf.mem.insert_sw(addr)
            return OK
        try:
            self.points.insert(ztype, addr, kind)
        except Unsupported:
            return UNSUPPORTED
        return OK

    def _remove(self, p: bytes) -> bytes:
        ztype, addr, kind = self._point(p)
        if ztype is ZType.SOFTWARE:
            return OK if self.inf.mem.remove_sw(addr) else error(2)
        if ztype is ZType.READ:
            return UNSUPPORTED
        return OK if self.points.remove(ztype, addr, kind) else error(2)
