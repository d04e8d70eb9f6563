"""hwbpctl's command line: parsing and validation, pure (no network, no grpc).

Every malformed invocation becomes a ``UsageError`` (exit 2, one line on stderr) before
anything is sent, so a typo can never reach the arbiter half-understood.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import socket
from collections.abc import Callable, Sequence
from typing import NoReturn

from hwbp.client.errors import UsageError
from hwbp.wire import helpformat

U32 = 2**32 - 1
U64 = 2**64 - 1
I64 = 2**63 - 1
DEFAULT_EXEC_LEN = 8
OUTPUTS = ("json", "wide")
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


def default_owner() -> str:
    """``$USER@hostname``: who holds what this CLI reserves, when --owner is not given (under
    TLS the arbiter records the certificate's identity instead)."""
    user = os.environ.get("USER") or os.environ.get("LOGNAME")
    if not user:
        try:
            user = getpass.getuser()
        except (OSError, KeyError):  # no passwd entry (a bare container)
            user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def add_global_options(p: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """The options every command takes, before or after its name.

    On the subcommands (``suppress``) an option that is not given sets nothing, so a
    value given before the subcommand is kept: ``hwbpctl --json ls`` and ``hwbpctl ls
    --json`` mean the same.
    """

    def dflt(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    g = p.add_argument_group("global options (before or after the command)")
    g.add_argument(
        "--arbiter",
        metavar="HOST:PORT[,HOST:PORT...]",
        default=dflt(None),
        help="the arbiter, or the replicas of a replicated one (calls follow the leader); "
        "default $HWBP_ARBITER or 127.0.0.1:50051",
    )
    g.add_argument(
        "--json",
        action="store_true",
        default=dflt(False),
        help="machine-readable output: one JSON document (an error too)",
    )
    g.add_argument(
        "-o",
        "--output",
        choices=OUTPUTS,
        default=dflt(None),
        help="json: as --json; wide: the wide table where the command has one (default: the table)",
    )
    for flag, what, env in (
        ("--tls-cert", "client certificate", "HWBP_TLS_CERT"),
        ("--tls-key", "its private key", "HWBP_TLS_KEY"),
        ("--tls-ca", "CA of the arbiter", "HWBP_TLS_CA"),
    ):
        g.add_argument(flag, metavar="PEM", default=dflt(None), help=f"{what} (default ${env})")


def _finish(p: argparse.ArgumentParser) -> None:
    """Every command's parser takes the global options and states its defaults."""
    for sub in helpformat.walk(p):
        sub.formatter_class = helpformat.DefaultsHelpFormatter
        if sub is not p:
            add_global_options(sub, suppress=True)


def build_parser() -> Parser:
    p = Parser(
        prog="hwbpctl",
        description="Reserve and inspect x86 hardware debug registers.",
        formatter_class=helpformat.DefaultsHelpFormatter,
    )
    helpformat.add_version(p)
    add_global_options(p)
    cmds = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    r = cmds.add_parser("reserve", help="reserve a debug register")
    r.add_argument("--host", required=True, help="the host, as its agents name it")
    r.add_argument("--system", action="store_true", help="every CPU of the host")
    r.add_argument("--cpu", type=u32, help="one CPU (with --task: that task on that CPU)")
    r.add_argument("--task", type=pid, metavar="TID", help="one thread (the kernel's task)")
    r.add_argument(
        "--pid",
        type=pid,
        metavar="PID",
        help="every thread of the process, present and future (run on its host: its "
        "threads are listed from /proc)",
    )
    r.add_argument("--addr", type=u64, help="the address watched")
    r.add_argument(
        "--symbol",
        metavar="[OBJECT:]NAME",
        help="instead of --addr: a global of the --pid/--task process, from the symbol "
        "tables of its executable and shared objects (run on its host)",
    )
    r.add_argument(
        "--len",
        type=u32,
        help="1, 2, 4 or 8; required for w and rw (x: 8; --symbol: the symbol's size)",
    )
    r.add_argument(
        "--type", choices=("x", "w", "rw"), required=True, help="execute, write, read/write"
    )
    r.add_argument(
        "--owner",
        default=default_owner(),
        help="holder named in the ledger and in refusals; "
        "under TLS the certificate's identity is recorded instead "
        "(default: $USER@hostname, here %(default)s)",
    )
    r.add_argument(
        "--kernel", action="store_true", help="may watch a kernel address (exclude_kernel clear)"
    )
    r.add_argument("--disabled", action="store_true", help="hold the slot, do not arm it")

    rel = cmds.add_parser("release", help="release reservations (each one said, in order)")
    rel.add_argument("ids", metavar="ID", nargs="+", help="the reservations to release")
    _add_expect_owner(rel)

    m = cmds.add_parser("modify", help="change a reservation in place")
    m.add_argument("id", metavar="ID", help="the reservation to change")
    m.add_argument("--addr", type=u64, help="new address (default: unchanged)")
    m.add_argument("--len", type=u32, help="new length (default: unchanged)")
    m.add_argument("--type", choices=("x", "w", "rw"), help="new type (default: unchanged)")
    onoff = m.add_mutually_exclusive_group()
    onoff.add_argument("--enable", dest="enabled", action="store_const", const=True, help="arm it")
    onoff.add_argument(
        "--disable",
        dest="enabled",
        action="store_const",
        const=False,
        help="keep the slot, disarm it",
    )
    _add_expect_owner(m)

    cmds.add_parser("cluster", help="the replicas of a replicated arbiter and their roles")
    ls = cmds.add_parser("ls", help="list reservations")
    ls.add_argument("--host", help="only this host's (default: every host)")
    ls.add_argument("--owner", metavar="NAME", help="only this owner's (default: anyone's)")
    ls.add_argument("--session", metavar="ID", help="only this session's (default: any, or none)")
    ss = cmds.add_parser("sessions", help="open sessions: owner, lease, what each holds")
    ss.add_argument("--owner", metavar="NAME", help="only this owner's (default: anyone's)")
    ss.add_argument("--wide", action="store_true", help="also the hosts each holds something on")
    cpus = cmds.add_parser("cpus", help="per-CPU inventory")
    cpus.add_argument("--host", help="only this host's CPUs (default: every host)")
    cpus.add_argument(
        "--wide", action="store_true", help="also pending changes, backend, why a link is down"
    )
    top = cmds.add_parser("top", help="live view of hosts x CPUs x DR0-DR3 (q or Ctrl-C quits)")
    top.add_argument("--host", help="only this host (default: every host)")
    top.add_argument(
        "--interval", type=seconds, default=1.0, metavar="S", help="seconds between refreshes"
    )
    top.add_argument("--once", action="store_true", help="print one frame and exit")

    w = cmds.add_parser("watch", help="stream events (hits, reloads, NACKs, releases)")
    w.add_argument("--host", help="only this host's events (default: every host)")
    w.add_argument("--task", type=pid, metavar="PID", help="only this task's (default: any)")
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
    _host_cpu(sw)
    who = sw.add_mutually_exclusive_group(required=True)
    who.add_argument("--task", type=pid, metavar="PID", help="the task switched in")
    who.add_argument("--idle", action="store_true", help="no task: the CPU goes idle")
    acc = sim.add_parser("access", help="a memory access by the CPU's current task")
    _host_cpu(acc)
    acc.add_argument("--addr", type=u64, required=True, help="the first byte accessed")
    acc.add_argument("--len", type=u32, required=True, help="bytes accessed")
    acc.add_argument(
        "--type", choices=("r", "w", "x"), required=True, help="read, write or execute"
    )
    ex = sim.add_parser("exit", help="the task exits")
    ex.add_argument("--host", required=True, help="the simulated host")
    ex.add_argument("--task", type=pid, metavar="PID", required=True, help="the task that exits")

    pt = cmds.add_parser("ptrace", help="PTRACE_PEEKUSER/POKEUSER on u_debugreg").add_subparsers(
        dest="ptrace_command", metavar="PTRACECOMMAND", required=True
    )
    peek = _task_parser(pt, "peek", "read DR<reg> of a task")
    peek.add_argument("--reg", type=u32, required=True, help="u_debugreg index 0..7")
    poke = _task_parser(pt, "poke", "write DR<reg> of a task (persists until flushed)")
    poke.add_argument("--reg", type=u32, required=True, help="u_debugreg index 0..7")
    poke.add_argument("--value", type=u64, required=True, help="the value written")
    _task_parser(pt, "detach", "stop tracing a task; it keeps its breakpoints, as in the kernel")
    _task_parser(pt, "flush", "drop the task's ptrace breakpoints, as its exit or exec would")
    _add_stop_args(_task_parser(pt, "watch", "stream the task's traps"))

    hosts = cmds.add_parser("host", help="manage hosts (admin)").add_subparsers(
        dest="host_command", metavar="HOSTCOMMAND", required=True
    )
    forget = hosts.add_parser(
        "forget",
        help="retire a host with no reservations, traced tasks or agents left: it leaves the "
        "inventory and the ledger, and a later agent of that name registers it afresh",
    )
    forget.add_argument("name", metavar="HOST", help="the host to retire")
    _finish(p)
    return p


def _task_parser(
    sub: argparse._SubParsersAction[Parser], name: str, help_text: str
) -> argparse.ArgumentParser:
    sp = sub.add_parser(name, help=help_text)
    sp.add_argument("--host", required=True, help="the host the task runs on")
    sp.add_argument("--task", type=pid, metavar="PID", required=True, help="the traced task")
    return sp


def _host_cpu(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--host", required=True, help="the simulated host")
    sp.add_argument("--cpu", type=u32, required=True, help="its CPU")


def _add_expect_owner(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--expect-owner",
        metavar="NAME",
        help="refuse unless the reservation belongs to NAME (guards against a reused id; "
        "default: no check)",
    )


def _add_stop_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--count", type=count, metavar="N", help="stop after N events (default: no limit)"
    )
    sp.add_argument(
        "--timeout", type=seconds, metavar="S", help="stop after S seconds (default: none)"
    )


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and check an invocation; raises UsageError on anything malformed."""
    args = build_parser().parse_args(argv)
    _check_output(args)
    if hasattr(args, "expect_owner"):
        if args.expect_owner is not None and not args.expect_owner.strip():
            # An empty owner would silently mean "no check": say so instead.
            raise UsageError(f"hwbpctl {args.command}: --expect-owner needs a name")
        args.expect_owner = args.expect_owner or ""
    if args.command == "release":
        args.ids = list(dict.fromkeys(args.ids))  # one answer per id, however often named
    if args.command == "reserve":
        _check_reserve(args)
    elif args.command == "modify" and all(
        getattr(args, k) is None for k in ("addr", "len", "type", "enabled")
    ):
        raise UsageError(
            "hwbpctl modify: nothing to change (give --addr, --len, --type, --enable or --disable)"
        )
    return args


def _check_output(args: argparse.Namespace) -> None:
    """``-o json`` is --json; ``-o wide`` the wide table where a command has one."""
    if args.output == "json":
        args.json = True
    elif args.output == "wide":
        if args.json:
            raise UsageError(f"hwbpctl {args.command}: -o wide contradicts --json")
        if hasattr(args, "wide"):
            args.wide = True


def wants_json(argv: Sequence[str]) -> bool:
    """Whether an invocation asked for JSON, read from its words alone: a usage error is
    found before there is a parsed namespace to ask, and must be JSON all the same."""
    words = list(argv)
    for i, word in enumerate(words):
        if word == "--":
            break
        if word in ("--json", "-ojson", "--output=json"):
            return True
        if word in ("-o", "--output") and words[i + 1 : i + 2] == ["json"]:
            return True
    return False


def _check_reserve(args: argparse.Namespace) -> None:
    if not args.owner.strip():
        raise UsageError("hwbpctl reserve: --owner needs a name (leave it out for $USER@hostname)")
    if args.system and (args.cpu is not None or args.task is not None or args.pid is not None):
        raise UsageError("hwbpctl reserve: --system takes neither --cpu, --task nor --pid")
    if args.pid is not None and (args.task is not None or args.cpu is not None):
        raise UsageError("hwbpctl reserve: --pid takes neither --task nor --cpu")
    if not args.system and args.cpu is None and args.task is None and args.pid is None:
        raise UsageError(
            "hwbpctl reserve: give --system, --cpu N, --task TID [--cpu N] or --pid PID"
        )
    if (args.addr is None) == (args.symbol is None):
        raise UsageError("hwbpctl reserve: give one of --addr A or --symbol NAME")
    if args.symbol is not None and args.pid is None and args.task is None:
        raise UsageError("hwbpctl reserve: --symbol needs the process: --pid PID or --task TID")
    if args.len is None and args.symbol is not None:
        return  # the symbol's size, once resolved
    if args.len is None:
        if args.type != "x":
            raise UsageError(f"hwbpctl reserve: --len is required for --type {args.type}")
        args.len = DEFAULT_EXEC_LEN
