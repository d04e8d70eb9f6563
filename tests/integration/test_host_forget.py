"""``hwbpctl host forget H``: a retired host leaves the inventory and the ledger, with real
arbiters, fleets, a ledger file and the CLI (and real TLS identities for who may)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.make_certs import write_dev_certs
from tests.integration import ledgers, procs
from tests.integration.stubs import wait_until
from tests.integration.test_security import CLIENTS, POLICY

pytestmark = pytest.mark.timeout(120)
HOST = "old"


@pytest.fixture
def arbiter(tmp_path: Path) -> Iterator[tuple[procs.Proc, str, Path]]:
    db = tmp_path / "ledger.db"
    proc, address = ledgers.arbiter(db)
    try:
        yield proc, address, db
    finally:
        proc.stop()


def hosts(address: str) -> set[str]:
    done = procs.cli(address, "cpus")
    assert done.code == 0, done.err
    return {row["host"] for row in done.json()}


def test_a_host_is_forgotten_only_once_nothing_is_left_on_it(
    arbiter: tuple[procs.Proc, str, Path],
) -> None:
    proc, address, db = arbiter
    fleet = procs.start_fleet(address, HOST, 2)
    done = procs.cli(
        address, "reserve", "--host", HOST, "--cpu", "1", "--addr", "0x601000", "--len", "8",
        "--type", "w", "--owner", "alice", as_json=False,
    )  # fmt: skip
    held = done.out.strip()
    busy = procs.cli(address, "host", "forget", HOST, as_json=False)
    assert busy.code == 2, busy.err
    assert f"{held} (alice, cpu 1)" in busy.err and "cpu 0, 1 still have an agent" in busy.err
    fleet.stop()
    wait_until(
        lambda: all(r["link"] == "offline" for r in procs.cli(address, "cpus").json()),
        what="its agents gone",
    )
    busy = procs.cli(address, "host", "forget", HOST, as_json=False)
    assert busy.code == 2 and f"{held} (alice, cpu 1)" in busy.err and "agent" not in busy.err
    assert busy.err.startswith("hwbpctl: host old cannot be forgotten"), busy.err
    assert HOST in hosts(address)
    assert procs.cli(address, "release", held).code == 0

    gone = procs.cli(address, "host", "forget", HOST)
    assert gone.code == 0, gone.err
    assert gone.json() == {"host": HOST, "forgotten": True, "ncpus": 2}
    assert HOST not in hosts(address)
    unknown = procs.cli(address, "cpus", "--host", HOST, as_json=False)
    assert unknown.code == 6 and "not known" in unknown.err
    again = procs.cli(address, "host", "forget", HOST, as_json=False)
    assert again.code == 6, again.err

    # Gone from the ledger too: a restart does not bring it back ...
    proc.stop()
    proc, _ = ledgers.arbiter(db, ledgers.port_of(address))
    try:
        wait_until(lambda: ledgers.health(address) == ledgers.SERVING, what="serving")
        assert HOST not in hosts(address)
        # ... and a later agent of that name registers it afresh, with its own shape.
        fleet = procs.start_fleet(address, HOST, 3)
        try:
            done = procs.cli(address, "cpus", "--host", HOST)
            assert [(r["cpu"], r["link"]) for r in done.json()] == [
                (0, "live"),
                (1, "live"),
                (2, "live"),
            ]
        finally:
            fleet.stop()
    finally:
        proc.stop()


def test_only_an_admin_may_forget_a_host(tmp_path: Path) -> None:
    certs = write_dev_certs(tmp_path / "certs", ["h3"], CLIENTS)
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    proc, address = procs.start_arbiter(
        *("--tls-cert", str(certs["arbiter"].cert), "--tls-key", str(certs["arbiter"].key)),
        *("--tls-ca", str(certs["ca"].cert), "--policy", str(policy)),
    )
    try:
        agent = certs["agent:h3"]
        tls = ["--tls-cert", str(agent.cert), "--tls-key", str(agent.key)]
        procs.start_fleet(address, "h3", 1, *tls, "--tls-ca", str(certs["ca"].cert)).stop()

        def forget(identity: str) -> subprocess.CompletedProcess[str]:
            pair = certs[identity]
            env = procs._env() | {
                "HWBP_TLS_CERT": str(pair.cert),
                "HWBP_TLS_KEY": str(pair.key),
                "HWBP_TLS_CA": str(certs["ca"].cert),
            }
            argv = [procs.PY, "-m", "hwbp.client", "--arbiter", address, "host", "forget", "h3"]
            return subprocess.run(
                argv, cwd=procs.ROOT, env=env, capture_output=True, text=True, timeout=30
            )

        for identity, rule in (
            ("debugger:bob", "only an admin may forget a host"),
            ("viewer:carol", "viewer may not change anything"),
        ):
            denied = forget(identity)
            assert denied.returncode == 4, denied.stderr
            assert rule in denied.stderr
        done = forget("admin:alice")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "forgot host h3 (1 cpus)"
    finally:
        proc.stop()
