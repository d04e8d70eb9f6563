"""Running the arbiter as an operator would: a configuration file, SIGHUP, audit, metrics.

Real arbiter and agent processes on loopback ports chosen at run time; certificates are
made per run with scripts/make_certs.py, and the policy file is edited between calls.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hwbp.client import Client, NoFreeSlot, TlsConfig
from hwbp.errors import PermissionDenied
from scripts.make_certs import Pair, write_dev_certs
from tests.integration import procs

POLICY = """
[agents]
hosts = ["h1", "h2"]

[identities]
"admin:alice" = {{ role = "admin" }}
"debugger:bob" = {{ role = "debugger", hosts = {bob_hosts} }}
"""
OFF_LIMITS = "debugger may only use the hosts its policy lists"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_line(proc: procs.Proc, pattern: str, after: int = 0, wait: float = 30.0) -> str:
    """The first line past the first ``after`` lines matching ``pattern`` (regex)."""
    rx = re.compile(pattern)
    pause = threading.Event()
    for _ in range(int(wait / 0.1)):
        for line in proc.output()[after:]:
            if rx.search(line):
                return line
        pause.wait(0.1)
    raise AssertionError(f"no line matching {pattern!r}:\n{''.join(proc.output()[-20:])}")


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        body: bytes = r.read()
        return body.decode()


# --- the configuration file -----------------------------------------------------------


def test_a_config_file_drives_an_arbiter_and_an_agent(tmp_path: Path) -> None:
    arbiter_toml = tmp_path / "arbiter.toml"
    arbiter_toml.write_text(
        'listen = "127.0.0.1:0"\ndb = ":memory:"\nmetrics-listen = "127.0.0.1:0"\n'
        'log-format = "json"\nack-timeout = 1.5\n'
    )
    arbiter, line = procs.start(
        ["hwbp.server", "--config", str(arbiter_toml)], "arbiter", wait_for="listening on"
    )
    try:
        address = line.rsplit(" ", 1)[-1]
        metrics = next(x for x in arbiter.output() if x.startswith("metrics on ")).split()[-1]
        logged = [x for x in arbiter.output() if x.startswith("{")]
        assert logged and all("message" in json.loads(x) for x in logged)  # log-format json

        agent_toml = tmp_path / "agent.toml"
        agent_toml.write_text(f'arbiter = "{address}"\nhost = "cfg1"\ncpu = 1\ncpus = 2\n')
        agent, _ = procs.start(
            ["hwbp.agent", "--config", str(agent_toml)], "agent", wait_for="agent ready"
        )
        try:
            cpus = procs.cli(address, "cpus", "--host", "cfg1").json()
            rows = cpus if isinstance(cpus, list) else cpus.get("cpus", cpus)
            assert "cfg1" in json.dumps(rows) and '"link": "live"' in json.dumps(rows)
        finally:
            agent.stop()

        text = scrape(metrics)
        assert "process_resident_memory_bytes" in text and "process_open_fds" in text
        assert re.search(r'^hwbp_build_info\{version="[^"]+"\} 1\.0$', text, re.M), text[-2000:]
    finally:
        arbiter.stop()


def test_a_flag_on_the_command_line_overrides_the_files_key(tmp_path: Path) -> None:
    path = tmp_path / "arbiter.toml"
    path.write_text('db = ":memory:"\nmetrics-listen = "127.0.0.1:0"\nlisten = "127.0.0.1:0"\n')
    port = free_port()
    arbiter, _ = procs.start(
        ["hwbp.server", "--config", str(path), "--metrics-listen", f"127.0.0.1:{port}"],
        "arbiter",
        wait_for="listening on",
    )
    try:
        said = next(x for x in arbiter.output() if x.startswith("metrics on "))
        assert said.split()[-1] == f"127.0.0.1:{port}"
    finally:
        arbiter.stop()


@pytest.mark.parametrize("program", ["hwbp.server", "hwbp.agent"])
def test_a_bad_key_stops_the_program_naming_it(tmp_path: Path, program: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('cpu = 0\nlog-level = "INFO"\nack-delay = "slow"\n')
    done = subprocess.run(
        [procs.PY, "-m", program, "--config", str(path)],
        cwd=procs.ROOT,
        env=procs._env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    if program == "hwbp.server":  # the arbiter has no --cpu
        assert f"config {path}: unknown key 'cpu'" in done.stderr, done.stderr
    else:
        assert f"config {path}: key 'ack-delay': expected a number" in done.stderr, done.stderr


# --- SIGHUP, refusals and the audit trail ------------------------------------------------


@dataclass(frozen=True)
class Secure:
    address: str
    certs: dict[str, Pair]
    policy: Path
    audit: Path
    arbiter: procs.Proc

    def client(self, identity: str) -> Client:
        pair = self.certs[identity]
        return Client(self.address, tls=TlsConfig(pair.cert, pair.key, self.certs["ca"].cert))

    def flags(self, identity: str) -> list[str]:
        pair = self.certs[identity]
        ca = str(self.certs["ca"].cert)
        return ["--tls-cert", str(pair.cert), "--tls-key", str(pair.key), "--tls-ca", ca]

    def audit_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.read_text().splitlines()]

    def reload(self, text: str, outcome: str) -> str:
        """Write the policy, SIGHUP the arbiter, return its log line (``outcome`` regex)."""
        self.policy.write_text(text)
        seen = len(self.arbiter.output())
        os.kill(self.arbiter.pid, signal.SIGHUP)
        return wait_for_line(self.arbiter, outcome, after=seen)


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    root = tmp_path_factory.mktemp("deployment")
    certs = write_dev_certs(root / "certs", ["h1", "h2"], ["admin:alice", "debugger:bob"])
    policy, audit = root / "policy.toml", root / "audit.jsonl"
    policy.write_text(POLICY.format(bob_hosts='["h1"]'))
    config = root / "arbiter.toml"
    config.write_text(
        f'tls-cert = "{certs["arbiter"].cert}"\ntls-key = "{certs["arbiter"].key}"\n'
        f'tls-ca = "{certs["ca"].cert}"\npolicy = "{policy}"\naudit-log = "{audit}"\n'
    )
    proc, address = procs.start_arbiter("--config", str(config))
    env = Secure(address, certs, policy, audit, proc)
    fleets = [procs.start_fleet(address, h, 1, *env.flags(f"agent:{h}")) for h in ("h1", "h2")]
    try:
        yield env
    finally:
        for p in [*fleets, proc]:
            p.stop()


def test_sighup_reloads_the_policy_for_the_next_call(secure: Secure) -> None:
    with secure.client("debugger:bob") as bob:
        seen = len(secure.arbiter.output())
        with pytest.raises(PermissionDenied) as refused:
            bob.reserve("h2", task=301, addr=0x1000, len=4, type="w")
        assert OFF_LIMITS in str(refused.value)
        # The refusal is logged once, by whoever answered the call.
        about = [x for x in secure.arbiter.output()[seen:] if OFF_LIMITS in x]
        assert len(about) == 1, about

        said = secure.reload(POLICY.format(bob_hosts='["h1", "h2"]'), "SIGHUP: policy")
        assert "reloaded" in said
        assert "debugger:bob: debugger on h1 -> debugger on h1, h2" in said
        r = bob.reserve("h2", task=301, addr=0x1000, len=4, type="w")

        said = secure.reload('[identities]\n"debugger:bob" = { role = "pirate" }\n', "SIGHUP")
        assert "not reloaded" in said and "role must be" in said
        bob.release(r.id)  # the previous policy is still in force
        r = bob.reserve("h2", task=302, addr=0x1000, len=4, type="w")
        bob.release(r.id)

        said = secure.reload(POLICY.format(bob_hosts='["h1"]'), "SIGHUP: policy")
        assert "debugger:bob: debugger on h1, h2 -> debugger on h1" in said
        with pytest.raises(PermissionDenied):
            bob.reserve("h2", task=303, addr=0x1000, len=4, type="w")


def test_the_audit_records_how_an_allowed_call_ended(secure: Secure) -> None:
    with secure.client("admin:alice") as alice:
        held = [
            alice.reserve("h1", cpu=0, addr=0x2000 + 8 * i, len=8, type="w", request_id=f"ok{i}")
            for i in range(4)
        ]
        with pytest.raises(NoFreeSlot):
            alice.reserve("h1", cpu=0, addr=0x3000, len=8, type="w", request_id="full")
        for r in held:
            alice.release(r.id)
    lines = secure.audit_lines()
    ended = {x["request_id"]: x for x in lines if "outcome" in x}
    first = ended["ok0"]
    assert first["outcome"] == "ok" and first["reservation_id"] == held[0].id
    assert first["identity"] == "admin:alice" and first["action"] == "reserve"
    full = ended["full"]
    assert full["outcome"] == "error" and full["reason"] == "NO_FREE_SLOT"
    assert "no free debug register" in full["message"]
    released = [x for x in lines if x.get("action") == "release" and "outcome" in x]
    assert {x["reservation_id"] for x in released} >= {r.id for r in held}
    # Each allowed call has its decision line and then its outcome line.
    decided = [x for x in lines if x["request_id"] == "ok0"]
    assert [("outcome" in x) for x in decided] == [False, True]
