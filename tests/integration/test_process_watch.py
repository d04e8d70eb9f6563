"""Watch a whole process by symbol: real kernel, real arbiter and perf agents, real CLI.

A two-thread C program (compiled here) writes a global; ``hwbpctl reserve --pid
--symbol`` covers every thread of it, those that exist and those it creates later, and
every write is reported naming the thread that made it. Skips only where the kernel
refuses perf_event_open hardware breakpoints, saying why.
"""

from __future__ import annotations

import errno
import os
import re
import select
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hwbp.agent import perf_sys as ps
from hwbp.agent.perf import probe
from hwbp.errors import NoFreeSlot
from hwbp.ledger import HostLedger
from hwbp.load.procs import child_env
from hwbp.model import BpType, Breakpoint, Reservation, Scope, Target
from hwbp.wire import procfs, symbols
from tests.integration import procs
from tests.integration.c_targets import Threads, compile_c
from tests.integration.targets import need_every_register

_reason = probe()
if _reason is not None:
    pytest.skip(f"the kernel refuses hardware breakpoints here: {_reason}", allow_module_level=True)

pytestmark = pytest.mark.kernel
HOST = os.uname().nodename  # the agents' default name: hwbpctl names IPs on its own host
CPUS = os.cpu_count() or 1
HIT = re.compile(
    r"^hit (?P<id>r\d+) via DR\d on (?P<host>\S+) cpu \d+ task (?P<task>\d+) "
    r"thread (?P<tid>\d+): addr (?P<addr>0x[0-9a-f]+) accessed \S+ DR6=\S+ "
    r"ip 0x[0-9a-f]+ (?P<where>\S+)(?: \((?P<line>[^)]*)\))?$"
)


@pytest.fixture(scope="module")
def host(arbiter: str) -> Iterator[str]:
    with procs.perf_agents(arbiter, HOST, CPUS) as name:
        yield name


@pytest.fixture(scope="module")
def exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_c("threads", tmp_path_factory.mktemp("c"))


@pytest.fixture
def program(exe: Path) -> Iterator[Threads]:
    t = Threads(exe)
    try:
        yield t
    finally:
        t.kill()


