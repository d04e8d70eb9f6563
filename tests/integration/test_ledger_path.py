"""``--db`` naming a directory that does not exist is an error, with real arbiters.

Before, the arbiter created every missing directory on the way to its ledger: a typo in
``--db`` started a fresh, empty ledger somewhere nobody looks, and the real one (with
its reservations) was silently not used.
"""

from __future__ import annotations

from pathlib import Path

from tests.integration import ledgers


def test_a_ledger_in_a_missing_directory_is_refused_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "deeper"
    done = ledgers.run_arbiter("--listen", "127.0.0.1:0", "--db", str(missing / "ledger.db"))
    assert done is not None, "the arbiter started on a ledger in a directory that is not there"
    assert done.returncode != 0
    assert str(missing) in done.stderr and "does not exist" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "no-such-dir").exists()


def test_a_ledger_in_an_existing_directory_is_created(tmp_path: Path) -> None:
    proc, _ = ledgers.arbiter(tmp_path / "ledger.db")
    try:
        assert (tmp_path / "ledger.db").exists()
    finally:
        assert proc.stop() == 0
