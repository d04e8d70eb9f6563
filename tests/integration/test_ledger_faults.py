"""A ledger that cannot be written, with real processes (issue 13 items 2 and 5).

Before: a write waiting for SQLite's lock held the event loop for the whole busy wait;
one failed write in the lease reaper ended the reaper for good with nothing logged and
health SERVING; a deleted or truncated ledger took acknowledged writes into a file that
no longer existed; a full disk was reported as "cannot rollback - no transaction is
active", and OpenSession on it as INTERNAL.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from hwbp.v1 import arbiter_pb2 as a
from hwbp.v1 import types_pb2 as t
from tests.integration import ledgers, procs
from tests.integration.stubs import Api, error_info, wait_until

pytestmark = pytest.mark.timeout(120)
HOST = "hf"


class Env:
    """An arbiter on a ledger file with metrics, and a one-CPU fleet."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.proc, self.address = ledgers.arbiter(db, 0, "--metrics-listen", "127.0.0.1:0")
        self.metrics = ledgers.metrics_address(self.proc)
        self.fleet = procs.start_fleet(self.address, HOST, 1)
        self.channel = grpc.insecure_channel(self.address)
        self.api = Api(self.channel)

    def reserve(self, addr: int, session: str = "", timeout: float = 20.0) -> t.Reservation:
        req = a.ReserveRequest(
            request_id=uuid.uuid4().hex,
            target=t.Target(host=HOST, scope=t.SCOPE_CPU, cpu=0),
            spec=t.BreakpointSpec(addr=addr, len=8, type=t.BREAKPOINT_TYPE_WRITE, enabled=True),
            session_id=session,
        )
        return self.api.arb.Reserve(req, timeout=timeout).reservation

    def refused(self, call: object) -> tuple[grpc.StatusCode, str, dict[str, str], str]:
        with pytest.raises(grpc.RpcError) as exc:
            call()  # type: ignore[operator]
        return error_info(exc.value)

    def log(self) -> str:
        return "".join(self.proc.lines)

    def close(self) -> None:
        self.channel.close()
        self.fleet.stop()
        self.proc.stop()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path / "ledger.db")
    try:
        yield e
    finally:
        e.close()


@contextlib.contextmanager
def writer_lock(db: Path) -> Iterator[None]:
    """Hold the ledger's SQLite write lock from another process's point of view."""
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()


def test_a_ledger_locked_by_another_writer_stalls_no_reader_and_recovers(env: Env) -> None:
    kept = env.reserve(0x1000)
    with writer_lock(env.db), ThreadPoolExecutor(1) as pool:
        pending = pool.submit(env.reserve, 0x2000)
        time.sleep(0.5)  # the write now waits for the lock
        # Reads are served meanwhile: a deadline far below SQLite's busy wait.
        assert env.api.arb.List(a.ListRequest(host=HOST), timeout=1.0).reservations
        assert env.api.arb.Inventory(a.InventoryRequest(host=HOST), timeout=1.0).cpus
        with pytest.raises(grpc.RpcError) as exc:
            pending.result(timeout=30)
        code, reason, _, message = error_info(exc.value)
        assert code is grpc.StatusCode.UNAVAILABLE and reason == "LEDGER_WRITE_FAILED"
        assert "locked" in message, message
        assert ledgers.health(env.address) == ledgers.NOT_SERVING
        assert ledgers.metric(env.metrics, "hwbp_ledger_write_failures_total") >= 1
        assert env.api.ids(HOST) == {kept.id}  # nothing of the refused change shows
    # Nobody writes, yet the arbiter finds out by itself that the ledger works again.
    wait_until(lambda: ledgers.health(env.address) == ledgers.SERVING, what="serving again")
    assert env.reserve(0x3000).id in env.api.ids(HOST)
    assert "ledger" in env.log() and "locked" in env.log()


