"""hwbpctl: the command line over the SDK.

main() is the only place errors become exit codes and one-line messages: whatever goes
wrong, a person sees one line saying what, and a script sees the code from
``client.errors.EXIT_CODES``. Never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO, TypeVar

from hwbp.client import cli_render as render
from hwbp.client import cluster, top
from hwbp.client.cli_args import parse, wants_json
from hwbp.client.cli_errors import error_json
from hwbp.client.errors import ExitCode, NoFreeSlot, Unavailable, exit_code_for
from hwbp.client.sdk import Client
from hwbp.client.values import Change, EventKind
from hwbp.client.wire import endpoint_or_default
from hwbp.errors import HwbpError
from hwbp.wire import procfs, symbols
from hwbp.wire.tls import TlsConfig, TlsConfigError

T = TypeVar("T")
SUBSCRIBED = EventKind.SUBSCRIBED
Handler = Callable[[Client, argparse.Namespace, TextIO], ExitCode]


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    as_json = wants_json(words)  # before parsing: a usage error is JSON too when asked
    args: argparse.Namespace | None = None
    # Ctrl-C ends `watch` and `top` cleanly even when we were started with SIGINT ignored
    # (as a shell starts background jobs).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        args = parse(words)
        as_json = bool(args.json)
        tls = TlsConfig.resolve(args.tls_cert, args.tls_key, args.tls_ca)
        with Client(args.arbiter, tls=tls) as client:
            return int(_handler(args)(client, args, sys.stdout))
    except HwbpError as e:
        return _fail(_message(e, args), exit_code_for(e), e, as_json)
    except TlsConfigError as e:
        return _fail(str(e), ExitCode.USAGE, e, as_json)
    except KeyboardInterrupt as e:
        return _fail("interrupted", ExitCode.UNEXPECTED, e, as_json)
    except BrokenPipeError:
        # The reader went away (hwbpctl ls | head): not our failure. Point stdout at
        # /dev/null so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(ExitCode.OK)
    except Exception as e:  # the last line of defence: one line, never a traceback
        message = f"unexpected error: {type(e).__name__}: {e}"
        return _fail(message, ExitCode.UNEXPECTED, e, as_json)


def _message(e: HwbpError, args: argparse.Namespace | None) -> str:
    """The line a person reads for ``e``."""
    if isinstance(e, NoFreeSlot):
        # The holders as data: each one's session, age and lease.
        return render.no_free_slot_line(e)
    if isinstance(e, Unavailable) and args is not None:
        # Name the endpoint we tried: the usual cause is pointing at the wrong one.
        return f"{e} (arbiter {endpoint_or_default(args.arbiter)})"
    return str(e)


def _fail(message: str, code: ExitCode, err: BaseException | None, as_json: bool) -> int:
    """One line on stderr; with --json, also the error as one document on stdout."""
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    first = first.removeprefix("hwbpctl: ")
    if as_json:
        with contextlib.suppress(OSError):  # stdout is gone (a closed pipe): stderr says it
            render.dump(error_json(err, code, first), sys.stdout)
    if not first.startswith("hwbpctl"):
        first = f"hwbpctl: {first}"
    print(first, file=sys.stderr)
    return int(code)


def _handler(args: argparse.Namespace) -> Handler:
    name = args.command
    if name == "sim":
        name = f"sim_{args.sim_command}"
    elif name == "ptrace":
        name = f"ptrace_{args.ptrace_command}"
    elif name == "host":
        name = f"host_{args.host_command}"
    return _HANDLERS[name]


def _show(args: argparse.Namespace, out: TextIO, doc: Any, text: str) -> ExitCode:
    if args.json:
        render.dump(doc, out)
    else:
        out.write(text + "\n")
        out.flush()
    return ExitCode.OK


def _follow(
    args: argparse.Namespace,
    out: TextIO,
    items: Iterator[T],
    to_json: Callable[[T], Any],
    to_text: Callable[[T], str],
    counts: Callable[[T], bool] = lambda item: True,
) -> ExitCode:
    """Print a stream item by item until --count items (those that ``counts``), --timeout
    seconds, or Ctrl-C."""
    seen = 0
    try:
        for item in items:
            _show(args, out, to_json(item), to_text(item))
            seen += counts(item)
            if args.count is not None and seen >= args.count:
                break
    except KeyboardInterrupt:
        pass  # the usual way to stop watching
    return ExitCode.OK


# --- commands -------------------------------------------------------------------------


def _reserve(c: Client, a: argparse.Namespace, out: TextIO) -> ExitCode:
    addr, length = a.addr, a.len
    if a.symbol is not None:  # resolved here, where the process runs (as gdb and perf do)
        sym = symbols.resolve(a.pid if a.pid is not None else a.task, a.symbol)
        addr, length = sym.addr, sym.watch_len() if length is None else length
    h = c.reserve(
        a.host,
        system=a.system,
        cpu=a.cpu,
        task=a.task,
        pid=a.pid,
        threads=() if a.pid is None else procfs.threads_of(a.pid),
        addr=addr,
        len=length,
        type=a.type,
        owner=a.owner,
        kernel=a.kernel,
        enabled=not a.disabled,
    )
    _warn_pending("reserve", h.change)
    return _show(a, out, render.change_json(h.change), h.id)


def _release_one(c: Client, rid: str, a: argparse.Namespace) -> dict[str, Any]:
    done = c.release(rid, expect_owner=a.expect_owner)
    if done is None:
        # A retry found it gone: our first attempt released it, and its answer (where the
        # release is applied) was lost. null says "unknown", not "nowhere".
        doc: dict[str, Any] = {"id": rid, "applied_cpus": None, "pending_cpus": None}
    else:
        _warn_pending("release", done)
        doc = render.change_json(done)
    return {**doc, "released": True}


def _release(c: Client, a: argparse.Namespace, out: TextIO) -> ExitCode:
    """One id: its document, or its error as any command's. Several: each released or
    refused on its own, said per id in order (with --json, a list of the per-id objects);
    the exit code is the first failure's."""
    if len(a.ids) == 1:
        return _show(a, out, _release_one(c, a.ids[0], a), f"released {a.ids[0]}")
    docs: list[dict[str, Any]] = []
    failed: ExitCode | None = None
    unreachable: HwbpError | None = None
    for rid in a.ids:
        if unreachable is not None:  # the rest would only wait for the same answer
            err, message = unreachable, f"not tried: {_message(unreachable, a)}"
        else:
            try:
                doc = _release_one(c, rid, a)
            except HwbpError as e:
                err, message = e, _message(e, a)
                unreachable = e if isinstance(e, Unavailable) else None
            else:
                docs.append(doc)
                if not a.json:
                    out.write(f"released {rid}\n")
                    out.flush()
                continue
        code = exit_code_for(err)
        failed = failed or code
        docs.append({"id": rid, "released": False, "error": error_json(err, code, message)})
        print(f"hwbpctl: release {rid}: {message}", file=sys.stderr, flush=True)
    if a.json:
        render.dump(docs, out)
    return failed or ExitCode.OK


