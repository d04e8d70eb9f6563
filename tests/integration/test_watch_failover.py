"""`hwbpctl watch` across a failover of a replicated arbiter (three replicas on a real
etcd): the leader is killed (-9) while a watch reads from it; the watch finds the new
leader and resumes from the change log it restored from etcd, missing and repeating
nothing."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from hwbp.client.sdk import Client
from tests.integration import procs
from tests.integration.ha import TTL, Group
from tests.integration.stubs import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]
HOST = "hwf"
SEQ = re.compile(r"^#(\d+) (\w+) ")


@pytest.fixture
def group(tmp_path: Path) -> Iterator[Group]:
    g = Group(tmp_path)
    try:
        g.start()
        yield g
    finally:
        g.stop()


def changes(lines: list[str]) -> list[tuple[int, str]]:
    return [(int(m[1]), m[2]) for line in lines if (m := SEQ.match(line))]


def test_watch_resumes_on_the_new_leader_without_losing_or_repeating(group: Group) -> None:
    first = group.leader()
    agents = procs.start_fleet(group.endpoints, HOST, 2)
    watch: procs.Proc | None = None
    try:
        with Client(group.endpoints) as client:
            r1 = client.reserve(HOST, cpu=0, addr=0x1000, len=8, type="w", owner="ha@lab")
            argv = ["hwbp.client", "--arbiter", group.endpoints, "watch", "--since", "0"]
            watch, _ = procs.start([*argv, "--timeout", "120"], "hwbpctl watch", wait_for="#1 ")
            killed = group.arbiters[first]
            assert killed is not None
            killed.kill()
            group.leader(timeout=TTL + 10, exclude=first)
            r2 = client.reserve(HOST, cpu=1, addr=0x2000, len=8, type="w", owner="ha@lab")
            client.release(r1.id)
            assert watch is not None
            lines = watch.lines
            wait_until(lambda: len(changes(lines)) >= 3, timeout=60, what="#3 on the watch")
            client.release(r2.id)
            wait_until(lambda: len(changes(lines)) >= 4, timeout=30, what="#4 on the watch")
    finally:
        if watch is not None:
            watch.stop(signal.SIGINT)
        agents.stop()
    out = "".join(watch.lines)
    assert "Traceback" not in out, out
    assert changes(watch.lines) == [
        (1, "reserved"),
        (2, "reserved"),
        (3, "released"),
        (4, "released"),
    ], out
    state = [line for line in watch.lines if line.startswith("hwbpctl: watch:")]
    assert len(state) == 2 and "lost" in state[0] and "reconnected" in state[1], out
