"""Metrics, JSON logs and the reason-code table, without processes or sockets."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from hwbp.errors import HwbpError
from hwbp.model import BpType, Breakpoint, Reservation, Scope, Target
from hwbp.server import links
from hwbp.server import metrics as metrics_mod
from hwbp.server.fleet import Fleet
from hwbp.server.interceptors import reason_of
from hwbp.server.links import AckResult, AgentChannel
from hwbp.server.logs import JsonFormatter, request_id_of
from hwbp.server.metrics import Metrics, nack_class
from hwbp.v1 import types_pb2
from scripts import reason_codes


def _value(m: Metrics, name: str, **labels: str) -> float:
    got = m.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


@pytest.fixture
def fleet() -> Fleet:
    f = Fleet(ack_timeout=1.0)
    f.ensure_host("h", 2)
    return f


@pytest.fixture
def metrics(fleet: Fleet) -> Iterator[Metrics]:
    m = Metrics(fleet)
    yield m
    m.stop()


def _reserve(fleet: Fleet, rid: str, target: Target) -> None:
    bp = Breakpoint(addr=0x1000, length=8, type=BpType.WRITE)
    fleet.hosts["h"].ledger.reserve(Reservation(id=rid, host="h", target=target, bp=bp))


def test_gauges_read_the_ledger_at_scrape_time(fleet: Fleet, metrics: Metrics) -> None:
    assert _value(metrics, "hwbp_slots_used", host="h", cpu="1") == 0
    _reserve(fleet, "r1", Target(Scope.CPU, cpu=1))
    _reserve(fleet, "r2", Target(Scope.SYSTEM))
    assert _value(metrics, "hwbp_slots_used", host="h", cpu="1") == 2
    assert _value(metrics, "hwbp_slots_used", host="h", cpu="0") == 1
    assert _value(metrics, "hwbp_slots_total", host="h", cpu="0") == 4
    assert _value(metrics, "hwbp_reservations", host="h", scope="cpu") == 1
    assert _value(metrics, "hwbp_reservations", host="h", scope="task") == 0
    assert _value(metrics, "hwbp_agents_connected", host="h") == 0


def test_a_scrape_from_another_thread_reads_on_the_event_loop(
    fleet: Fleet, metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    readers: list[int] = []

    def spy(f: Fleet) -> list[metrics_mod.HostSnapshot]:
        readers.append(threading.get_ident())
        return real(f)

    real = metrics_mod.snapshot
    monkeypatch.setattr(metrics_mod, "snapshot", spy)
    _reserve(fleet, "r1", Target(Scope.CPU, cpu=0))
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever)
    runner.start()
    try:
        metrics.collector.loop = loop
        assert _value(metrics, "hwbp_slots_used", host="h", cpu="0") == 1
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(5)
        loop.close()
    assert readers and set(readers) == {runner.ident}


def test_each_arbiter_has_its_own_registry(fleet: Fleet) -> None:
    a, b = Metrics(fleet), Metrics(Fleet(ack_timeout=1.0))
    a.requests.labels("cpu", "ok").inc()
    assert _value(a, "hwbp_reservation_requests_total", scope="cpu", result="ok") == 1
    assert _value(b, "hwbp_reservation_requests_total", scope="cpu", result="ok") == 0
    assert _value(b, "hwbp_slots_total", host="h", cpu="0") == 0


async def test_agent_answers_feed_ack_latency_and_nack_reasons(
    fleet: Fleet, metrics: Metrics
) -> None:
    metrics.start()
    host = fleet.hosts["h"]
    mine = AgentChannel("h", 0, "sim")
    host.connect(mine)  # sends the resync (generation 0)
    stranger = AgentChannel("h", 1, "sim")  # not connected: another arbiter's channel
    for channel in (mine, stranger):
        channel.send_reload(1, "q", [])
        channel.answered(AckResult(1, True))
        channel.send_reload(2, "q", [])
        channel.answered(AckResult(2, False, reason="no", errno=28))
    mine.send_reload(3, "q", [])
    mine.answered(AckResult(3, False, reason="refused"))
    assert _value(metrics, "hwbp_reload_ack_seconds_count") == 3
    assert _value(metrics, "hwbp_nacks_total", reason_class="KERNEL_NO_FREE_SLOT") == 1
    assert _value(metrics, "hwbp_nacks_total", reason_class="AGENT_REFUSED") == 1
    assert _value(metrics, "hwbp_agents_connected", host="h") == 1
    metrics.stop()
    assert metrics.on_answer not in links.ANSWER_HOOKS


async def test_an_agent_counts_as_synced_once_it_acknowledged_the_newest_state(
    fleet: Fleet, metrics: Metrics
) -> None:
    host = fleet.hosts["h"]
    host.generation = 7  # restored: the agent's hello says it applied 7 before the restart
    channel = AgentChannel("h", 0, "sim")
    channel.acked_generation = 7
    host.connect(channel)  # the resync (generation 7) is out, not acknowledged
    assert _value(metrics, "hwbp_agents_connected", host="h") == 1
    assert _value(metrics, "hwbp_agents_synced", host="h") == 0
    host.answered(channel, AckResult(7, True))
    assert _value(metrics, "hwbp_agents_synced", host="h") == 1


def test_nack_class_follows_the_arbiters_refusal_codes() -> None:
    assert nack_class(AckResult(1, False)) == "AGENT_REFUSED"
    assert nack_class(AckResult(1, False, errno=28)) == "KERNEL_NO_FREE_SLOT"
    assert nack_class(AckResult(1, False, errno=1)) == "KERNEL_REFUSED"


def test_a_lease_expiry_counts_once_per_session(metrics: Metrics) -> None:
    def event(host: str, sid: str, reason: str) -> types_pb2.Event:
        return types_pb2.Event(
            kind=types_pb2.EVENT_KIND_LEASE_EXPIRED,
            host=host,
            request_id=f"session:{sid}",
            reason=reason,
        )

    for ev in (
        event("h", "s1", "lease expired"),
        event("g", "s1", "lease expired"),  # the same session on a second host
        event("h", "s2", "closed"),  # closed by its owner, not expired
        event("h", "s3", "lease expired"),
    ):
        metrics.on_event(ev)
    assert _value(metrics, "hwbp_lease_expiries_total") == 2


class _Context:
    def __init__(self, code: grpc.StatusCode | None, trailers: Any = ()) -> None:
        self._code, self._trailers = code, trailers

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def trailing_metadata(self) -> Any:
        return self._trailers


def test_the_reservation_result_is_the_error_info_reason() -> None:
    box = any_pb2.Any()
    box.Pack(error_details_pb2.ErrorInfo(reason="NO_FREE_SLOT", domain="hwbp.dev"))
    status = status_pb2.Status(code=8, details=[box]).SerializeToString()
    rich = _Context(grpc.StatusCode.RESOURCE_EXHAUSTED, (("grpc-status-details-bin", status),))
    assert reason_of(rich) == "NO_FREE_SLOT"
    assert reason_of(_Context(grpc.StatusCode.CANCELLED)) == "CANCELLED"
    assert reason_of(_Context(None)) == "UNKNOWN"


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("hwbp.server", logging.INFO, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_the_request_id() -> None:
    fmt = JsonFormatter()
    line = json.loads(fmt.format(_record("request %s: reserve %s", "abc", "r1")))
    assert line["request_id"] == "abc" and line["message"] == "request abc: reserve r1"
    assert line["level"] == "INFO" and line["logger"] == "hwbp.server"
    assert line["time"].endswith("+00:00")
    assert request_id_of(_record("host %s appeared", "h")) is None
    assert request_id_of(_record("anything", request_id="xyz")) == "xyz"
    assert request_id_of(_record("stream %s refused: %s", "s9", "NOT_FOUND")) == "s9"


def test_reason_table_lists_every_reason_code() -> None:
    def walk(cls: type[HwbpError]) -> set[str]:
        """The service's reasons (the client adds its own, e.g. USAGE, elsewhere)."""
        mine = {cls.reason} if cls.__module__ == "hwbp.errors" else set()
        return mine.union(*(walk(sub) for sub in cls.__subclasses__()))

    table = reason_codes.table()
    for reason in walk(HwbpError):
        assert f"| `{reason}` |" in table
    assert "| `NO_FREE_SLOT` | RESOURCE_EXHAUSTED | ENOSPC |" in table
