"""``hwbpctl cluster``: the replicas of a replicated arbiter and their roles.

Each endpoint is asked the standard health question about ``hwbp.v1.Arbiter`` (SERVING
on the leader only). A follower also names the leader it follows: a one-item List on
it is refused with NOT_LEADER, whose metadata ``leader`` is the leader's advertised
address, so a leader missing from the endpoints given is still found.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2

from hwbp.client.endpoints import NOT_LEADER
from hwbp.client.errors import from_rpc_error
from hwbp.v1 import arbiter_pb2, arbiter_pb2_grpc
from hwbp.wire.health import health_check
from hwbp.wire.tls import TlsConfig, channel

SERVICE = "hwbp.v1.Arbiter"
TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Member:
    address: str
    role: str  # leader, follower or unreachable
    follows: str = ""  # the leader a follower names ("" unknown)


def probe(address: str, tls: TlsConfig | None) -> Member:
    with channel(address, tls) as ch:
        try:
            got = health_check(ch)(health_pb2.HealthCheckRequest(service=SERVICE), timeout=TIMEOUT)
        except grpc.RpcError:
            return Member(address, "unreachable")
        if got.status == health_pb2.HealthCheckResponse.SERVING:
            return Member(address, "leader")
        try:
            arbiter_pb2_grpc.ArbiterStub(ch).List(
                arbiter_pb2.ListRequest(page_size=1), timeout=TIMEOUT
            )
        except grpc.RpcError as e:
            err = from_rpc_error(e)
            if err.remote_reason == NOT_LEADER:
                return Member(address, "follower", err.metadata.get("leader", ""))
        return Member(address, "follower")


def members(endpoints: Sequence[str], tls: TlsConfig | None) -> list[Member]:
    """Every endpoint's role, plus a leader the followers name that was not given."""
    found = [probe(a, tls) for a in endpoints]
    named = {m.follows for m in found if m.follows} - {m.address for m in found}
    found += [probe(a, tls) for a in sorted(named)]
    return found


def document(found: Sequence[Member]) -> dict[str, object]:
    leaders = [m.address for m in found if m.role == "leader"]
    return {
        "leader": leaders[0] if len(leaders) == 1 else None,
        "members": [
            {"address": m.address, "role": m.role} for m in found if m.role != "unreachable"
        ],
        "unreachable": [m.address for m in found if m.role == "unreachable"],
    }


def table(found: Sequence[Member]) -> str:
    width = max(len("ADDRESS"), *(len(m.address) for m in found))
    lines = [f"{'ADDRESS':<{width}}  ROLE"]
    lines += [f"{m.address:<{width}}  {m.role}" for m in found]
    return "\n".join(lines)
