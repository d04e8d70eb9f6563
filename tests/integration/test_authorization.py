"""Rights that crossed identities (issue 13 items 6, 7 and 8), with real TLS identities.

Before: a debugger who may not release alice's reservation ended it, and alice's ptrace
attachment, by "exiting" her task through Simulation.ExitTask (audited as allowed); a
debugger put reservations and attachments into alice's session (only its existence was
checked). Keys were also global: one identity's key returned another's reservation.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest

from hwbp.errors import IdempotencyKeyReused, PermissionDenied
from hwbp.v1 import ptrace_pb2, ptrace_pb2_grpc
from scripts.make_certs import write_dev_certs
from tests.integration import procs
from tests.integration.test_security import CLIENTS, POLICY, Env, grpc_creds

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("authorization")
    certs = write_dev_certs(root / "certs", ["h1", "h2"], CLIENTS)
    policy, audit = root / "policy.toml", root / "audit.jsonl"
    policy.write_text(POLICY)
    proc, address = procs.start_arbiter(
        *("--tls-cert", str(certs["arbiter"].cert), "--tls-key", str(certs["arbiter"].key)),
        *("--tls-ca", str(certs["ca"].cert), "--policy", str(policy)),
        *("--audit-log", str(audit), "--ack-timeout", "2"),
    )
    e = Env(address, certs, audit, proc)
    fleets = [procs.start_fleet(address, h, 2, *e.flags(f"agent:{h}")) for h in ("h1", "h2")]
    try:
        yield e
    finally:
        for p in [*fleets, proc]:
            p.stop()


def _denials(env: Env, request_id: str) -> list[dict[str, object]]:
    return [
        line
        for line in env.audit_lines()
        if line["request_id"] == request_id and line["decision"] == "deny"
    ]


def test_a_debugger_cannot_exit_someone_elses_task(env: Env) -> None:
    with env.client("admin:alice") as alice, env.client("debugger:bob") as bob:
        held = alice.reserve("h1", task=900, addr=0x1000, len=8, type="w")
        tracer = alice.ptrace("h1", 901)
        tracer.poke(0, 0x2000)
        for task in (900, 901):
            rid = uuid.uuid4().hex
            with pytest.raises(PermissionDenied) as exc:
                bob.exit_task("h1", task, request_id=rid)
            assert exc.value.metadata["identity"] == "debugger:bob"
            assert "task exit" in exc.value.metadata["rule"]
            assert _denials(env, rid), "the refusal is not audited"
        assert held.id in {r.id for r in alice.list("h1")}
        assert tracer.peek(0) == 0x2000  # still attached, still holding its register
        # What task exit is for: the host's agent reports it, or an admin drills it.
        assert alice.exit_task("h1", 900) == 1
        assert alice.exit_task("h1", 901) == 1
        assert held.id not in {r.id for r in alice.list("h1")}


def test_reserve_and_attach_into_someone_elses_session_are_refused(env: Env) -> None:
    with (
        env.client("admin:alice") as alice,
        env.client("debugger:bob") as bob,
        alice.session(ttl=30) as session,
    ):
        rid = uuid.uuid4().hex
        with pytest.raises(PermissionDenied) as exc:
            bob.reserve(
                "h1", task=902, addr=0x3000, len=8, type="w", session_id=session.id,
                request_id=rid,
            )  # fmt: skip
        assert exc.value.metadata["identity"] == "debugger:bob"
        assert _denials(env, rid)
        with grpc.secure_channel(env.address, grpc_creds(env.tls("debugger:bob"))) as ch:
            rid = uuid.uuid4().hex
            attach = ptrace_pb2.AttachRequest(
                request_id=rid, session_id=session.id, host="h1", task=903
            )
            with pytest.raises(grpc.RpcError) as rpc:
                ptrace_pb2_grpc.PtraceStub(ch).Attach(attach, timeout=10)
            assert rpc.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert _denials(env, rid)
        assert session.list() == []
        # The owner itself may, of course.
        mine = session.reserve("h1", task=902, addr=0x3000, len=8, type="w")
        assert [r.id for r in session.list()] == [mine.id]


def test_idempotency_keys_are_scoped_to_the_caller(env: Env) -> None:
    key = uuid.uuid4().hex
    with env.client("debugger:bob") as bob, env.client("admin:alice") as alice:
        bobs = bob.reserve("h1", task=904, addr=0x4000, len=8, type="w", idempotency_key=key)
        alices = alice.reserve("h2", cpu=1, addr=0x5000, len=8, type="w", idempotency_key=key)
        try:
            assert alices.id != bobs.id
            assert (alices.info.host, alices.info.owner) == ("h2", "admin:alice")
            again = bob.reserve("h1", task=904, addr=0x4000, len=8, type="w", idempotency_key=key)
            assert again.id == bobs.id
            # One caller's key names one request, whichever host it went to first.
            with pytest.raises(IdempotencyKeyReused):
                alice.reserve("h1", cpu=1, addr=0x5000, len=8, type="w", idempotency_key=key)
            assert alices.id in {r.id for r in alice.list("h2")}
            assert not [r for r in alice.list("h1") if r.addr == 0x5000]
        finally:
            bob.release(bobs.id)
            alice.release(alices.id)
