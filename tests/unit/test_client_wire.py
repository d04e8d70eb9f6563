"""The SDK's requests and values use the server's enum tables (hwbp.wire.convert)."""

from __future__ import annotations

from typing import cast

import pytest

from hwbp.client import wire
from hwbp.errors import InvalidArgument
from hwbp.model import AccessType, BpType, Scope
from hwbp.v1 import types_pb2
from hwbp.wire import convert


def test_an_unknown_event_kind_is_a_clear_usage_error() -> None:
    with pytest.raises(InvalidArgument, match=r"unknown event kind 'hits'.*hit, reserved"):
        wire.watch_request("h1", None, ["hits"], None)


@pytest.mark.parametrize("kind", list(BpType))
def test_breakpoint_types_round_trip_through_the_servers_table(kind: BpType) -> None:
    length = None if kind is BpType.EXEC else 4
    msg = wire.spec(0x1000, length, kind.value, enabled=True, kernel=False)
    assert convert.bp_type(msg.type) is kind


@pytest.mark.parametrize(("cpu", "task", "scope"), [(0, None, Scope.CPU), (None, 7, Scope.TASK)])
def test_targets_are_built_as_the_server_reads_them(
    cpu: int | None, task: int | None, scope: Scope
) -> None:
    core, msg = wire.target("h1", system=False, cpu=cpu, task=task)
    assert core.scope is scope and convert.target_from(msg) == core


def test_values_a_newer_arbiter_may_send_are_read_leniently() -> None:
    unknown = cast("types_pb2.Scope.ValueType", 99)
    msg = types_pb2.Reservation(id="r1", target=types_pb2.Target(host="h1", scope=unknown))
    msg.spec.type = 42  # type: ignore[assignment]
    info = wire.reservation(msg)
    assert (info.scope, info.type) == (Scope.SYSTEM, BpType.EXEC)


def test_access_types_use_the_servers_table() -> None:
    req = wire.access_request("h1", 0, 0x1000, 1, "w", None)
    assert convert.access_type(req.type) is AccessType.WRITE
