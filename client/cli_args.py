"""hwbpctl's command line: parsing and validation, pure (no network, no grpc).

Every malformed invocation becomes a ``UsageError`` (exit 2, one line on stderr) before
anything is sent, so a typo can never reach the arbiter half-understood.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from typing import NoReturn

from hwbp.client.errors import UsageError

U32 = 2**32 - 1
U64 = 2**64 - 1
I64 = 2**63 - 1
DEFAULT_EXEC_LEN = 8
_NUMBER = re.compile(r"(0[xX][0-9a-fA-F]+|[0-9]+)")


def parse_number(text: str) -> int:
    """Decimal or 0x-hex, nothing else (no octal surprises from a leading zero)."""
    cleaned = text.strip()
    if not _NUMBER.fullmatch(cleaned):
        raise ValueError(f"expected a number (decimal or 0x-hex), got {text!r}")
    return int(cleaned, 16) if cleaned[:2].lower() == "0x" else int(cleaned, 10)


def number(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type`` accepting decimal/hex within [low, high]."""

    def convert(text: str) -> int:
        try:
            value = parse_number(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is out of range ({low}..{high:#x})")
        return value

    return convert


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


u32, u64, pid, count = number(0, U32), number(0, U64), number(1, I64), number(1, U32)


class Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage, so main() prints one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> Parser:
    p = Parser(prog="hwbpctl", description="Reserve and inspect x86 hardware debug registers.")
    p.add_argument(
        "--arbiter",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="the arbiter, or the replicas of a replicated one (calls follow the leader); "
        "default $HWBP_ARBITER or 127.0.0.1:50051",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--tls-cert", metavar="PEM", help="client certificate (default $HWBP_TLS_CERT)")
    p.add_argument("--tls-key", metavar="PEM", help="its private key (default $HWBP_TLS_KEY)")
    p.add_argument("--tls-ca", metavar="PEM", help="CA of the arbiter (default $HWBP_TLS_CA)")
    cmds = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    r = cmds.add_parser("reserve", help="reserve a debug register")
    r.add_argument("--host", required=True)
    r.add_argument("--system", action="store_true", help="every CPU of the host")
    r.add_argument("--cpu", type=u32)
    r.add_argument("--task", type=pid, metavar="PID")
    r.add_argument("--addr", type=u64, required=True)
    r.add_argument("--len", type=u32, help="1, 2, 4 or 8; required for w and rw (x: 8)")
    r.add_argument("--type", choices=("x", "w", "rw"), required=True)
    r.add_argument("--owner", default="")
    r.add_argument(
        "--kernel", action="store_true", help="may watch a kernel address (exclude_kernel clear)"
    )
    r.add_argument("--disabled", action="store_true", help="hold the slot, do not arm it")

    rel = cmds.add_parser("release", help="release a reservation")
    rel.add_argument("id", metavar="ID")
    _add_expect_owner(rel)

    m = cmds.add_parser("modify", help="change a reservation in place")
    m.add_argument("id", metavar="ID")
    m.add_argument("--addr", type=u64)
    m.add_argument("--len", type=u32)
    m.add_argument("--type", choices=("x", "w", "rw"))
    onoff = m.add_mutually_exclusive_group()
    onoff.add_argument("--enable", dest="enabled", action="store_const", const=True)
    onoff.add_argument("--disable", dest="enabled", action="store_const", const=False)
    _add_expect_owner(m)

    cmds.add_parser("cluster", help="the replicas of a replicated arbiter and their roles")
    ls = cmds.add_parser("ls", help="list reservations")
    ls.add_argument("--host")
    cpus = cmds.add_parser("cpus", help="per-CPU inventory")
    cpus.add_argument("--host")
    cpus.add_argument(
        "--wide", action="store_true", help="also pending changes, backend, why a link is down"
    )
    top = cmds.add_parser("top", help="live view of hosts x CPUs x DR0-DR3 (Ctrl-C quits)")
    top.add_argument("--host")
    top.add_argument("--interval", type=seconds, default=1.0, metavar="S", help="default 1")
    top.add_argument("--once", action="store_true", help="print one frame and exit")

    w = cmds.add_parser("watch", help="stream events (hits, reloads, NACKs, releases)")
    w.add_argument("--host")
    w.add_argument("--task", type=pid, metavar="PID")
    w.add_argument(
        "--announce",
        action="store_true",
        help="first print a 'subscribed' event, once every later event will be shown",
    )
    w.add_argument(
        "--since",
        type=number(0, (1 << 63) - 1),
        metavar="SEQ",
        help="first replay the kept change events after #SEQ (the last one you saw; 0: all "
        "kept), like etcdctl's --rev; default: only what happens from now on",
    )
    w.add_argument(
        "--no-reconnect",
        dest="reconnect",
        action="store_false",
        help="end with an error when the arbiter goes away (default: reconnect with "
        "backoff and resume after the last #seq shown, saying so on stderr)",
    )
    _add_stop_args(w)

    sim = cmds.add_parser("sim", help="drive simulated CPUs").add_subparsers(
        dest="sim_command", metavar="SIMCOMMAND", required=True
    )
    sw = sim.add_parser("switch", help="make a task current on a CPU")
    sw.add_argument("--host", required=True)
    sw.add_argument("--cpu", type=u32, required=True)
    who = sw.add_mutually_exclusive_group(required=True)
    who.add_argument("--task", type=pid, metavar="PID")
    who.add_argument("--idle", action="store_true", help="no task: the CPU goes idle")
    acc = sim.add_parser("access", help="a memory access by the CPU's current task")
    acc.add_argument("--host", required=True)
    acc.add_argument("--cpu", type=u32, required=True)
    acc.add_argument("--addr", type=u64, required=True)
    acc.add_argument("--len", type=u32, required=True)
    acc.add_argument("--type", choices=("r", "w", "x"), required=True)
    ex = sim.add_parser("exit", help="the task exits")
    ex.add_argument("--host", required=True)
    ex.add_argument("--task", type=pid, metavar="PID", required=True)

    pt = cmds.add_parser("ptrace", help="PTRACE_PEEKUSER/POKEUSER on u_debugreg").add_subparsers(
        dest="ptrace_command", metavar="PTRACECOMMAND", required=True
    )
    peek = _task_parser(pt, "peek", "read DR<reg> of a task")
    peek.add_argument("--reg", type=u32, required=True)
    poke = _task_parser(pt, "poke", "write DR<reg> of a task (persists until flushed)")
    poke.add_argument("--reg", type=u32, required=True)
    poke.add_argument("--value", type=u64, required=True)
    _task_parser(pt, "detach", "stop tracing a task; it keeps its breakpoints, as in the kernel")
    _task_parser(pt, "flush", "drop the task's ptrace breakpoints, as its exit or exec would")
    _add_stop_args(_task_parser(pt, "watch", "stream the task's traps"))
    return p


def _task_parser(
    sub: argparse._SubParsersAction[Parser], name: str, help_text: str
) -> argparse.ArgumentParser:
    sp = sub.add_parser(name, help=help_text)
    sp.add_argument("--host", required=True)
    sp.add_argument("--task", type=pid, metavar="PID", required=True)
    return sp


def _add_expect_owner(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--expect-owner",
        metavar="NAME",
        help="refuse unless the reservation belongs to NAME (guards against a reused id)",
    )


def _add_stop_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--count", type=count, metavar="N", help="stop after N events")
    sp.add_argument("--timeout", type=seconds, metavar="S", help="stop after S seconds")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and check an invocation; raises UsageError on anything malformed."""
    args = build_parser().parse_args(argv)
    if hasattr(args, "expect_owner"):
        if args.expect_owner is not None and not args.expect_owner.strip():
            # An empty owner would silently mean "no check": say so instead.
            raise UsageError(f"hwbpctl {args.command}: --expect-owner needs a name")
        args.expect_owner = args.expect_owner or ""
    if args.command == "reserve":
        _check_reserve(args)
    elif args.command == "modify" and all(
        getattr(args, k) is None for k in ("addr", "len", "type", "enabled")
    ):
        raise UsageError(
            "hwbpctl modify: nothing to change (give --addr, --len, --type, --enable or --disable)"
        )
    return args


def _check_reserve(args: argparse.Namespace) -> None:
    if args.system and (args.cpu is not None or args.task is not None):
        raise UsageError("hwbpctl reserve: --system takes neither --cpu nor --task")
    if not args.system and args.cpu is None and args.task is None:
        raise UsageError("hwbpctl reserve: give --system, --cpu N or --task PID [--cpu N]")
    if args.len is None:
        if args.type != "x":
            raise UsageError(f"hwbpctl reserve: --len is required for --type {args.type}")
        args.len = DEFAULT_EXEC_LEN
