"""An agent whose arbiter is away logs its state changes, not every attempt.

A real agent process starts with nothing listening on its arbiter's port. It tries
again and again (each attempt is a DEBUG line); at INFO it says once that it is
connecting and once that the arbiter is unreachable, and, once an arbiter starts on
that port, once that it is connected.
"""

from __future__ import annotations

import re
import socket
import threading

from tests.integration import procs

LEVEL = re.compile(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
ATTEMPT = re.compile(r"agent \S+: .*(retrying|reconnecting)")
ATTEMPTS = 3
AGENT_FLAGS = ("--cpu", "0", "--cpus", "1", "--log-level", "DEBUG")
WAIT = 90.0  # seconds allowed for those attempts (each waits up to 10 s for the channel)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_lines(proc: procs.Proc, pattern: re.Pattern[str], count: int) -> list[str]:
    """Every line so far once ``count`` lines match ``pattern`` (or the wait runs out)."""
    done = threading.Event()
    for _ in range(int(WAIT / 0.25)):
        lines = proc.output()
        if sum(1 for line in lines if pattern.search(line)) >= count or not proc.alive():
            return lines
        done.wait(0.25)
    return proc.output()


def informative(lines: list[str]) -> list[str]:
    """The lines at INFO or above."""
    out = []
    for line in lines:
        m = LEVEL.match(line)
        if m is not None and m.group(1) != "DEBUG":
            out.append(line.strip())
    return out


def test_an_agent_without_an_arbiter_logs_each_state_change_once() -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    agent, _ = procs.start(
        [*("hwbp.agent", "--arbiter", address, "--host", "lonely"), *AGENT_FLAGS],
        "agent lonely/0",
    )
    arbiter = None
    try:
        lines = wait_for_lines(agent, ATTEMPT, ATTEMPTS)
        attempts = [line for line in lines if ATTEMPT.search(line)]
        assert len(attempts) >= ATTEMPTS, "".join(lines[-20:])
        said = informative(lines)
        assert len(said) == 2, "\n".join(said)
        assert "connecting to the arbiter at " + address in said[0]
        assert "unreachable" in said[1] and "Traceback" not in "".join(lines)

        arbiter, _ = procs.start_arbiter("--listen", address)
        lines = wait_for_lines(agent, re.compile("agent ready"), 1)
        said = informative(lines)
        assert "agent ready" in "".join(lines), "".join(lines[-20:])
        connected = [line for line in said if "connected to the arbiter" in line]
        assert len(said) == 3 and len(connected) == 1, "\n".join(said)
    finally:
        agent.stop()
        if arbiter is not None:
            arbiter.stop()