class Watch:
    """``hwbpctl watch`` as its own process, started before the writes."""

    def __init__(self, arbiter: str, count: int) -> None:
        argv = [procs.PY, "-m", "hwbp.client", "--arbiter", arbiter, "watch", "--host", HOST]
        self.proc = subprocess.Popen(
            [*argv, "--count", str(count), "--timeout", "30", "--announce"],
            cwd=procs.ROOT,
            env=child_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        first = self._line()
        assert first.startswith("subscribed"), first

    def _line(self) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        assert ready, "hwbpctl watch said nothing"
        line: str = self.proc.stdout.readline()
        return line.rstrip("\n")

    def hits(self) -> list[re.Match[str]]:
        """Every line until it exits (after --count events), parsed as hits."""
        assert self.proc.stdout is not None
        out, _ = self.proc.communicate(timeout=40)
        lines = [ln for ln in out.splitlines() if ln.startswith("hit ")]
        parsed = [HIT.match(ln) for ln in lines]
        assert all(parsed), lines
        return [m for m in parsed if m is not None]


def reserve(arbiter: str, *args: str) -> procs.CliResult:
    return procs.cli(arbiter, "reserve", "--host", HOST, *args, as_json=False)


def test_every_write_of_the_second_thread_is_reported_with_its_thread(
    arbiter: str, host: str, program: Threads
) -> None:
    r = reserve(arbiter, "--pid", str(program.pid), "--symbol", "counter", "--type", "w")
    assert r.code == 0, r.err
    rid = r.out.strip()
    try:
        listed = procs.cli(arbiter, "ls", "--host", HOST).json()
        mine = next(x for x in listed if x["id"] == rid)
        assert (mine["scope"], mine["task"]) == ("process", program.pid)
        assert mine["threads"] == [program.pid, program.second]  # listed from /proc
        assert mine["len"] == 8  # the symbol's size
        watch = Watch(arbiter, 5)
        tid = program.stores("t", 5)
        assert tid == program.second
        hits = watch.hits()
        assert len(hits) == 5
        assert {(h["id"], int(h["task"]), int(h["tid"])) for h in hits} == {
            (rid, program.pid, program.second)
        }
        # The IP is the instruction after the store, in store_many; the line is the store's.
        assert all(h["where"].startswith("store_many+0x") for h in hits), hits[0].string
        assert all(h["line"] == "threads.c:31" for h in hits), hits[0].string
    finally:
        assert procs.cli(arbiter, "release", rid, as_json=False).code == 0


def test_a_thread_created_after_the_reservation_is_covered(
    arbiter: str, host: str, program: Threads
) -> None:
    r = reserve(arbiter, "--pid", str(program.pid), "--symbol", "counter", "--type", "w")
    assert r.code == 0, r.err
    rid = r.out.strip()
    try:
        watch = Watch(arbiter, 6)
        first = program.stores("n", 3)
        second = program.stores("n", 3)
        assert len({first, second, program.pid, program.second}) == 4  # new threads
        hits = watch.hits()
        # Every write, by the thread that made it (each CPU's agent reports on its own,
        # so two threads that ran on two CPUs may be reported in either order).
        assert sorted(int(h["tid"]) for h in hits) == sorted([first] * 3 + [second] * 3)
        assert {h["id"] for h in hits} == {rid}
    finally:
        assert procs.cli(arbiter, "release", rid, as_json=False).code == 0


def test_a_process_wide_breakpoint_that_would_give_a_thread_a_fifth_slot_is_refused(
    arbiter: str, host: str, program: Threads
) -> None:
    """The second thread holds three of its own; the process-wide one is its fourth; one
    more process-wide breakpoint would be its fifth: refused, naming what it holds."""
    held: list[str] = []
    try:
        for i in range(3):
            r = reserve(
                arbiter,
                "--task",
                str(program.second),
                "--symbol",
                "counter",
                "--type",
                "w",
                "--owner",
                f"thread-{i}",
            )
            assert (r.code, r.err) == (0, ""), r.err  # applied by every agent: none pending
            held.append(r.out.strip())
        r = reserve(
            arbiter,
            "--pid",
            str(program.pid),
            "--symbol",
            "small",
            "--type",
            "w",
            "--owner",
            "whole",
        )
        assert r.code == 0, r.err
        held.append(r.out.strip())
        refused = reserve(
            arbiter,
            "--pid",
            str(program.pid),
            "--symbol",
            "counter",
            "--type",
            "rw",
            "--owner",
            "fifth",
        )
        assert refused.code == 3, refused.err
        assert "4 of 4 in use" in refused.err
        for rid, who in zip(held, ["thread-0", "thread-1", "thread-2", "whole"], strict=True):
            assert f"{rid} ({who}" in refused.err
        assert f"process {program.pid}" in refused.err
        # The main thread alone still has room: one thread's count is its own.
        ok = reserve(arbiter, "--task", str(program.pid), "--symbol", "counter", "--type", "w")
        assert ok.code == 0, ok.err
        held.append(ok.out.strip())
    finally:
        for rid in held:
            procs.cli(arbiter, "release", rid, as_json=False)


def test_a_symbol_the_process_lacks_is_a_clear_error(
    arbiter: str, host: str, program: Threads
) -> None:
    r = reserve(arbiter, "--pid", str(program.pid), "--symbol", "nope", "--type", "w")
    assert r.code == 6 and r.err.startswith("hwbpctl: no data symbol nope in process"), r.err
    r = reserve(arbiter, "--pid", str(program.pid), "--symbol", "opterr", "--type", "w")
    assert r.code == 2 and "name one as OBJECT:NAME" in r.err, r.err
    r = reserve(arbiter, "--pid", str(program.pid), "--symbol", "buffer", "--type", "w")
    assert r.code == 2 and "give --len" in r.err, r.err
    assert "Traceback" not in r.err
    gone = "4194000"  # above any pid this machine hands out by default
    r = reserve(arbiter, "--pid", gone, "--addr", "0x1000", "--len", "8", "--type", "w")
    assert r.code == 6 and f"process {gone} is not on this host" in r.err, r.err
    assert procs.cli(arbiter, "ls", "--host", HOST).json() == []  # nothing was reserved


def test_the_ledger_counts_a_process_as_this_kernel_does(program: Threads) -> None:
    """One sequence on the real kernel (perf_event_open on the program's threads, with
    inherit for the process-wide ones) and through the ledger: the same step is refused,
    on the same thread."""
    for cpu in range(CPUS):
        need_every_register(cpu)  # registers held outside would make the kernel refuse first
    threads = procfs.threads_of(program.pid)
    var = symbols.resolve(program.pid, "counter").addr

    def attr(inherit: bool) -> ps.PerfEventAttr:
        return ps.breakpoint_attr(
            bp_type=ps.HW_BREAKPOINT_W,
            addr=var,
            length=8,
            disabled=True,
            exclude_kernel=True,
            inherit=inherit,
        )

    fds: list[int] = []

    def kernel(step: str) -> str:
        """'task T' or 'process': ok, or the errno's name."""
        opened: list[int] = []
        try:
            for tid in threads if step == "process" else (int(step.split()[1]),):
                opened.append(ps.perf_event_open(attr(step == "process"), pid=tid, cpu=-1))
        except OSError as e:
            for fd in opened:
                os.close(fd)
            return errno.errorcode[e.errno or 0]
        fds.extend(opened)
        return "ok"

    ledger = HostLedger("h", CPUS)
    serial = iter(range(100))

    def arbiter_(step: str) -> str:
        if step == "process":
            target = Target(Scope.PROCESS, task=program.pid, threads=threads)
        else:
            target = Target(Scope.TASK, task=int(step.split()[1]))
        try:
            ledger.reserve(
                Reservation(f"r{next(serial)}", "h", target, Breakpoint(var, 8, BpType.WRITE))
            )
        except NoFreeSlot:
            return "ENOSPC"
        return "ok"

    second, main = f"task {program.second}", f"task {program.pid}"
    steps = [second, second, second, "process", "process", second, main, main, main, main]
    try:
        seen = [(step, kernel(step), arbiter_(step)) for step in steps]
    finally:
        for fd in fds:
            os.close(fd)
    assert [k for _, k, _ in seen] == [a for _, _, a in seen], seen
    assert [k for _, k, _ in seen] == ["ok"] * 4 + ["ENOSPC"] * 2 + ["ok"] * 3 + ["ENOSPC"]
