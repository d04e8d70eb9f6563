"""Stock gdb driving a program through hwbp-gdbserver: hardware breakpoints, registers,
memory, signals and Ctrl-C.

The agents here are simulated (one ``--fleet`` process): a tracer-applied reservation is
armed by the gdbserver on the real registers whatever backend accounts it. Skipped only
where gdb/gcc are missing or the kernel refuses ptrace or perf breakpoints.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import gdbtools as g
from tests.integration import procs

_reason = g.skip_reason()
if _reason is not None:
    pytest.skip(_reason, allow_module_level=True)

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60)]
HOST = "gdb-sim"

PROGRAM = r"""
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
volatile long counter;
__attribute__((noinline)) long work(long x) { return x * 2 + counter; }
static void on_usr1(int s) { (void)s; counter += 100; }
int main(int argc, char **argv) {
    signal(SIGUSR1, on_usr1);
    long r = work(3);
    r += work(4);
    raise(SIGUSR1);
    if (argc > 1)  /* run until told to stop: something to interrupt */
        while (access(argv[1], F_OK) != 0) usleep(10000);
    printf("r=%ld counter=%ld\n", r, counter);
    return 0;
}
"""


READS = r"""
volatile long counter = 5;
int main(void) {
    long a = counter;
    counter = a + 1;
    long b = counter;
    return (int)(b - a - 1);
}
"""


@pytest.fixture(scope="module")
def host(arbiter: str) -> Iterator[str]:
    fleet = procs.start_fleet(arbiter, HOST, os.cpu_count() or 1)
    try:
        yield HOST
    finally:
        fleet.stop()


@pytest.fixture
def program(tmp_path: Path) -> Path:
    return g.compile_c(tmp_path, "program", PROGRAM)


@pytest.fixture
def gdbservers() -> Iterator[list[procs.Proc]]:
    started: list[procs.Proc] = []
    try:
        yield started
    finally:
        for p in started:
            p.stop()


def test_hbreak_registers_memory_and_signals(
    arbiter: str, host: str, program: Path, tmp_path: Path, gdbservers: list[procs.Proc]
) -> None:
    server, port = g.start_gdbserver(arbiter, host, str(program))
    gdbservers.append(server)
    held = tmp_path / "held.json"
    out = g.run_gdb(
        program,
        port,
        "hbreak work",
        "continue",
        f"shell {g.hwbpctl_shell(arbiter, '--json', 'ls', '--host', host)} > {held}",
        "print/x $pc",
        "print $rdi",
        "set var counter = 7",  # memory write (X/M)
        "finish",  # work(3) = 3 * 2 + 7
        "set var $rax = 99",  # register write (P): r = 99 instead of 13
        "delete",
        "continue",
        "print $_siginfo.si_signo",
        "continue",
    )
    assert re.search(r"Breakpoint 1, work \(x=3\)", out), out
    pc = int(re.findall(r"\$1 = (0x[0-9a-f]+)", out)[0], 16)
    (res,) = g.read_json(held)
    assert (res["type"], res["len"], res["addr"], res["scope"]) == ("x", 8, pc, "task"), res
    assert "$2 = 3" in out and "Value returned is $3 = 13" in out, out
    assert "Program received signal SIGUSR1, User defined signal 1." in out
    assert "$4 = 10" in out  # $_siginfo, read through qXfer:siginfo
    assert "exited normally" in out, out
    server.popen.wait(timeout=10)
    # r = 99 (our rax) + work(4) = 8 + 7; counter = 7 + 100 from the handler.
    assert "r=114 counter=107\n" in server.lines, server.lines
    assert g.ls(arbiter, host) == []


def test_rwatch_is_emulated_by_gdb_with_an_access_watchpoint(
    arbiter: str, host: str, tmp_path: Path, gdbservers: list[procs.Proc]
) -> None:
    exe = g.compile_c(tmp_path, "reads", READS)
    server, port = g.start_gdbserver(arbiter, host, str(exe))
    gdbservers.append(server)
    out = g.run_gdb(exe, port, "rwatch counter", "continue", "continue", "continue")
    # Two reads, each with the value read; the write between them is not a read.
    assert re.findall(r"Hardware read watchpoint 1: counter\n\nValue = (\d+)", out) == [
        "5",
        "6",
    ], out
    assert "exited normally" in out


def test_ctrl_c_interrupts_the_running_program(
    arbiter: str, host: str, program: Path, tmp_path: Path, gdbservers: list[procs.Proc]
) -> None:
    stop_file = tmp_path / "stop"
    server, port = g.start_gdbserver(arbiter, host, str(program), str(stop_file))
    gdbservers.append(server)
    gdb = subprocess.Popen(
        g.gdb_argv(
            program,
            port,
            "handle SIGUSR1 nostop noprint",
            "continue",
            "print counter",
            f"shell touch {stop_file}",
            "continue",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        pid = int(re.findall(r"pid = (\d+)", "".join(server.lines))[0])
        deadline = time.monotonic() + 20
        while g.process_state(pid) != "S":  # running its wait loop
            assert time.monotonic() < deadline, "the program never ran"
            time.sleep(0.05)
        time.sleep(0.3)
        gdb.send_signal(signal.SIGINT)  # what Ctrl-C at gdb's terminal does
        out, _ = gdb.communicate(timeout=g.GDB_TIMEOUT)
    finally:
        g.kill_quietly(gdb.pid)
    assert "Program received signal SIGINT, Interrupt." in out, out
    assert "$1 = 100" in out and "exited normally" in out, out


def test_bad_command_lines_and_unreachable_arbiters_get_one_clear_line(tmp_path: Path) -> None:
    bad_args = g.run_gdbserver_cli("nocolon", "/bin/true")
    assert bad_args.returncode == 2
    assert "error: HOST:PORT 'nocolon' is not a host and a port number" in bad_args.stderr
    missing = g.run_gdbserver_cli("127.0.0.1:0", str(tmp_path / "nothing"))
    assert missing.returncode == 1
    assert f"cannot run {tmp_path / 'nothing'}: No such file or directory" in missing.stderr
    gone = g.run_gdbserver_cli("--attach", "127.0.0.1:0", "4194303")
    assert gone.returncode == 1 and "no process 4194303" in gone.stderr
    # Nothing listens on port 1: the launched program must not outlive the refusal.
    down = g.run_gdbserver_cli("--arbiter", "127.0.0.1:1", "127.0.0.1:0", "sleep", "30")
    assert down.returncode == 1
    assert "cannot open a session on the arbiter: arbiter unavailable" in down.stderr
    pid = int(re.findall(r"pid = (\d+)", down.stdout)[0])
    assert g.process_state(pid) == ""
    for run in (bad_args, missing, gone, down):
        assert "Traceback" not in run.stderr
