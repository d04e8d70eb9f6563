"""`hwbpctl watch` across an arbiter restart, `--since` replay, and a seq too old to resume.

Real processes: an arbiter on a SQLite ledger, a simulated fleet, hwbpctl. The arbiter is
stopped by pid and started again on the same port and ledger while a watch runs; the
watch must show every change event exactly once, in order, with one line per state
change on stderr (lost, reconnected) and never a traceback.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from hwbp.v1 import arbiter_pb2 as a
from hwbp.v1 import arbiter_pb2_grpc
from hwbp.v1 import types_pb2 as t
from tests.integration import ledgers, procs
from tests.integration.stubs import wait_until
from tests.surfaces import SURFACES, make_client

pytestmark = pytest.mark.timeout(150)
HOST = "hw"
SEQ = re.compile(r"^#(\d+) (\w+) ")


class Arbiter:
    """An arbiter on one ledger file and port, with a two-CPU fleet that follows it."""

    def __init__(self, db: Path, *extra: str) -> None:
        self.db, self.extra = db, extra
        self.proc, self.address = ledgers.arbiter(db, 0, *extra)
        self.fleet = procs.start_fleet(self.address, HOST, 2)

    def restart(self, sig: int) -> None:
        self.proc.stop(sig)
        self.proc, _ = ledgers.arbiter(self.db, ledgers.port_of(self.address), *self.extra)
        wait_until(lambda: ledgers.health(self.address) == ledgers.SERVING, what="serving")

    def stop(self) -> None:
        self.fleet.stop()
        self.proc.stop()


@pytest.fixture
def arb(tmp_path: Path) -> Iterator[Arbiter]:
    arbiter = Arbiter(tmp_path / "ledger.db")
    try:
        yield arbiter
    finally:
        arbiter.stop()


def cli(addr: str, command: str) -> procs.CliResult:
    return procs.cli(addr, *command.split(), as_json=False, timeout=60)


def reserve(addr: str, cpu: int, where: int) -> str:
    """A reservation made with hwbpctl; its id (retried while the agents reconnect)."""
    args = f"--json reserve --host {HOST} --cpu {cpu} --addr {where:#x} --len 4 --type w"
    args += " --owner ann@lab"
    for _ in range(100):
        res = procs.cli(addr, *args.split(), as_json=False, timeout=60)
        if res.code == 0:
            rid: str = res.json()["id"]
            return rid
        time.sleep(0.2)  # the fleet is still reconnecting to a restarted arbiter
    raise AssertionError(f"reserve kept failing: {res.err}")


def release(addr: str, rid: str) -> None:
    res = cli(addr, f"release {rid}")
    assert res.code == 0, res.err


def changes(lines: list[str]) -> list[tuple[int, str]]:
    """(seq, kind) of the change events a watch printed, in order."""
    return [(int(m[1]), m[2]) for line in lines if (m := SEQ.match(line))]


def shown(watch: procs.Proc, seq: int) -> bool:
    return any(s == seq for s, _ in changes(watch.lines))


@pytest.mark.parametrize(
    ("sig", "since"),
    [(signal.SIGTERM, True), (signal.SIGKILL, True), (signal.SIGKILL, False)],
    ids=["term", "kill9", "kill9-live-only"],
)
def test_watch_rides_out_a_restart_without_losing_or_repeating_an_event(
    arb: Arbiter, sig: int, since: bool
) -> None:
    addr = arb.address
    r1 = reserve(addr, 0, 0x1000)  # before the watch: replayed by --since 0 only
    argv = ["hwbp.client", "--arbiter", addr, "watch", "--timeout", "120"]
    watch, _ = procs.start(
        [*argv, "--since", "0"] if since else [*argv, "--announce"],
        "hwbpctl watch",
        wait_for="#1 reserved" if since else "subscribed",
    )
    try:
        r2 = reserve(addr, 1, 0x2000)  # live, before the restart
        release(addr, r1)
        wait_until(lambda: shown(watch, 3), what="the watch showing #3")
        arb.restart(sig)
        r3 = reserve(addr, 0, 0x3000)  # most likely before the watch is back: replayed
        wait_until(lambda: shown(watch, 4), what="the watch showing #4 after the restart")
        wait_until(lambda: any("reconnected" in line for line in watch.lines), what="reconnected")
        release(addr, r2)  # live again
        release(addr, r3)
        wait_until(lambda: shown(watch, 6), what="the watch showing #6")
    finally:
        watch.stop(signal.SIGINT)
    assert watch.popen.returncode == 0, watch.lines
    out = "".join(watch.lines)
    assert "Traceback" not in out, out
    # Without --since it starts at what happens next, and still resumes after a restart.
    assert changes(watch.lines) == [
        *([(1, "reserved")] if since else []),
        (2, "reserved"),
        (3, "released"),
        (4, "reserved"),
        (5, "released"),
        (6, "released"),
    ], out
    # One line per change of state, on stderr (merged here), not one per attempt.
    state = [line for line in watch.lines if line.startswith("hwbpctl: watch:")]
    assert len(state) == 2, out
    assert "lost" in state[0] and "reconnecting" in state[0], state
    assert "reconnected" in state[1] and "after seq 3" in state[1], state
    # What was released is named, with its owner; a CPU is never shown in hex.
    released = [line for line in watch.lines if SEQ.match(line) and " released " in line]
    assert all("(owner ann@lab" in line for line in released), released
    assert [line.split()[5] for line in released] == [r1, r2, r3], released
    assert not re.search(r"cpu 0x", out), out


def test_since_replays_after_a_seq_and_survives_a_restart(arb: Arbiter) -> None:
    addr = arb.address
    r1 = reserve(addr, 0, 0x1000)
    r2 = reserve(addr, 1, 0x2000)
    release(addr, r1)
    arb.restart(signal.SIGTERM)
    res = cli(addr, "watch --since 1 --timeout 2")
    assert res.code == 0, res.err
    assert changes(res.out.splitlines(keepends=True)) == [(2, "reserved"), (3, "released")]
    assert r2 in res.out and r1 in res.out
    # Numbering continues after the restart: the next change is #4.
    reserve(addr, 0, 0x3000)
    res = cli(addr, "watch --since 3 --timeout 2")
    assert changes(res.out.splitlines(keepends=True)) == [(4, "reserved")], res.out
    # JSON carries the seq and who: scripts resume from it.
    doc = procs.cli(addr, "watch", "--since", "3", "--timeout", "2", timeout=60)
    assert doc.code == 0, doc.err
    event = doc.json() if doc.out.lstrip().startswith("{") else None
    assert event is not None and event["seq"] == 4 and event["kind"] == "reserved", doc.out
    assert event["reservation_ids"] == [event["reservation"]["id"]], event
    assert event["owner"] == "ann@lab", event


def test_since_older_than_the_kept_window_is_a_clear_error(tmp_path: Path) -> None:
    arb = Arbiter(tmp_path / "ledger.db", "--keep-events", "2")
    try:
        addr = arb.address
        for i in range(4):
            reserve(addr, i % 2, 0x1000 * (i + 1))  # #1..#4; #1 and #2 are no longer kept
        res = cli(addr, "watch --since 1 --timeout 2")
        assert res.code == 2, (res.code, res.out, res.err)
        lines = res.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hwbpctl"), res.err
        assert "no longer kept" in lines[0] and "oldest kept is 3" in lines[0], lines
        assert res.out == ""
        # From the window's edge it works, and the window survives a restart.
        arb.restart(signal.SIGTERM)
        res = cli(addr, "watch --since 2 --timeout 2")
        assert res.code == 0, res.err
        assert [s for s, _ in changes(res.out.splitlines(keepends=True))] == [3, 4]
        res = cli(addr, "watch --since 0 --timeout 2")
        assert res.code == 2 and "oldest kept is 3" in res.err, res.err
        # A seq never issued is refused too, rather than waiting for it forever.
        res = cli(addr, "watch --since 99 --timeout 2")
        assert res.code == 2 and "ahead of" in res.err, res.err
    finally:
        arb.stop()


def test_lease_expired_names_the_session_its_owner_and_what_was_released(
    arb: Arbiter,
) -> None:
    addr = arb.address
    with grpc.insecure_channel(addr) as ch:
        session = ledgers.open_session(ch, ttl=1.0, owner="cat@lab")  # no keep-alive
        stub = arbiter_pb2_grpc.ArbiterStub(ch)
        held = []
        for cpu in (0, 1):
            req = a.ReserveRequest(
                request_id=uuid.uuid4().hex,
                target=t.Target(host=HOST, scope=t.SCOPE_CPU, cpu=cpu),
                spec=t.BreakpointSpec(addr=0x1000, len=8, type=t.BREAKPOINT_TYPE_WRITE),
                session_id=session,
            )
            held.append(stub.Reserve(req, timeout=10).reservation.id)
    res = cli(addr, "watch --since 0 --timeout 8")  # waits for the expiry, then replays
    expired = [line for line in res.out.splitlines() if " lease_expired " in line]
    assert len(expired) == 1, res.out
    assert re.fullmatch(
        rf"#3 lease_expired {HOST} owner cat@lab session {session} "
        rf"released {held[0]}, {held[1]} gen \d+ - .*",
        expired[0],
    ), expired


@pytest.mark.parametrize("surface", SURFACES)
async def test_the_sdk_watch_takes_since_and_resumes_after_a_restart(
    arb: Arbiter, surface: str
) -> None:
    states: list[str] = []
    async with make_client(surface, arb.address) as c:
        h1 = await c.reserve(HOST, cpu=0, addr=0x1000, len=4, type="w", owner="sdk")
        changes = ["reserved", "released"]
        events = c.watch(kinds=changes, since=0, resume=True, on_state=states.append, timeout=60)
        first = await anext(events)  # replayed: it was made before the watch
        await asyncio.to_thread(arb.restart, signal.SIGKILL)
        await c.reserve(HOST, cpu=1, addr=0x2000, len=4, type="w", owner="sdk")
        second = await anext(events)  # the watch lost its arbiter while it waited
        await h1.release()
        third = await anext(events)
        await events.aclose()
        assert [(e.seq, e.kind.value) for e in (first, second, third)] == [
            (1, "reserved"),
            (2, "reserved"),
            (3, "released"),
        ]
        assert third.reservation_ids == (h1.id,) and third.owner == "sdk"
        # Replay alone, from a seq, without resuming.
        replay = c.watch(kinds=changes, since=1, timeout=2)
        assert [e.seq async for e in replay] == [2, 3]
    assert len(states) == 2 and "lost" in states[0] and "reconnected" in states[1], states


def test_a_watch_that_never_reached_an_arbiter_fails_like_any_call() -> None:
    """Reconnecting is for a watch that was streaming: a wrong address is an error (exit 5)
    after the usual few attempts, not a wait forever."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{s.getsockname()[1]}"
    res = cli(addr, "watch --since 0")
    assert res.code == 5, (res.code, res.out, res.err)
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hwbpctl:") and "lost" not in lines[0], lines
