"""Which SDK calls are retried on transient failures, and what a retry may conclude.

The stub below stands in for the generated gRPC stub inside one Client (no network, no
server): it fails the first attempts the way a dropped connection would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from hwbp.client import Client, Unavailable
from hwbp.client.retry import RetryPolicy
from hwbp.errors import HostNotFound, ReservationNotFound
from hwbp.v1 import arbiter_pb2, types_pb2


class WireError(grpc.RpcError):
    """What grpc raises for a failed unary call: code, details, trailers."""

    def __init__(self, code: grpc.StatusCode, reason: str = "") -> None:
        self._code = code
        self._trailers: tuple[tuple[str, bytes], ...] = ()
        if reason:
            detail = any_pb2.Any()
            detail.Pack(error_details_pb2.ErrorInfo(domain="hwbp.dev", reason=reason))
            st = status_pb2.Status(code=code_pb2.NOT_FOUND, message="gone", details=[detail])
            self._trailers = (("grpc-status-details-bin", st.SerializeToString()),)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "gone" if self._trailers else "connection reset"

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return self._trailers


class ScriptedStub:
    """Answers each call with the next scripted outcome; records every request."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.requests: list[Any] = []
        self.timeouts: list[float | None] = []

    def __call__(self, request: Any, timeout: float | None = None) -> Any:
        self.requests.append(request)
        self.timeouts.append(timeout)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def __getattr__(self, name: str) -> ScriptedStub:
        return self  # every RPC of the service follows the same script


RESERVATION = types_pb2.Reservation(
    id="r1",
    target=types_pb2.Target(host="h1", scope=types_pb2.SCOPE_CPU, cpu=0),
    spec=types_pb2.BreakpointSpec(addr=0x1000, len=8, type=types_pb2.BREAKPOINT_TYPE_EXEC),
    ptrace_index=-1,
)
DROPPED = WireError(grpc.StatusCode.UNAVAILABLE)


@pytest.fixture
def client() -> Iterator[Client]:
    # Nothing listens on port 1; the scripted stub answers before the channel is used.
    with Client("127.0.0.1:1", retry=RetryPolicy(attempts=3, initial=0.001, maximum=0.01)) as c:
        yield c


def test_reserve_retries_with_the_same_idempotency_key(client: Client) -> None:
    stub = ScriptedStub(DROPPED, DROPPED, arbiter_pb2.ReserveResponse(reservation=RESERVATION))
    client._arbiter = stub  # type: ignore[assignment]
    handle = client.reserve("h1", cpu=0, addr=0x1000, type="x")
    assert handle.id == "r1" and handle.len == 8
    keys = {r.idempotency_key for r in stub.requests}
    assert len(stub.requests) == 3 and len(keys) == 1 and keys != {""}
    assert len({r.request_id for r in stub.requests}) == 1
    assert all(t is not None and t > 0 for t in stub.timeouts)  # every call has a deadline


def test_release_that_finds_it_gone_after_a_retry_succeeded(client: Client) -> None:
    gone = WireError(grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")
    client._arbiter = ScriptedStub(DROPPED, gone)  # type: ignore[assignment]
    assert client.release("r1") is None


def test_release_of_an_unknown_id_on_the_first_try_is_an_error(client: Client) -> None:
    gone = WireError(grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")
    client._arbiter = ScriptedStub(gone)  # type: ignore[assignment]
    with pytest.raises(ReservationNotFound):
        client.release("r1")


def test_modify_is_not_retried(client: Client) -> None:
    stub = ScriptedStub(DROPPED, arbiter_pb2.ModifyResponse(reservation=RESERVATION))
    client._arbiter = stub  # type: ignore[assignment]
    with pytest.raises(Unavailable):
        client.modify("r1", enabled=False)
    assert len(stub.requests) == 1


def test_reads_give_up_after_the_last_attempt(client: Client) -> None:
    stub = ScriptedStub(DROPPED, DROPPED, DROPPED, DROPPED)
    client._arbiter = stub  # type: ignore[assignment]
    with pytest.raises(Unavailable, match="arbiter unavailable"):
        client.list()
    assert len(stub.requests) == 3


def test_refusals_are_never_retried(client: Client) -> None:
    gone = WireError(grpc.StatusCode.NOT_FOUND, "HOST_NOT_FOUND")
    stub = ScriptedStub(gone, arbiter_pb2.InventoryResponse())
    client._arbiter = stub  # type: ignore[assignment]
    with pytest.raises(HostNotFound, match="gone"):
        client.inventory("nope")
    assert len(stub.requests) == 1
