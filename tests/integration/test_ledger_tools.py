"""``hwbp-arbiter ledger check|backup|restore`` on real ledger files, beside real arbiters."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import ledgers, procs
from tests.integration.stubs import wait_until

pytestmark = pytest.mark.timeout(120)
HOST = "lt"


def ledger(*args: str) -> subprocess.CompletedProcess[str]:
    """``hwbp-arbiter ledger ARGS`` as its own process."""
    return subprocess.run(
        [procs.PY, "-m", "hwbp.server", "ledger", *args],
        cwd=procs.ROOT,
        env=procs._env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def reserve(address: str, *where: str) -> str:
    done = procs.cli(
        address, "reserve", "--host", HOST, *where, "--addr", "0x601000", "--len", "8",
        "--type", "w", "--owner", "alice", as_json=False,
    )  # fmt: skip
    assert done.code == 0, done.err
    return done.out.strip()


class Running:
    """An arbiter on a ledger file with a two-CPU fleet."""

    def __init__(self, db: Path, port: int = 0) -> None:
        self.db = db
        self.proc, self.address = ledgers.arbiter(db, port)
        self.fleet = procs.start_fleet(self.address, HOST, 2)

    def stop(self) -> None:
        self.fleet.stop()
        assert self.proc.stop() == 0


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    arb = Running(tmp_path / "ledger.db")
    try:
        yield arb
    finally:
        arb.fleet.stop()
        arb.proc.stop()


def test_an_online_backup_while_the_arbiter_writes(running: Running, tmp_path: Path) -> None:
    held = [reserve(running.address, "--cpu", "0") for _ in range(3)]
    copy = tmp_path / "backup.db"
    done = ledger("backup", "--db", str(running.db), str(copy))
    assert done.returncode == 0, done.stderr
    assert "3 reservations" in done.stdout
    # The arbiter never noticed: it serves and writes on, and its ledger is its own.
    later = reserve(running.address, "--cpu", "1")
    assert ledgers.health(running.address) == ledgers.SERVING
    live = ledger("check", "--db", str(running.db))  # a live ledger reads as well
    assert live.returncode == 0 and "4 reservations" in live.stdout, live.stdout + live.stderr
    check = ledger("check", "--db", str(copy))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no conflicts" in check.stdout
    with sqlite3.connect(copy) as db:
        ids = {r for (r,) in db.execute("SELECT id FROM reservations")}
    assert ids == set(held) and later not in ids
    reserve(running.address, "--cpu", "1")  # and it still writes after both were read
    assert ledgers.health(running.address) == ledgers.SERVING
    again = ledger("backup", "--db", str(running.db), str(copy))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_check_names_every_conflict_of_a_ledger_the_arbiter_refuses(
    running: Running, tmp_path: Path
) -> None:
    full = [reserve(running.address, "--cpu", "0") for _ in range(4)]
    running.stop()
    with sqlite3.connect(running.db) as db:
        row = db.execute("SELECT * FROM reservations WHERE id = ?", (full[0],)).fetchone()
        for rid, host, session in (
            ("r900", HOST, None),  # a fifth on a full cpu 0
            ("r901", "ghost", None),  # a host the ledger does not know
            ("r902", HOST, "s-gone"),  # a session that is not there
        ):
            fields = list(row)
            fields[0], fields[1], fields[11] = rid, host, session
            if rid == "r902":
                fields[2], fields[3] = "cpu", 1
            db.execute(f"INSERT INTO reservations VALUES ({','.join('?' * len(fields))})", fields)
    done = ledger("check", "--db", str(running.db))
    assert done.returncode == 1, done.stdout + done.stderr
    conflicts = [line for line in done.stdout.splitlines() if line.startswith("conflict: ")]
    assert len(conflicts) == 3, done.stdout
    assert "r900 (alice, cpu 0)" in conflicts[0] and f"held by {full[0]} (alice" in conflicts[0]
    assert "r901" in conflicts[1] and "'ghost'" in conflicts[1]
    assert "r902" in conflicts[2] and "s-gone" in conflicts[2]
    started = ledgers.run_arbiter("--listen", "127.0.0.1:0", "--db", str(running.db))
    assert started is not None and started.returncode == 3  # what check foretold
    # Nor is such a ledger put in place of another as a backup.
    other = tmp_path / "other.db"
    refused = ledger("restore", "--db", str(other), str(running.db))
    assert refused.returncode == 1 and "has 3 conflicts, not restored" in refused.stderr
    assert "r900 (alice, cpu 0)" in refused.stderr and not other.exists()


def test_restore_is_refused_while_an_arbiter_runs_and_then_puts_the_backup_in_place(
    running: Running, tmp_path: Path
) -> None:
    kept = reserve(running.address, "--cpu", "0")
    copy = tmp_path / "backup.db"
    assert ledger("backup", "--db", str(running.db), str(copy)).returncode == 0
    lost = reserve(running.address, "--system")  # after the backup: the restore drops it
    refused = ledger("restore", "--db", str(running.db), str(copy))
    assert refused.returncode == 3, refused.stderr
    assert f"pid {running.proc.pid}" in refused.stderr and "stop it" in refused.stderr
    port = ledgers.port_of(running.address)
    running.stop()
    done = ledger("restore", "--db", str(running.db), str(copy))
    assert done.returncode == 0, done.stderr
    assert "1 reservations" in done.stdout
    replaced = done.stdout.rsplit(" ", 1)[-1].strip()
    assert Path(replaced).exists()
    again = Running(running.db, port)
    running.proc, running.fleet = again.proc, again.fleet
    ls = procs.cli(running.address, "ls").json()
    assert [r["id"] for r in ls] == [kept]
    newer = reserve(running.address, "--cpu", "1")
    # The counter never goes back: the id the dropped reservation had is not reissued.
    assert int(newer[1:]) > int(lost[1:])
    wait_until(lambda: ledgers.health(running.address) == ledgers.SERVING, what="serving")


def test_a_backup_with_conflicts_is_not_restored(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a ledger at all" * 100)
    done = ledger("restore", "--db", str(tmp_path / "ledger.db"), str(bad))
    assert done.returncode == 1, done.stderr
    assert str(bad) in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "ledger.db").exists()
    missing = ledger("check", "--db", str(tmp_path / "nothing.db"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    nowhere = tmp_path / "no-such-dir"
    astray = ledger("backup", "--db", str(bad), str(nowhere / "b.db"))
    assert astray.returncode == 2 and f"its directory {nowhere} does not exist" in astray.stderr
    assert not nowhere.exists()
