"""Mutual TLS, identities bound to hosts, roles and the audit trail, with real processes.

One arbiter with TLS, a policy and an audit log serves the whole module; agents for h1
and h2 connect with their own certificates. Certificates are made per run with
scripts/make_certs.py.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from hwbp.client import Client, TlsConfig
from hwbp.errors import PermissionDenied, Unauthenticated
from hwbp.v1 import agent_pb2, agent_pb2_grpc, arbiter_pb2, arbiter_pb2_grpc, types_pb2
from scripts.make_certs import Pair, issue, make_ca, write, write_dev_certs
from tests.integration import procs
from tests.integration.stubs import error_info

CLIENTS = ("admin:alice", "debugger:bob", "viewer:carol", "debugger:mallory")
POLICY = """
[agents]
hosts = ["h1", "h2", "h3"]

[identities]
"admin:alice" = { role = "admin" }
"debugger:bob" = { role = "debugger", hosts = ["h1"] }
"viewer:carol" = { role = "viewer" }
"""
KERNEL_ADDR = 0xFFFFFFFF81000000


@dataclass(frozen=True)
class Env:
    address: str
    certs: dict[str, Pair]
    audit: Path
    arbiter: procs.Proc

    def tls(self, identity: str) -> TlsConfig:
        pair = self.certs[identity]
        return TlsConfig(pair.cert, pair.key, self.certs["ca"].cert)

    def flags(self, identity: str) -> list[str]:
        t = self.tls(identity)
        return ["--tls-cert", str(t.cert), "--tls-key", str(t.key), "--tls-ca", str(t.ca)]

    def client(self, identity: str) -> Client:
        return Client(self.address, tls=self.tls(identity))

    def audit_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.read_text().splitlines()]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("security")
    certs = write_dev_certs(root / "certs", ["h1", "h2", "h3"], CLIENTS)
    policy, audit = root / "policy.toml", root / "audit.jsonl"
    policy.write_text(POLICY)
    arbiter_flags = [
        *("--tls-cert", str(certs["arbiter"].cert), "--tls-key", str(certs["arbiter"].key)),
        *("--tls-ca", str(certs["ca"].cert), "--policy", str(policy)),
        *("--audit-log", str(audit), "--ack-timeout", "2"),
    ]
    proc, address = procs.start_arbiter(*arbiter_flags)
    e = Env(address, certs, audit, proc)
    fleets = [procs.start_fleet(address, h, 2, *e.flags(f"agent:{h}")) for h in ("h1", "h2")]
    try:
        yield e
    finally:
        for p in [*fleets, proc]:
            p.stop()


def list_with(env: Env, creds: grpc.ChannelCredentials) -> None:
    with grpc.secure_channel(env.address, creds) as ch:
        arbiter_pb2_grpc.ArbiterStub(ch).List(arbiter_pb2.ListRequest(), timeout=5)


# --- the handshake ----------------------------------------------------------------------


def test_a_client_without_a_certificate_is_refused(env: Env) -> None:
    ca = env.certs["ca"].cert.read_bytes()
    with pytest.raises(grpc.RpcError) as exc:
        list_with(env, grpc.ssl_channel_credentials(root_certificates=ca))
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_from_an_unknown_ca_is_refused(env: Env, tmp_path: Path) -> None:
    rogue = write(issue(make_ca("rogue CA"), "admin:alice"), tmp_path, "rogue")
    creds = grpc.ssl_channel_credentials(
        root_certificates=env.certs["ca"].cert.read_bytes(),
        private_key=rogue.key.read_bytes(),
        certificate_chain=rogue.cert.read_bytes(),
    )
    with pytest.raises(grpc.RpcError) as exc:
        list_with(env, creds)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_certified_identity_missing_from_the_policy_is_unauthenticated(env: Env) -> None:
    with env.client("debugger:mallory") as c, pytest.raises(Unauthenticated) as exc:
        c.list()
    assert exc.value.metadata["identity"] == "debugger:mallory"


# --- agents are bound to the host their certificate names --------------------------------


def test_an_agent_certified_for_one_host_cannot_register_for_another(env: Env) -> None:
    args = ["hwbp.agent", "--arbiter", env.address, "--host", "h9", "--cpu", "0", "--cpus", "1"]
    proc, _ = procs.start([*args, *env.flags("agent:h1")], "agent h9")
    try:
        code = proc.popen.wait(timeout=20)
        out = proc.popen.stdout.read() if proc.popen.stdout else ""
    finally:
        proc.stop()
    assert code != 0
    assert "PERMISSION_DENIED" in out or "may only speak for the host" in out, out


class AgentStream:
    """A raw AgentLink stream: messages are sent when put, answers read one by one."""

    def __init__(self, env: Env, identity: str) -> None:
        self.outbox: queue.Queue[agent_pb2.AgentMessage | None] = queue.Queue()
        self.channel = grpc.secure_channel(env.address, grpc_creds(env.tls(identity)))
        stub = agent_pb2_grpc.AgentLinkStub(self.channel)
        self.answers = stub.Connect(iter(self.outbox.get, None), timeout=10)

    def send(self, **body: Any) -> None:
        self.outbox.put(agent_pb2.AgentMessage(**body))

    def close(self) -> None:
        self.outbox.put(None)
        self.answers.cancel()
        self.channel.close()


def grpc_creds(t: TlsConfig) -> grpc.ChannelCredentials:
    from hwbp.wire.tls import channel_credentials

    return channel_credentials(t)


def hello(host: str) -> agent_pb2.Hello:
    return agent_pb2.Hello(host=host, cpu=0, ncpus=1, backend="sim", slots=4)


def test_a_wrong_host_hello_is_refused_permission_denied(env: Env) -> None:
    stream = AgentStream(env, "agent:h3")
    try:
        stream.send(hello=hello("h2"))
        with pytest.raises(grpc.RpcError) as exc:
            next(stream.answers)
        code, reason, meta, _ = error_info(exc.value)
        assert code == grpc.StatusCode.PERMISSION_DENIED and reason == "PERMISSION_DENIED"
        assert meta["identity"] == "agent:h3" and meta["host"] == "h2"
    finally:
        stream.close()


def test_an_agent_cannot_report_hits_for_another_host(env: Env) -> None:
    stream = AgentStream(env, "agent:h3")
    try:
        stream.send(hello=hello("h3"))
        assert next(stream.answers).HasField("welcome")
        assert next(stream.answers).HasField("reload")
        stream.send(hits=agent_pb2.HitReport(hits=[types_pb2.Hit(host="h1", cpu=0, addr=0x10)]))
        with pytest.raises(grpc.RpcError) as exc:
            while True:
                next(stream.answers)
        code, _, meta, _ = error_info(exc.value)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert meta["rule"] == "an agent may only speak for the host its certificate names"
    finally:
        stream.close()


# --- roles ----------------------------------------------------------------------------


def test_the_owner_is_the_certificate_not_the_request(env: Env) -> None:
    with env.client("debugger:bob") as bob:
        r = bob.reserve("h1", task=101, addr=0x1000, len=4, type="w", owner="admin:alice")
        assert r.info.owner == "debugger:bob"
        bob.release(r.id)


def test_the_cli_default_owner_yields_to_the_certificate(env: Env) -> None:
    """hwbpctl sends $USER@hostname when --owner is not given; the certificate still wins."""
    flags = [*env.flags("debugger:bob"), "reserve", "--host", "h1", "--task", "102"]
    res = procs.cli(env.address, *flags, "--addr", "0x1000", "--len", "4", "--type", "w")
    assert res.code == 0, res.err
    r = res.json()
    assert r["owner"] == "debugger:bob"
    assert procs.cli(env.address, *env.flags("debugger:bob"), "release", r["id"]).code == 0


def test_a_debugger_cannot_release_or_modify_anothers_reservation(env: Env) -> None:
    with env.client("admin:alice") as alice, env.client("debugger:bob") as bob:
        r = alice.reserve("h1", system=True, addr=0x2000, len=8, type="w")
        try:
            tries: list[Callable[[], object]] = [
                lambda: bob.release(r.id),
                lambda: bob.modify(r.id, enabled=False),
            ]
            for attempt in tries:
                with pytest.raises(PermissionDenied) as exc:
                    attempt()
                assert exc.value.metadata["rule"] == "debugger may only change what it owns"
                assert exc.value.metadata["identity"] == "debugger:bob"
        finally:
            alice.release(r.id)


def test_a_debugger_cannot_reserve_system_scope_or_a_kernel_address(env: Env) -> None:
    with env.client("debugger:bob") as bob:
        with pytest.raises(PermissionDenied) as exc:
            bob.reserve("h1", system=True, addr=0x3000, len=8, type="w")
        assert exc.value.metadata["rule"] == "debugger may not reserve system scope"
        with pytest.raises(PermissionDenied) as exc:
            bob.reserve("h1", task=102, addr=KERNEL_ADDR, len=8, type="w", kernel=True)
        assert exc.value.metadata["rule"] == "debugger may not watch kernel addresses"
    with env.client("admin:alice") as alice:  # what the admin role is for
        r = alice.reserve("h1", system=True, addr=KERNEL_ADDR, len=8, type="w", kernel=True)
        alice.release(r.id)


def test_a_debugger_traces_only_the_hosts_its_policy_lists(env: Env) -> None:
    with env.client("debugger:bob") as bob:
        tracer = bob.ptrace("h1", 103)
        tracer.poke(0, 0x4000)
        assert tracer.peek(0) == 0x4000
        tracer.flush()
        with pytest.raises(PermissionDenied) as exc:
            bob.ptrace("h2", 103).poke(0, 0x4000)
        assert exc.value.metadata["rule"] == "debugger may only use the hosts its policy lists"
        with pytest.raises(PermissionDenied):
            bob.reserve("h2", task=103, addr=0x1000, len=4, type="w")


def test_a_viewer_reads_but_changes_nothing(env: Env) -> None:
    with env.client("viewer:carol") as carol, env.client("admin:alice") as alice:
        assert {c.host for c in carol.inventory()} >= {"h1", "h2"}
        r = alice.reserve("h2", cpu=0, addr=0x5000, len=8, type="w")
        try:
            assert r.id in {x.id for x in carol.list("h2")}
            attempts: list[Callable[[], object]] = [
                lambda: carol.reserve("h2", task=104, addr=0x1000, len=4, type="w"),
                lambda: carol.release(r.id),
                lambda: carol.context_switch("h2", 0, 104),
                lambda: carol.session(ttl=5),
            ]
            for attempt in attempts:
                with pytest.raises(PermissionDenied) as exc:
                    attempt()
                assert exc.value.metadata["rule"] == "viewer may not change anything"
        finally:
            alice.release(r.id)


def test_hwbpctl_takes_tls_flags_and_exits_denied(env: Env) -> None:
    carol = env.flags("viewer:carol")
    ok = procs.cli(env.address, *carol, "ls")
    assert ok.code == 0, ok.err
    no = procs.cli(env.address, *carol, "reserve", "--host", "h1", "--task", "5", "--addr",
                   "0x1000", "--len", "4", "--type", "w")  # fmt: skip
    assert no.code == 4 and "viewer may not change anything" in no.err
    plain = procs.cli(env.address, "ls")  # no certificate at all
    assert plain.code == 5, plain.err


def test_the_sdk_reads_its_certificate_from_the_environment(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = env.tls("viewer:carol")
    monkeypatch.setenv("HWBP_TLS_CERT", str(t.cert))
    monkeypatch.setenv("HWBP_TLS_KEY", str(t.key))
    monkeypatch.setenv("HWBP_TLS_CA", str(t.ca))
    with Client(env.address) as c:
        assert c.inventory("h1")


# --- the audit trail ------------------------------------------------------------------


def test_every_decision_on_a_change_is_audited(env: Env) -> None:
    allowed, denied = uuid.uuid4().hex, uuid.uuid4().hex
    with env.client("debugger:bob") as bob:
        r = bob.reserve("h1", task=105, addr=0x1000, len=4, type="w", request_id=allowed)
        bob.release(r.id)
        with pytest.raises(PermissionDenied):
            bob.reserve("h1", cpu=0, addr=0x1000, len=4, type="w", request_id=denied)
    with env.client("viewer:carol") as carol, pytest.raises(PermissionDenied):
        carol.reserve("h1", task=105, addr=0x1000, len=4, type="w")
    with env.client("debugger:mallory") as mallory, pytest.raises(Unauthenticated):
        mallory.reserve("h1", task=105, addr=0x1000, len=4, type="w")
    lines = env.audit_lines()
    keys = {"time", "identity", "role", "request_id", "action", "target", "decision", "rule"}
    assert all(keys <= set(line) for line in lines)
    by_id = {line["request_id"]: line for line in lines}
    assert by_id[allowed]["decision"] == "allow" and by_id[allowed]["action"] == "reserve"
    assert by_id[allowed]["identity"] == "debugger:bob"
    assert by_id[denied]["decision"] == "deny"
    assert by_id[denied]["rule"] == "debugger may not reserve cpu scope"
    assert {"release", "agent.hello"} <= {line["action"] for line in lines}
    seen = {(x["identity"], x["action"], x["decision"]) for x in lines}
    assert ("agent:h1", "agent.hello", "allow") in seen  # each agent of the fixture
    assert ("viewer:carol", "reserve", "deny") in seen
    assert ("debugger:mallory", "reserve", "deny") in seen


# --- listening ------------------------------------------------------------------------


def arbiter_exit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hwbp.server", "--db", ":memory:", *args],
        cwd=procs.ROOT,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def test_plaintext_on_a_non_loopback_address_needs_insecure() -> None:
    done = arbiter_exit("--listen", "0.0.0.0:0")
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0:0 without TLS" in done.stderr
    done = arbiter_exit("--listen", "127.0.0.1:0", "--metrics-listen", "0.0.0.0:0")
    assert done.returncode == 2
    assert "refusing to serve metrics on 0.0.0.0:0" in done.stderr and "Traceback" not in (
        done.stderr
    )


def test_a_policy_without_tls_or_half_a_tls_setting_is_refused(env: Env) -> None:
    policy = env.audit.parent / "policy.toml"
    done = arbiter_exit("--listen", "127.0.0.1:0", "--policy", str(policy))
    assert done.returncode == 2 and "--policy needs TLS" in done.stderr
    done = arbiter_exit("--listen", "127.0.0.1:0", "--tls-cert", str(env.certs["arbiter"].cert))
    assert done.returncode == 2 and "--tls-key" in done.stderr