def test_the_lease_reaper_survives_a_failed_ledger_write(env: Env) -> None:
    ledgers.open_session(env.channel, ttl=1.0)  # holds nothing; its end is one write
    with writer_lock(env.db):
        # The idle session expires and its end cannot be written.
        wait_until(
            lambda: ledgers.health(env.address) == ledgers.NOT_SERVING,
            timeout=15,
            what="the failed write reported",
        )
    wait_until(lambda: ledgers.health(env.address) == ledgers.SERVING, what="serving again")
    # The reaper still runs: a new session's lease expires on time.
    session = ledgers.open_session(env.channel, ttl=1.0)
    opened = time.monotonic()
    held = env.reserve(0x4000, session=session)
    wait_until(lambda: held.id not in env.api.ids(HOST), timeout=10, what="lease expired")
    assert time.monotonic() - opened <= 1.0 + 1.0
    assert ledgers.metric(env.metrics, "hwbp_ledger_write_failures_total") >= 1


@pytest.mark.parametrize("damage", ["delete", "truncate", "replace"])
def test_a_ledger_damaged_while_running_refuses_every_write_loudly(env: Env, damage: str) -> None:
    kept = env.reserve(0x1000)
    if damage == "delete":
        env.db.unlink()
    elif damage == "truncate":
        os.truncate(env.db, 0)
    else:
        env.db.rename(env.db.with_suffix(".moved"))
        env.db.write_bytes(b"")
    code, reason, _, message = env.refused(lambda: env.reserve(0x2000))
    assert code is grpc.StatusCode.UNAVAILABLE and reason == "LEDGER_WRITE_FAILED"
    assert str(env.db) in message, message
    code, reason, _, _ = env.refused(lambda: ledgers.open_session(env.channel, ttl=5))
    assert reason == "LEDGER_WRITE_FAILED"
    assert ledgers.health(env.address) == ledgers.NOT_SERVING
    assert env.api.ids(HOST) == {kept.id}
    assert str(env.db) in env.log()
    time.sleep(1.5)  # it never comes back by itself: the file it wrote is gone
    assert ledgers.health(env.address) == ledgers.NOT_SERVING


# --- a small filesystem of our own --------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "fs"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as out:
        while True:
            out.write(b"\0" * 4096)
    return filler


def test_a_full_disk_is_reported_as_a_full_disk_and_recovers(tmpfs: Path) -> None:
    env = Env(tmpfs / "ledger.db")
    try:
        kept = env.reserve(0x1000)
        filler = _fill(tmpfs)
        refusals = []
        for i in range(20):  # the first write that needs a new block fails
            try:
                env.reserve(0x2000 + 8 * i)
            except grpc.RpcError as err:
                refusals.append(error_info(err))
                break
        assert refusals, "20 writes fit on a full disk"
        code, reason, _, message = refusals[0]
        assert reason == "LEDGER_WRITE_FAILED" and "disk full" in message, message
        assert "cannot rollback" not in message
        code, reason, _, _ = env.refused(lambda: ledgers.open_session(env.channel, ttl=5))
        assert code is grpc.StatusCode.UNAVAILABLE and reason == "LEDGER_WRITE_FAILED"
        assert ledgers.health(env.address) == ledgers.NOT_SERVING
        assert kept.id in env.api.ids(HOST)
        filler.unlink()
        wait_until(lambda: ledgers.health(env.address) == ledgers.SERVING, what="serving again")
        assert env.reserve(0x3000).id in env.api.ids(HOST)
        assert "Traceback" not in env.log()
    finally:
        env.close()


def test_a_read_only_ledger_is_refused_at_start_naming_it(tmpfs: Path) -> None:
    db = tmpfs / "ledger.db"
    env = Env(db)
    kept = env.reserve(0x1000)
    env.close()  # nothing holds a file open for writing: the mount can go read-only
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    done = ledgers.run_arbiter("--listen", "127.0.0.1:0", "--db", str(db))
    assert done is not None, "an arbiter started on a ledger it cannot write"
    assert done.returncode == 3 and str(db) in done.stderr, done.stderr
    assert "read-only" in done.stderr.lower(), done.stderr
    assert "Traceback" not in done.stderr
    subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
    env = Env(db)  # writable again: nothing was lost
    try:
        assert env.api.ids(HOST) == {kept.id}
    finally:
        env.close()
