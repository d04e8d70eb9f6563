"""hwbp-gdbserver: a gdbserver whose hardware watchpoints are arbitrated fleet-wide.

    hwbp-gdbserver [--arbiter ADDR] [--host NAME] HOST:PORT PROGRAM [ARGS...]
    hwbp-gdbserver [--arbiter ADDR] [--host NAME] --attach HOST:PORT PID

Serves one gdb connection (``target remote HOST:PORT``), then exits, releasing every
register it held and killing the program it launched or detaching from the one it
attached to (as gdb asked, when it did).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from types import FrameType

from hwbp.errors import HwbpError
from hwbp.gdbserver import hwpoints
from hwbp.gdbserver.bridge import ArbiterBridge
from hwbp.gdbserver.commands import Commands
from hwbp.gdbserver.hwpoints import HwPoints
from hwbp.gdbserver.memory import TargetError
from hwbp.gdbserver.rsp import Connection, Disconnected
from hwbp.gdbserver.server import Server
from hwbp.gdbserver.target import Inferior, Stop
from hwbp.gdbserver.watchplan import ZType

log = logging.getLogger("hwbp.gdbserver")

USAGE = (
    "%(prog)s [options] HOST:PORT PROGRAM [ARGS...]\n"
    "       %(prog)s [options] --attach HOST:PORT PID"
)


class Terminated(Exception):
    """SIGTERM or SIGINT: end the session as if gdb had gone away."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="hwbp-gdbserver", usage=USAGE, description=__doc__)
    p.add_argument("--arbiter", help="the arbiter (default: $HWBP_ARBITER, else 127.0.0.1:50051)")
    p.add_argument("--host", default=os.uname().nodename, help="this host's name in the fleet")
    p.add_argument("--ttl", type=float, default=10.0, help="session lease in seconds (10)")
    p.add_argument("--owner", help="holder name in the ledger (default gdbserver-PID)")
    p.add_argument("--attach", action="store_true", help="attach to PID instead of launching")
    p.add_argument("comm", metavar="HOST:PORT", help="where gdb connects (port 0: any free)")
    p.add_argument("program", nargs=argparse.REMAINDER, help="PROGRAM [ARGS...], or PID")
    args = p.parse_args(argv)
    host, sep, port = args.comm.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        p.error(f"HOST:PORT {args.comm!r} is not a host and a port number")
    args.listen = (host.strip("[]") or "127.0.0.1", int(port))
    if not args.program:
        p.error("give the PROGRAM to run, or --attach and a PID")
    if args.attach and (len(args.program) != 1 or not args.program[0].isdigit()):
        p.error(f"--attach takes one PID, got {' '.join(args.program)!r}")
    if not 0 < args.ttl <= 3600:
        p.error("--ttl must be in (0, 3600] seconds")
    args.owner = args.owner or f"gdbserver-{os.getpid()}"
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signal.Signals(signum).name)


def _wakeup_pipe() -> int:
    """A pipe SIGCHLD writes to, so the serving loop can select() on child events."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    return r


def _monitor(bridge: ArbiterBridge, points: HwPoints) -> str:
    try:
        text = bridge.slot_map()
    except HwbpError as e:
        text = f"hwbp: the arbiter cannot be asked: {e}\n"
    for rid, p in points.reservations().items():
        what = {ZType.HW_BREAK: "hardware breakpoint", ZType.ACCESS: "access watchpoint"}.get(
            p.ztype, "watchpoint"
        )
        state = (
            "removed by gdb while the program is stopped; released if it resumes without it"
            if p.parked
            else "inserted"
        )
        size = "" if p.ztype is ZType.HW_BREAK else f" ({p.kind} bytes)"
        text += f"this gdbserver holds {rid}: {what} at {p.addr:#x}{size}, {state}\n"
    if points.last_refusal:
        text += f"last refusal: {points.last_refusal}\n"
    return text


def _end(inf: Inferior, how: str) -> None:
    if inf.exit is not None:
        inf.close()
    elif how == "detach" or (how != "kill" and inf.attached):
        inf.detach()
    else:
        inf.kill()


def run(args: argparse.Namespace) -> int:
    why_not = hwpoints.probe()
    if why_not is not None:
        log.warning("hardware watchpoints will be refused: %s", why_not)
    try:
        if args.attach:
            inf = Inferior.attach(int(args.program[0]))
            print(f"Attached; pid = {inf.pid}", flush=True)
        else:
            inf = Inferior.launch(list(args.program))
            print(f"Process {args.program[0]} created; pid = {inf.pid}", flush=True)
    except TargetError as e:
        log.error("%s", e)
        return 1
    initial = Stop("signal", inf.pid, 0 if args.attach else signal.SIGTRAP)
    how = "disconnect"
    try:
        listener = socket.create_server(args.listen)
    except OSError as e:
        log.error("cannot listen on %s:%d: %s", *args.listen, e.strerror)
        _end(inf, how)
        return 1
    try:
        bridge = ArbiterBridge(args.arbiter, args.host, args.owner, args.ttl)
    except HwbpError as e:
        log.error("cannot open a session on the arbiter: %s", e)
        listener.close()
        _end(inf, how)
        return 1
    bridge.task = inf.pid
    points = HwPoints(bridge, inf.tids, log.warning)
    inf.hw_hits = lambda tid: [p.reason() for p in points.hits(tid)]
    inf.on_new_thread = points.thread_added
    inf.on_thread_gone = points.thread_gone
    try:
        wakeup = _wakeup_pipe()
        print(f"Listening on port {listener.getsockname()[1]}", flush=True)
        sock, peer = listener.accept()
        listener.close()
        print(f"Remote debugging from host {peer[0]}, port {peer[1]}", flush=True)
        commands = Commands(inf, points, lambda: _monitor(bridge, points), initial)
        how = Server(Connection(sock), commands, inf, points, wakeup).serve()
        sock.close()
    except Disconnected as e:
        if inf.exit is None:
            log.info("gdb went away (%s)", e)
    except Terminated as e:
        log.info("%s: ending the session", e)
    finally:
        listener.close()
        points.release_all()
        _end(inf, how)
        try:
            bridge.close()
        except HwbpError as e:
            log.warning("closing the session: %s (its lease will expire)", e)
    if inf.exit is not None and inf.exit.kind == "exited":
        print(f"Child exited with status {inf.exit.signal}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="hwbp-gdbserver: %(message)s")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _terminate)
    return run(args)
