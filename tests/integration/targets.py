"""A perf_target.py child process speaking its one-line protocol (see that file)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

TARGET = Path(__file__).with_name("perf_target.py")
ROOT = TARGET.parents[2]
WAIT = 10.0


class Target:
    """A perf_target.py child speaking its one-line protocol."""

    def __init__(self, cpu: int, at: int | None = None) -> None:
        cmd = [sys.executable, str(TARGET), "--cpu", str(cpu)]
        if at is not None:
            cmd += ["--at", hex(at)]
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        info = json.loads(self._line())
        self.pid: int = info["pid"]
        self.addr: int = info["addr"]
        self.getpid: int = info["getpid"]

    def _line(self) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], WAIT)
        if not ready:
            raise TimeoutError("perf_target did not answer")
        line = self.proc.stdout.readline()
        if not line:
            raise EOFError(f"perf_target exited ({self.proc.poll()})")
        return line.strip()

    def ask(self, cmd: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._line()

    def quit(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("q\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=WAIT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=WAIT)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


def need_every_register(cpu: int, slots: int = 4) -> None:
    """Skip (with the reason) when another process on this machine holds debug registers
    of ``cpu``: tests that count what the kernel grants need the CPU's registers to
    themselves, and the kernel would refuse what they expect to be granted."""
    probe = Target(cpu)
    try:
        free = int(probe.ask(f"h {cpu}"))
    finally:
        probe.kill()
    if free < slots:
        pytest.skip(
            f"another process on this machine holds {slots - free} of cpu {cpu}'s {slots} "
            "debug registers; this test counts what the kernel grants and needs them all"
        )
