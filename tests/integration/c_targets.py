"""C programs compiled at test time (cc), and the two-thread target's line protocol."""

from __future__ import annotations

import queue
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

C_DIR = Path(__file__).with_name("c")
WAIT = 30.0  # a loaded machine may be slow to schedule it; a hang still fails


def compile_c(name: str, out_dir: Path, *flags: str) -> Path:
    """Build ``c/NAME.c`` into ``out_dir`` (debug info, no optimization: every store is
    one instruction of the source line). Skips, saying why, where there is no compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) on this machine to build the target")
    exe = out_dir / name
    subprocess.run(
        [cc, "-g", "-O0", "-pthread", *flags, "-o", str(exe), str(C_DIR / f"{name}.c")],
        check=True,
    )
    return exe


class Threads:
    """A running ``c/threads.c``: its pid, its second thread's tid, and commands.

    Its lines are read by a thread into a queue: it may write two lines at once, and a
    select() on the pipe would not see the second one already buffered."""

    def __init__(self, exe: Path) -> None:
        self.exe = exe
        self.proc = subprocess.Popen(
            [str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.pid = int(self._line().removeprefix("pid "))
        self.second = int(self._line().removeprefix("tid "))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self._lines.put(line.strip())
        self._lines.put(None)

    def _line(self) -> str:
        try:
            line = self._lines.get(timeout=WAIT)
        except queue.Empty:
            raise TimeoutError(f"{self.exe.name} did not answer") from None
        if line is None:
            raise EOFError(f"{self.exe.name} exited ({self.proc.poll()})")
        return line

    def stores(self, cmd: str, n: int) -> int:
        """``t``: the second thread stores n times; ``n``: a new thread does. Its tid."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{cmd} {n}\n")
        self.proc.stdin.flush()
        return int(self._line().removeprefix("done "))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=WAIT)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
