"""The real gdb against a real hwbp-gdbserver: compile a C program, serve it, drive gdb.

Everything is a real process: gcc, the gdbserver (``python -m hwbp.gdbserver``), gdb in
batch mode, the arbiter and its perf agents. Every run has a timeout and every process
is stopped by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from hwbp.agent.perf import probe as perf_probe
from hwbp.gdbserver import hwpoints
from hwbp.gdbserver import ptrace_sys as pt
from tests.integration import procs

GDB = shutil.which("gdb")
GCC = shutil.which("gcc")
GDB_TIMEOUT = 40.0


def skip_reason() -> str | None:
    """Why these tests cannot run here, in plain words; None when they can."""
    if GDB is None or GCC is None:
        return f"needs gdb and gcc on PATH (gdb: {GDB}, gcc: {GCC})"
    for reason in (perf_probe(), hwpoints.probe(), _ptrace_probe()):
        if reason is not None:
            return reason
    return None


def _ptrace_probe() -> str | None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        pt.seize(child.pid, 0)
    except OSError as e:
        return f"ptrace refused to trace a child process: {e.strerror}"
    finally:
        child.kill()
        child.wait()
    return None


def compile_c(tmp: Path, name: str, source: str, *flags: str) -> Path:
    src = tmp / f"{name}.c"
    src.write_text(source)
    exe = tmp / name
    assert GCC is not None
    subprocess.run([GCC, "-g", "-O0", "-o", str(exe), str(src), *flags], check=True, timeout=60)
    return exe


def start_gdbserver(
    arbiter: str, host: str, *args: str, ttl: float = 2.0
) -> tuple[procs.Proc, int]:
    """``hwbp-gdbserver --arbiter A --host H --ttl T 127.0.0.1:0 ARGS...``; (proc, port)."""
    proc, line = procs.start(
        [
            "hwbp.gdbserver",
            "--arbiter",
            arbiter,
            "--host",
            host,
            "--ttl",
            str(ttl),
            *_comm_first(args),
        ],
        "hwbp-gdbserver",
        wait_for="Listening on port",
    )
    return proc, int(line.rsplit(" ", 1)[-1])


def _comm_first(args: tuple[str, ...]) -> list[str]:
    if args and args[0] == "--attach":
        return ["--attach", "127.0.0.1:0", *args[1:]]
    return ["127.0.0.1:0", *args]


def run_gdbserver_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """hwbp-gdbserver as a person runs it, for its refusals (no gdb ever connects)."""
    env = dict(os.environ, PYTHONPATH=str(procs.ROOT))
    env.pop("HWBP_ARBITER", None)
    return subprocess.run(
        [sys.executable, "-m", "hwbp.gdbserver", *args],
        cwd=procs.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=GDB_TIMEOUT,
        check=False,
    )


def gdb_argv(program: Path, port: int, *commands: str) -> list[str]:
    assert GDB is not None
    argv = [GDB, "-nx", "-batch", str(program), "-ex", f"target remote 127.0.0.1:{port}"]
    for c in commands:
        argv += ["-ex", c]
    return argv


def run_gdb(program: Path, port: int, *commands: str) -> str:
    """gdb's whole output (stdout and stderr interleaved) for one batch session."""
    done = subprocess.run(
        gdb_argv(program, port, *commands),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=GDB_TIMEOUT,
        check=False,
    )
    return done.stdout


def hwbpctl_shell(arbiter: str, *args: str) -> str:
    """A gdb ``shell`` command running hwbpctl, for a check at that point of the session."""
    return " ".join([sys.executable, "-m", "hwbp.client", "--arbiter", arbiter, *args])


def ls(arbiter: str, host: str) -> list[dict[str, Any]]:
    res = procs.cli(arbiter, "ls", "--host", host)
    assert res.code == 0, res.err
    return list(json.loads(res.out))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def process_state(pid: int) -> str:
    """The one-letter state of /proc/PID/stat (R, S, t, Z...), or "" once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rindex(")") + 2]


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
