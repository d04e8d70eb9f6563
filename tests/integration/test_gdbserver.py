"""Stock gdb through hwbp-gdbserver: watchpoints reserved in the arbiter, armed for real.

An arbiter and one perf agent per CPU (real registers), C programs compiled here, the
real gdb in batch mode. Skipped only where gdb/gcc are missing or the kernel refuses
ptrace or perf breakpoints, saying which.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hwbp.agent import perf_sys as ps
from tests.integration import gdbtools as g
from tests.integration import procs

_reason = g.skip_reason()
if _reason is not None:
    pytest.skip(_reason, allow_module_level=True)

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60)]
HOST = "gdb-host"
CPUS = os.cpu_count() or 1

WRITES = r"""
#include <stdio.h>
volatile long counter;
__attribute__((noinline)) void done(void) { __asm__ volatile("" ::: "memory"); }
int main(void) {
    for (long i = 1; i <= NWRITES; i++) counter = i * 10;
    done();
    counter = -1;
    printf("counter %ld\n", counter);
    return 0;
}
"""

THREADS = r"""
#include <pthread.h>
volatile long shared;
volatile int turn;
static void *writer1(void *arg) { (void)arg; shared = 1; turn = 1; return NULL; }
static void *writer2(void *arg) { (void)arg; while (turn != 1) ; shared = 2; return NULL; }
int main(void) {
    pthread_t a, b;
    pthread_create(&b, NULL, writer2, NULL);
    pthread_create(&a, NULL, writer1, NULL);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    shared = 3;
    return 0;
}
"""

# Waits for GO, writes counter, creates WROTE, waits for FINISH, writes again, exits 0: a
# process to attach to that runs on while the test does things to its debugger.
SLEEPER = r"""
#include <stdio.h>
#include <unistd.h>
volatile long counter;
static void wait_for(const char *path) { while (access(path, F_OK) != 0) usleep(10000); }
int main(int argc, char **argv) {
    (void)argc;
    wait_for(argv[1]);
    counter = 10;
    fclose(fopen(argv[2], "w"));
    wait_for(argv[3]);
    counter = 20;
    return 0;
}
"""


@pytest.fixture(scope="module")
def host(arbiter: str) -> Iterator[str]:
    with procs.perf_agents(arbiter, HOST, CPUS) as name:
        yield name


@pytest.fixture
def gdbservers() -> Iterator[list[procs.Proc]]:
    started: list[procs.Proc] = []
    try:
        yield started
    finally:
        for p in started:
            p.stop()


def serve(
    arbiter: str, started: list[procs.Proc], *args: str, ttl: float = 2.0
) -> tuple[procs.Proc, int]:
    proc, port = g.start_gdbserver(arbiter, HOST, *args, ttl=ttl)
    started.append(proc)
    return proc, port


def stops(out: str) -> list[tuple[str, str]]:
    """(old, new) of every watchpoint stop gdb printed, in order."""
    return re.findall(r"Old value = (-?\d+)\nNew value = (-?\d+)", out)


def test_each_write_is_one_watchpoint_stop_with_old_and_new_values(
    arbiter: str, host: str, tmp_path: Path, gdbservers: list[procs.Proc]
) -> None:
    n = 5
    exe = g.compile_c(tmp_path, "writes", WRITES, f"-DNWRITES={n}")
    _, port = serve(arbiter, gdbservers, str(exe))
    out = g.run_gdb(exe, port, "watch counter", *["continue"] * n)
    assert "Hardware watchpoint 1: counter" in out, out
    assert stops(out) == [(str(10 * i), str(10 * (i + 1))) for i in range(n)], out
    assert out.count("Hardware watchpoint 1: counter\n\nOld value") == n
    assert "Could not insert" not in out
    gdbservers[0].popen.wait(timeout=10)  # one connection, then it exits...
    assert [r for r in g.ls(arbiter, host)] == []  # ...having released what it held


def test_ls_shows_the_reservation_while_inserted_and_not_after_delete(
    arbiter: str, host: str, tmp_path: Path, gdbservers: list[procs.Proc]
) -> None:
    exe = g.compile_c(tmp_path, "writes", WRITES, "-DNWRITES=3")
    server, port = serve(arbiter, gdbservers, str(exe))
    inserted, deleted = tmp_path / "inserted.json", tmp_path / "deleted.json"
    out = g.run_gdb(
        exe,
        port,
        "watch counter",
        "continue",
        "print/x (unsigned long)&counter",
        f"shell {g.hwbpctl_shell(arbiter, '--json', 'ls', '--host', host)} > {inserted}",
        "delete",
        "break done",
        "continue",
        f"shell {g.hwbpctl_shell(arbiter, '--json', 'ls', '--host', host)} > {deleted}",
        "continue",
    )
    addr = int(re.findall(r"\$1 = (0x[0-9a-f]+)", out)[0], 16)
    pid = int(re.findall(r"pid = (\d+)", "".join(server.lines))[0])
    (held,) = g.read_json(inserted)
    assert held["scope"] == "task" and held["task"] == pid, held
    assert (held["addr"], held["len"], held["type"]) == (addr, 8, "w")
    assert held["owner"] == f"gdbserver-{server.pid}" and held["session_id"]
    assert g.read_json(deleted) == [], out
    # After delete, the remaining writes ran without stopping: only the first was seen.
    assert stops(out) == [("0", "10")] and "Breakpoint 2, " in out, out


def test_a_spent_budget_refuses_the_insert_and_monitor_names_the_holder(
    arbiter: str, host: str, tmp_path: Path, gdbservers: list[procs.Proc]
) -> None:
    exe = g.compile_c(tmp_path, "writes", WRITES, "-DNWRITES=2")
    taken = []
    try:
        for i in range(4):  # CPU 0 full: no task fits on every CPU any more
            res = procs.cli(
                arbiter,
                *("reserve", "--host", host, "--cpu", "0", "--addr", hex(0x10000000 + 8 * i)),
                *("--len", "8", "--type", "w", "--owner", "alice"),
                as_json=False,
            )
            assert res.code == 0, res.err
            taken.append(res.out.strip())
        server, port = serve(arbiter, gdbservers, str(exe))
        out = g.run_gdb(
            exe,
            port,
            "watch counter",
            "continue",
            "monitor hwbp",
            f"shell {g.hwbpctl_shell(arbiter, '--json', 'ls', '--host', host)} > {tmp_path / 'ls'}",
            "shell " + "; ".join(g.hwbpctl_shell(arbiter, "release", rid) for rid in taken),
            "continue",
        )
    finally:
        for rid in taken:
            procs.cli(arbiter, "release", rid)
    assert "Could not insert hardware watchpoint 1." in out, out
    holders = ", ".join(f"{rid} (alice, cpu 0)" for rid in taken)
    assert f"no free debug register on host {host} cpu 0: 4 of 4 in use, held by {holders}" in out
    assert re.search(r"\n0 +4/4 +live +" + r" +".join(taken), out), out  # the slot map
    # A refused insert leaves nothing behind, in the ledger...
    assert {r["owner"] for r in g.read_json(tmp_path / "ls")} == {"alice"}
    # ...nor in the kernel: once alice's registers are free, the same watchpoint goes in.
    assert stops(out) == [("0", "10")], out
    assert "hardware breakpoint refused: no free debug register" in "".join(server.lines)


def test_registers_held_outside_the_arbiter_refuse_the_insert_and_leave_nothing(
    arbiter: str, host: str, tmp_path: Path, gdbservers: list[procs.Proc]
) -> None:
    """The arbiter admits (its ledger is empty) but the kernel says ENOSPC: the
    reservation made for the insert is released again."""
    exe = g.compile_c(tmp_path, "writes", WRITES, "-DNWRITES=2")
    outside: list[int] = []
    try:
        for i in range(4):  # as perf or another debugger would, behind the arbiter's back
            attr = ps.breakpoint_attr(
                bp_type=ps.HW_BREAKPOINT_W,
                addr=0x20000000 + 8 * i,
                length=8,
                disabled=True,
                exclude_kernel=True,
            )
            try:
                outside.append(ps.perf_event_open(attr, pid=-1, cpu=0))
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break  # someone else already holds the rest: CPU 0 is full either way
        _, port = serve(arbiter, gdbservers, str(exe))
        out = g.run_gdb(
            exe,
            port,
            "watch counter",
            "continue",
            "monitor hwbp",
            f"shell {g.hwbpctl_shell(arbiter, '--json', 'ls', '--host', host)} > {tmp_path / 'ls'}",
        )
    finally:
        for fd in outside:
            os.close(fd)
    assert "Could not insert hardware watchpoint 1." in out, out
    assert re.search(r"last refusal: the kernel has no free debug register for thread \d+", out)
    assert "something outside the arbiter holds them (ENOSPC)" in out
    assert g.read_json(tmp_path / "ls") == []


def test_a_killed_gdbserver_gets_its_slots_back_within_its_lease(
    arbiter: str, host: str, tmp_path: Path, gdbservers: list[procs.Proc]
) -> None:
    ttl = 4.0
    exe = g.compile_c(tmp_path, "sleeper", SLEEPER)
    go, wrote, finish = tmp_path / "go", tmp_path / "wrote", tmp_path / "finish"
    target = subprocess.Popen([str(exe), str(go), str(wrote), str(finish)])
    try:
        server, port = serve(arbiter, gdbservers, "--attach", str(target.pid), ttl=ttl)
        gdb = subprocess.Popen(
            g.gdb_argv(exe, port, "watch counter", f"shell touch {go}", "continue", "continue"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 20
            while not wrote.exists():  # past the first stop, running again
                assert time.monotonic() < deadline and gdb.poll() is None, "no first stop"
                time.sleep(0.05)
            (held,) = g.ls(arbiter, host)
            assert held["task"] == target.pid
            server.kill()  # SIGKILL: no cleanup of its own
            killed = time.monotonic()
            # Only the lease can release it now: the process lives on, still running.
            assert [r["id"] for r in g.ls(arbiter, host)] == [held["id"]]
            out, _ = gdb.communicate(timeout=g.GDB_TIMEOUT)
        finally:
            g.kill_quietly(gdb.pid)
        assert stops(out) == [("0", "10")] and "Remote connection closed" in out, out
        while g.ls(arbiter, host):
            assert time.monotonic() - killed < ttl + 1.5, "not released within the lease"
            time.sleep(0.1)
        assert g.process_state(target.pid) in ("S", "R"), target.poll()
        # Its watchpoint went with the gdbserver's fds: the next write traps nothing.
        finish.touch()
        assert target.wait(timeout=15) == 0
    finally:
        g.kill_quietly(target.pid)
        target.wait(timeout=10)


def test_a_gdbserver_killed_while_the_program_is_stopped_leaves_it_running(
    arbiter: str, host: str, tmp_path: Path, gdbservers: list[procs.Proc]
) -> None:
    """Stopped at a watchpoint, the program is in no SIGTRAP stop the kernel could deliver
    when it detaches from a dead tracer: it runs on, unwatched."""
    exe = g.compile_c(tmp_path, "sleeper", SLEEPER)
    go, wrote, finish = tmp_path / "go", tmp_path / "wrote", tmp_path / "finish"
    target = subprocess.Popen([str(exe), str(go), str(wrote), str(finish)])
    try:
        server, port = serve(arbiter, gdbservers, "--attach", str(target.pid))
        out = g.run_gdb(
            exe,
            port,
            "watch counter",
            f"shell touch {go}",
            "continue",
            f"shell kill -9 {server.pid}",
        )
        assert stops(out) == [("0", "10")], out
        deadline = time.monotonic() + 15
        while not wrote.exists():
            assert time.monotonic() < deadline, f"the program did not run on: {target.poll()}"
            time.sleep(0.05)
        finish.touch()
        assert target.wait(timeout=15) == 0
    finally:
        g.kill_quietly(target.pid)
        target.wait(timeout=10)


def test_detach_leaves_the_process_running_and_releases(
    arbiter: str, host: str, tmp_path: Path, gdbservers: list[procs.Proc]
) -> None:
    exe = g.compile_c(tmp_path, "sleeper", SLEEPER)
    go, wrote, finish = tmp_path / "go", tmp_path / "wrote", tmp_path / "finish"
    target = subprocess.Popen([str(exe), str(go), str(wrote), str(finish)])
    try:
        server, port = serve(arbiter, gdbservers, "--attach", str(target.pid))
        out = g.run_gdb(exe, port, "watch counter", f"shell touch {go}", "continue", "detach")
        assert stops(out) == [("0", "10")], out
        assert server.popen.wait(timeout=10) == 0
        assert g.ls(arbiter, host) == []
        finish.touch()
        assert target.wait(timeout=15) == 0  # counter = 20 ran untraced and unwatched
    finally:
        g.kill_quietly(target.pid)
        target.wait(timeout=10)


def test_a_multithreaded_target_stops_whichever_thread_writes(
    arbiter: str, host: str, tmp_path: Path, gdbservers: list[procs.Proc]
) -> None:
    exe = g.compile_c(tmp_path, "threads", THREADS, "-pthread")
    _, port = serve(arbiter, gdbservers, str(exe))
    out = g.run_gdb(exe, port, "watch shared", "continue", "continue", "continue", "continue")
    assert stops(out) == [("0", "1"), ("1", "2"), ("2", "3")], out
    hits = re.findall(r"Thread (\d+) hit Hardware watchpoint 1: shared", out)
    assert len(hits) == 3 and len(set(hits[:2])) == 2, out  # two threads, neither main
    assert re.search(r"writer1 \(arg=", out) and re.search(r"writer2 \(arg=", out), out
    assert "exited normally" in out
