"""Which SDK calls are retried on transient failures, and what a retry may conclude.

The stub below stands in for the generated gRPC stub inside one client (no network, no
server): it fails the first attempts the way a dropped connection would. Every test runs
against both surfaces, the asyncio client and the sync one generated from it; the same
rules against a real arbiter are in tests/integration/test_sdk_retries.py.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from hwbp.client import Unavailable, calls
from hwbp.client.retry import RetryPolicy
from hwbp.errors import HostNotFound, ReservationNotFound
from hwbp.v1 import arbiter_pb2, ptrace_pb2, session_pb2, simulation_pb2, types_pb2
from tests.surfaces import SURFACES, TWIN, make_client


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

    # grpc's stubs say _Metadatum objects; what a call returns are (key, value) pairs.
    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:  # type: ignore[override]
        return self._trailers


class ScriptedStub:
    """Answers each call with the next scripted outcome; records every request."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.requests: list[Any] = []
        self.timeouts: list[float | None] = []
        self.aio = False  # grpc.aio's calls are awaited: answer with an awaitable

    def __call__(self, request: Any, timeout: float | None = None) -> Any:
        self.requests.append(request)
        self.timeouts.append(timeout)
        outcome = self.outcomes.pop(0)
        if self.aio:
            return self._later(outcome)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _later(self, outcome: Any) -> Any:
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


@pytest.fixture(params=SURFACES)
async def client(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    # Nothing listens on port 1; the scripted stub answers before the channel is used.
    policy = RetryPolicy(attempts=3, initial=0.001, maximum=0.01)
    async with make_client(request.param, "127.0.0.1:1", retry=policy) as c:
        c.surface = request.param
        yield c


def script(client: Any, service: str, *outcomes: Any) -> ScriptedStub:
    stub = ScriptedStub(*outcomes)
    stub.aio = client.surface == "async"
    client._stubs[service] = stub
    return stub


async def test_reserve_retries_with_the_same_idempotency_key(client: Any) -> None:
    ok = arbiter_pb2.ReserveResponse(reservation=RESERVATION)
    stub = script(client, "Arbiter", DROPPED, DROPPED, ok)
    handle = await client.reserve("h1", cpu=0, addr=0x1000, type="x")
    assert handle.id == "r1" and handle.len == 8
    keys = {r.idempotency_key for r in stub.requests}
    assert len(stub.requests) == 3 and len(keys) == 1 and keys != {""}
    assert len({r.request_id for r in stub.requests}) == 1
    assert all(t is not None and t > 0 for t in stub.timeouts)  # every call has a deadline


async def test_release_that_finds_it_gone_after_a_retry_succeeded(client: Any) -> None:
    gone = WireError(grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")
    script(client, "Arbiter", DROPPED, gone)
    assert await client.release("r1") is None


async def test_release_of_an_unknown_id_on_the_first_try_is_an_error(client: Any) -> None:
    gone = WireError(grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")
    script(client, "Arbiter", gone)
    with pytest.raises(ReservationNotFound):
        await client.release("r1")


async def test_modify_is_not_retried(client: Any) -> None:
    stub = script(client, "Arbiter", DROPPED, arbiter_pb2.ModifyResponse(reservation=RESERVATION))
    with pytest.raises(Unavailable):
        await client.modify("r1", enabled=False)
    assert len(stub.requests) == 1


async def test_reads_give_up_after_the_last_attempt(client: Any) -> None:
    stub = script(client, "Arbiter", DROPPED, DROPPED, DROPPED, DROPPED)
    with pytest.raises(Unavailable, match="arbiter unavailable"):
        await client.list()
    assert len(stub.requests) == 3


async def test_refusals_are_never_retried(client: Any) -> None:
    gone = WireError(grpc.StatusCode.NOT_FOUND, "HOST_NOT_FOUND")
    stub = script(client, "Arbiter", gone, arbiter_pb2.InventoryResponse())
    with pytest.raises(HostNotFound, match="gone"):
        await client.inventory("nope")
    assert len(stub.requests) == 1


async def test_a_lost_detach_answer_is_not_an_error(client: Any) -> None:
    gone = WireError(grpc.StatusCode.NOT_FOUND, "NOT_ATTACHED")
    stub = script(client, "Ptrace", DROPPED, gone)
    assert await client.ptrace("h1", 42).detach() == 0
    assert len(stub.requests) == 2


async def test_pokes_and_simulated_accesses_are_never_repeated(client: Any) -> None:
    poke = script(client, "Ptrace", DROPPED, ptrace_pb2.PokeUserResponse())
    with pytest.raises(Unavailable):
        await client.ptrace("h1", 42).poke(0, 0x1000)
    access = script(client, "Simulation", DROPPED, simulation_pb2.MemoryAccessResponse())
    with pytest.raises(Unavailable):
        await client.access("h1", 0, 0x1000, 1, "w")
    assert len(poke.requests) == len(access.requests) == 1


async def test_a_session_is_opened_once(client: Any) -> None:
    stub = script(client, "Sessions", DROPPED, session_pb2.SessionInfo(session_id="s-1"))
    with pytest.raises(Unavailable):
        await client.session(ttl=5)
    assert len(stub.requests) == 1


def test_every_rpc_of_every_service_has_a_rule() -> None:
    """A new RPC must say whether a repeat is safe before the SDK can call it."""
    from hwbp.v1 import arbiter_pb2 as a
    from hwbp.v1 import ptrace_pb2 as p
    from hwbp.v1 import session_pb2 as s
    from hwbp.v1 import simulation_pb2 as m

    methods = {
        (svc.name, method.name)
        for module in (a, p, s, m)
        for svc in module.DESCRIPTOR.services_by_name.values()
        for method in svc.methods
    }
    missing = sorted(f"{svc}.{name}" for svc, name in methods - calls.TABLE.keys())
    assert not missing, f"add a row to client/calls.py for {', '.join(missing)}"
    assert calls.TABLE.keys() <= methods
    for rpc in calls.TABLE.values():
        assert rpc.why, rpc
        assert rpc.gone is None or rpc.retry, (
            f"{rpc.method}: 'gone' only means something on a retry"
        )


@pytest.mark.parametrize(("sync", "aio"), list(TWIN.items()), ids=lambda c: c.__name__)
def test_both_surfaces_have_the_same_methods(sync: type, aio: type) -> None:
    """The generated sync classes offer every public method of their async source, each
    blocking where the async one is awaited (the drift check compares text; this, shape)."""

    def public(cls: type) -> dict[str, Any]:
        return {n: getattr(cls, n) for n in dir(cls) if not n.startswith("_")}

    assert public(sync).keys() == public(aio).keys()
    for name, method in public(aio).items():
        if callable(method):
            assert not inspect.iscoroutinefunction(public(sync)[name]), name
            params = list(inspect.signature(method).parameters)
            assert list(inspect.signature(public(sync)[name]).parameters) == params, name
