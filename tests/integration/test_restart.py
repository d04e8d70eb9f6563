"""What an arbiter restart (SIGTERM, or kill -9) must not forget, with real processes.

Each of these failed before the ledger kept them (issue 13 items 1 and 4, issue 12's
durable keys): reservation ids were reissued after a restart, so a stale Release of an
old id freed a newer holder's reservation; a reserve retried after a restart with the
same idempotency key allocated a second time; an acknowledged Attach was gone.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from hwbp.server.store.base import id_order
from hwbp.v1 import arbiter_pb2 as a
from hwbp.v1 import ptrace_pb2 as p
from hwbp.v1 import ptrace_pb2_grpc
from tests.integration import ledgers, procs
from tests.integration.stubs import Api, error_info, wait_until

pytestmark = pytest.mark.timeout(90)
HOST = "hr"
T = TypeVar("T")
STOPS = pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill9"])


class Arbiter:
    """An arbiter on one ledger and port, restartable, with a one-CPU fleet."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.proc, self.address = ledgers.arbiter(db)
        self.fleet = procs.start_fleet(self.address, HOST, 1)

    def restart(self, sig: int) -> None:
        self.proc.stop(sig)
        self.proc, _ = ledgers.arbiter(self.db, ledgers.port_of(self.address))
        wait_until(lambda: ledgers.health(self.address) == ledgers.SERVING, what="serving")

    def stop(self) -> None:
        self.fleet.stop()
        self.proc.stop()


@pytest.fixture
def arb(tmp_path: Path) -> Iterator[Arbiter]:
    arbiter = Arbiter(tmp_path / "ledger.db")
    try:
        yield arbiter
    finally:
        arbiter.stop()


def _retry(fn: Callable[[], T]) -> T:
    """The first call after a restart may meet a channel still reconnecting."""
    for _ in range(100):
        try:
            return fn()
        except grpc.RpcError as err:
            if err.code() is not grpc.StatusCode.UNAVAILABLE:
                raise
            time.sleep(0.1)
    return fn()


@STOPS
def test_reservation_ids_never_repeat_across_restarts(arb: Arbiter, sig: int) -> None:
    with grpc.insecure_channel(arb.address) as ch:
        api = Api(ch)
        r1 = api.reserve(HOST, scope="cpu", cpu=0, addr=0x1000, owner="ann")
        r2 = api.reserve(HOST, scope="cpu", cpu=0, addr=0x2000, owner="ann")
        api.release(r2.id)
        arb.restart(sig)
        r3 = _retry(lambda: api.reserve(HOST, scope="cpu", cpu=0, addr=0x3000, owner="bob"))
        assert r3.id not in (r1.id, r2.id)
        assert id_order(r3.id) > id_order(r2.id)  # still in creation order
        # A stale (or retried) release of ann's old r2 finds nothing; bob's r3 stays.
        with pytest.raises(grpc.RpcError) as exc:
            api.release(r2.id)
        assert error_info(exc.value)[1] == "RESERVATION_NOT_FOUND"
        assert api.ids(HOST) == {r1.id, r3.id}
        listed = api.arb.List(a.ListRequest(host=HOST), timeout=10).reservations
        assert [r.id for r in listed] == [r1.id, r3.id]  # admission order


@STOPS
def test_a_reserve_retried_across_a_restart_returns_the_first_reservation(
    arb: Arbiter, sig: int
) -> None:
    key = uuid.uuid4().hex
    with grpc.insecure_channel(arb.address) as ch:
        api = Api(ch)
        first = api.reserve_response(HOST, scope="cpu", cpu=0, addr=0x4000, key=key)
        arb.restart(sig)
        again = _retry(lambda: api.reserve_response(HOST, scope="cpu", cpu=0, addr=0x4000, key=key))
        assert again.reservation.id == first.reservation.id
        assert again.generation == first.generation
        assert api.ids(HOST) == {first.reservation.id}
        # The key is still bound to its request body after the restart.
        with pytest.raises(grpc.RpcError) as exc:
            api.reserve_response(HOST, scope="cpu", cpu=0, addr=0x5000, key=key)
        code, reason, meta, _ = error_info(exc.value)
        assert code is grpc.StatusCode.INVALID_ARGUMENT and reason == "IDEMPOTENCY_KEY_REUSED"
        assert meta["idempotency_key"] == key
        assert api.ids(HOST) == {first.reservation.id}


@STOPS
def test_an_acknowledged_attach_survives_a_restart(arb: Arbiter, sig: int) -> None:
    with grpc.insecure_channel(arb.address) as ch:
        ptrace = ptrace_pb2_grpc.PtraceStub(ch)
        session = ledgers.open_session(ch, ttl=60)

        def attach(task: int, sid: str = "") -> bool:
            req = p.AttachRequest(request_id=uuid.uuid4().hex, host=HOST, task=task, session_id=sid)
            return bool(ptrace.Attach(req, timeout=10).already_attached)

        assert attach(4242) is False
        assert attach(4343, session) is False
        arb.restart(sig)
        assert _retry(lambda: attach(4242)) is True
        assert attach(4343, session) is True
        peek = p.PeekUserRequest(request_id="peek", host=HOST, task=4242, reg=7)
        assert ptrace.PeekUser(peek, timeout=10).value == 0
        detach = p.DetachRequest(request_id="detach", host=HOST, task=4242)
        assert ptrace.Detach(detach, timeout=10).released == 0
        arb.restart(sig)
        assert _retry(lambda: attach(4242)) is False  # the detach was durable too


@STOPS
def test_a_detached_tasks_kept_registers_stay_detached_across_a_restart(
    arb: Arbiter, sig: int
) -> None:
    """PTRACE_DETACH keeps DR0-DR7 (and their slots); the restart keeps them detached."""
    with grpc.insecure_channel(arb.address) as ch:
        ptrace = ptrace_pb2_grpc.PtraceStub(ch)
        task = 4444
        attach = p.AttachRequest(request_id="a1", host=HOST, task=task)
        assert not ptrace.Attach(attach, timeout=10).already_attached
        poke = p.PokeUserRequest(request_id="p", host=HOST, task=task, reg=0, value=0x7000)
        ptrace.PokeUser(poke, timeout=10)
        detach = p.DetachRequest(request_id="d", host=HOST, task=task)
        assert ptrace.Detach(detach, timeout=10).kept == 1
        arb.restart(sig)
        again = p.AttachRequest(request_id="a2", host=HOST, task=task)
        assert _retry(lambda: ptrace.Attach(again, timeout=10)).already_attached is False
        peek = p.PeekUserRequest(request_id="peek", host=HOST, task=task, reg=0)
        assert ptrace.PeekUser(peek, timeout=10).value == 0x7000
