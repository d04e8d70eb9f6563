"""One arbiter per port and per ledger (issue 12, item 5), with real processes.

Before: gRPC's default SO_REUSEPORT let a second arbiter bind the same port and split
the clients between the two, and two arbiters on one SQLite file each granted four
slots on the same CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration import ledgers

pytestmark = pytest.mark.timeout(90)


def test_a_second_arbiter_on_the_same_port_refuses_to_start(tmp_path: Path) -> None:
    first, address = ledgers.arbiter(tmp_path / "a.db")
    try:
        done = ledgers.run_arbiter(
            "--listen", f"127.0.0.1:{ledgers.port_of(address)}", "--db", str(tmp_path / "b.db")
        )
        assert done is not None, "a second arbiter started on a port that is in use"
        assert done.returncode != 0
        assert "address already in use" in done.stderr.lower(), done.stderr
        assert address in done.stderr and "Traceback" not in done.stderr
        assert ledgers.health(address) == ledgers.SERVING  # the first one still serves
    finally:
        first.stop()


def test_a_second_arbiter_on_the_same_ledger_names_the_pid_holding_it(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    first, address = ledgers.arbiter(db)
    try:
        done = ledgers.run_arbiter("--listen", "127.0.0.1:0", "--db", str(db))
        assert done is not None, "a second arbiter started on a ledger that is in use"
        assert done.returncode != 0
        assert str(db) in done.stderr and f"pid {first.pid}" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert ledgers.health(address) == ledgers.SERVING  # the first one still serves
    finally:
        first.kill()  # a crash: the kernel drops the lock with the process
    again, address = ledgers.arbiter(db)  # raises if it does not start
    try:
        assert ledgers.health(address) == ledgers.SERVING
    finally:
        again.stop()
