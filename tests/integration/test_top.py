"""hwbpctl top end to end: a real arbiter, two simulated hosts, top as its own process."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration import procs

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def addr() -> Iterator[str]:
    arbiter, address = procs.start_arbiter()
    fleets: list[procs.Proc] = []
    try:
        fleets.append(procs.start_fleet(address, "h1", 2))
        fleets.append(procs.start_fleet(address, "h2", 1))
        yield address
    finally:
        for f in fleets:
            f.stop()
        arbiter.stop()


@pytest.fixture
def rid(addr: str) -> Iterator[str]:
    """A CPU-scoped reservation on h1 cpu 1 (so it must appear in that row only)."""
    flags = "--host h1 --cpu 1 --addr 0x7000 --len 4 --type w --owner ann"
    res = procs.cli(addr, "reserve", *flags.split())
    assert res.code == 0, res.err
    reservation: str = res.json()["id"]
    yield reservation
    procs.cli(addr, "release", reservation)


def row(frame: str, host: str, cpu: int) -> list[str]:
    """The cells of one CPU's row, found under its host's summary line."""
    in_host = False
    for line in frame.splitlines():
        if summary := re.match(r"(\S+): \d+ CPUs?, ", line):
            in_host = summary.group(1) == host
        elif in_host and line.split(None, 1)[:1] == [str(cpu)]:
            return line.split()
    raise AssertionError(f"no row for {host} cpu {cpu} in:\n{frame}")


def test_once_names_the_holder_in_its_host_and_cpu_row(addr: str, rid: str) -> None:
    res = procs.cli(addr, "top", "--once", as_json=False)
    assert (res.code, res.err) == (0, ""), res.err
    assert "\x1b" not in res.out  # --once is for scripts: no terminal control
    header = next(line.split() for line in res.out.splitlines() if line.startswith("CPU "))
    cells = row(res.out, "h1", 1)
    assert cells[header.index("DR0")] == f"{rid}(ann,cpu)"
    assert cells[header.index("STATE")] == "live"  # the agent link
    assert cells[header.index("LAG")] == "0"
    assert rid not in " ".join(row(res.out, "h1", 0)) and rid not in " ".join(row(res.out, "h2", 0))


def test_json_once_is_one_document_of_hosts_with_cpus(addr: str, rid: str) -> None:
    res = procs.cli(addr, "top", "--once")
    assert (res.code, res.err) == (0, ""), res.err
    assert len(res.out.strip().splitlines()) == 1
    doc: list[dict[str, Any]] = res.json()
    assert [h["host"] for h in doc] == ["h1", "h2"]
    cpus = {c["cpu"]: c for c in doc[0]["cpus"]}
    assert set(cpus) == {0, 1}
    dr0 = cpus[1]["registers"][0]
    assert (dr0["reservation_id"], dr0["owner"], dr0["scope"], dr0["addr"]) == (
        rid,
        "ann",
        "cpu",
        0x7000,
    )
    assert cpus[1]["lag"] == 0 and cpus[1]["mismatch"] is False and cpus[1]["used"] == 1

    only_h2 = procs.cli(addr, "top", "--once", "--host", "h2").json()
    assert [h["host"] for h in only_h2] == ["h2"]


@contextlib.contextmanager
def sigint_not_ignored() -> Iterator[None]:
    """Let a child started inside see SIGINT as Ctrl-C, however this test run was started.

    A shell starts ``&`` jobs with SIGINT ignored and exec keeps SIG_IGN, so the child
    would ignore the very signal under test; a handler, by contrast, is reset to the
    default by exec.
    """
    before = signal.getsignal(signal.SIGINT)
    if before == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def test_live_on_a_terminal_redraws_until_ctrl_c(addr: str, rid: str) -> None:
    master, slave = pty.openpty()
    try:
        with sigint_not_ignored():
            top = subprocess.Popen(
                [procs.PY, "-m", "hwbp.client", "--arbiter", addr, "top", "--interval", "0.3"],
                cwd=procs.ROOT,
                env=procs._env(),
                stdin=slave,
                stdout=slave,
                stderr=subprocess.PIPE,
                text=True,
            )
    finally:
        os.close(slave)  # only the child holds it now, so EOF arrives when it exits
    seen = b""
    try:
        # Past interpreter start-up to the first frame, then ~1.5 s of live refreshes.
        seen = read_until(master, seen, lambda s: rid.encode() in s, 20.0)
        assert rid.encode() in seen, seen[-2000:]
        seen = read_until(master, seen, lambda s: False, 1.5)
        os.kill(top.pid, signal.SIGINT)
        seen = read_until(master, seen, lambda s: False, 10.0)  # to EOF
        _, err = top.communicate(timeout=10)
    finally:
        if top.poll() is None:
            top.kill()
            top.wait()
        os.close(master)
    assert (top.returncode, err) == (0, "")
    frames = seen.split(b"\x1b[H\x1b[2J")[1:]
    assert len(frames) >= 2, seen[-2000:]  # it redrew, not just printed once
    assert all(b"h1: 2 CPUs" in f and b"h2: 1 CPU," in f for f in frames[:-1])
    assert any(f"{rid}(ann,cpu)".encode() in f for f in frames)


def test_q_quits_and_every_line_fits_a_narrow_terminal(addr: str, rid: str) -> None:
    master, slave = pty.openpty()
    columns = 52
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    try:
        top = subprocess.Popen(
            [procs.PY, "-m", "hwbp.client", "top", "--interval", "0.3", "--arbiter", addr],
            cwd=procs.ROOT,
            env=procs._env(),
            stdin=slave,
            stdout=slave,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(slave)
    seen = b""
    try:
        seen = read_until(master, seen, lambda s: s.count(b"\x1b[H\x1b[2J") >= 2, 20.0)
        os.write(master, b"q")
        seen = read_until(master, seen, lambda s: False, 10.0)  # to EOF
        _, err = top.communicate(timeout=10)
    finally:
        if top.poll() is None:
            top.kill()
            top.wait()
        os.close(master)
    assert (top.returncode, err) == (0, "")
    frames = seen.split(b"\x1b[H\x1b[2J")[1:]
    assert len(frames) >= 2, seen[-2000:]
    for f in frames:
        lines = f.decode().replace("\r\n", "\n").split("\n")
        assert all(len(line) <= columns for line in lines), f.decode()
    assert any(f"{rid}(".encode() in f for f in frames)  # the holder still named


def read_until(fd: int, seen: bytes, done: Any, seconds: float) -> bytes:
    """Read a pty master until ``done(seen)``, EOF, or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while not done(seen) and (left := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], left)[0]:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the slave (Linux's pty EOF)
            break
        if not chunk:
            break
        seen += chunk
    return seen


def test_unreachable_arbiter_exits_5_with_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    for args in (["top", "--once"], ["top"]):
        res = procs.cli(closed, *args, as_json=False)
        assert res.code == 5, (res.code, res.err)
        lines = res.err.strip().splitlines()
        assert len(lines) == 1 and closed in lines[0] and lines[0].startswith("hwbpctl")