def _modify(c: Client, a: argparse.Namespace, out: TextIO) -> ExitCode:
    done = c.modify(
        a.id, addr=a.addr, len=a.len, type=a.type, enabled=a.enabled, expect_owner=a.expect_owner
    )
    _warn_pending("modify", done)
    return _show(a, out, render.change_json(done), render.reservations_table([done.reservation]))


def _warn_pending(verb: str, change: Change) -> None:
    """Committed is not applied everywhere: say where it is not yet, on stderr."""
    line = render.pending_warning(verb, change)
    if line is not None:
        print(line, file=sys.stderr, flush=True)


def _cluster(c: Client, a: argparse.Namespace, out: TextIO) -> ExitCode:
    found = cluster.members(c.endpoints.addresses, c.tls)
    if all(m.role == "unreachable" for m in found):
        raise Unavailable(f"no replica answered: {', '.join(m.address for m in found)}")
    return _show(a, out, cluster.document(found), cluster.table(found))


def _ls(c: Client, a: argparse.Namespace, out: TextIO) -> ExitCode:
    items = c.list(a.host, session_id=a.session or "", owner=a.owner or "")
    return _show(a, out, render.jsonable(items), render.reservations_table(items))


def _sessions(c: Client, a: argparse.Namespace, out: TextIO) -> ExitCode:
    items = c.sessions(a.owner or "")
    now = datetime.now(UTC)
    docs = [render.session_json(s, now) for s in items]
    return _show(a, out, docs, render.sessions_table(items, now, wide=a.wide))


def _cpus(c: Client, a: argparse.Namespace, out: TextIO) -> ExitCode:
    items = c.inventory(a.host)
    text = render.cpus_table(items, wide=a.wide)
    return _show(a, out, [render.cpu_json(x) for x in items], text)


def _top(c: Client, a: argparse.Namespace, out: TextIO) -> ExitCode:
    title = f"hwbpctl top: {c.endpoint}"
    top.run(
        functools.partial(c.inventory, a.host),
        out,
        interval=a.interval,
        once=a.once,
        as_json=a.json,
        title=title,
        keys=sys.stdin,
    )
    return ExitCode.OK


def _watch(c: Client, a: argparse.Namespace, out: TextIO) -> ExitCode:
    events = c.watch(
        a.host,
        a.task,
        timeout=a.timeout,
        announce_subscribed=a.announce,
        since=a.since,
        resume=a.reconnect,
        on_state=_say,
    )
    # --count counts events; the subscribed marker only says when they start.
    return _follow(
        a, out, events, render.jsonable, render.event_line, lambda e: e.kind is not SUBSCRIBED
    )


def _say(line: str) -> None:
    """A watch's change of state (lost, reconnected): one line on stderr, never stdout."""
    print(f"hwbpctl: {line}", file=sys.stderr, flush=True)


def _sim_switch(c: Client, a: argparse.Namespace, out: TextIO) -> ExitCode:
    image = c.context_switch(a.host, a.cpu, None if a.idle else a.task)
    return _show(a, out, render.jsonable(image), render.registers_line(image))


def _sim_access(c: Client, a: argparse.Namespace, out: TextIO) -> ExitCode:
    result = c.access(a.host, a.cpu, a.addr, a.len, a.type)
    return _show(a, out, render.access_json(result), render.access_line(result))


def _sim_exit(c: Client, a: argparse.Namespace, out: TextIO) -> ExitCode:
    n = c.exit_task(a.host, a.task)
    return _show(a, out, {"released": n}, f"task {a.task} exited: {n} released")


def _ptrace_peek(c: Client, a: argparse.Namespace, out: TextIO) -> ExitCode:
    value = c.ptrace(a.host, a.task).peek(a.reg)
    return _show(a, out, {"value": value}, render.hx(value))


def _ptrace_poke(c: Client, a: argparse.Namespace, out: TextIO) -> ExitCode:
    gen = c.ptrace(a.host, a.task).poke(a.reg, a.value)
    doc = {"host": a.host, "task": a.task, "reg": a.reg, "value": a.value, "generation": gen}
    return _show(a, out, doc, f"DR{a.reg} of task {a.task} = {render.hx(a.value)}")


def _ptrace_detach(c: Client, a: argparse.Namespace, out: TextIO) -> ExitCode:
    n = c.ptrace(a.host, a.task).detach()
    text = f"detached task {a.task}: its debug registers stay until `ptrace flush` or its exit"
    return _show(a, out, {"released": n}, text)


def _ptrace_flush(c: Client, a: argparse.Namespace, out: TextIO) -> ExitCode:
    n = c.ptrace(a.host, a.task).flush()
    return _show(a, out, {"released": n}, f"flushed task {a.task}: {n} released")


def _ptrace_watch(c: Client, a: argparse.Namespace, out: TextIO) -> ExitCode:
    traps = c.ptrace(a.host, a.task).traps(timeout=a.timeout)
    return _follow(a, out, traps, render.jsonable, render.trap_line)


def _host_forget(c: Client, a: argparse.Namespace, out: TextIO) -> ExitCode:
    gone = c.forget_host(a.name)
    # None: a retry found it unknown, so our first attempt forgot it (its answer was lost).
    doc = {"host": a.name, "forgotten": True, "ncpus": gone.ncpus if gone else None}
    cpus = f" ({gone.ncpus} cpus)" if gone else ""
    return _show(a, out, doc, f"forgot host {a.name}{cpus}")


_HANDLERS: dict[str, Handler] = {
    "reserve": _reserve,
    "release": _release,
    "modify": _modify,
    "cluster": _cluster,
    "ls": _ls,
    "sessions": _sessions,
    "cpus": _cpus,
    "top": _top,
    "watch": _watch,
    "sim_switch": _sim_switch,
    "sim_access": _sim_access,
    "sim_exit": _sim_exit,
    "ptrace_peek": _ptrace_peek,
    "ptrace_poke": _ptrace_poke,
    "ptrace_detach": _ptrace_detach,
    "ptrace_flush": _ptrace_flush,
    "ptrace_watch": _ptrace_watch,
    "host_forget": _host_forget,
}
