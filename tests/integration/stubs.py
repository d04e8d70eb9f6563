"""Thin helpers over the generated stubs for integration tests (no SDK in the way)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hwbp.v1 import (
    arbiter_pb2 as a,
)
from hwbp.v1 import (
    arbiter_pb2_grpc,
    simulation_pb2_grpc,
)
from hwbp.v1 import (
    types_pb2 as t,
)

TYPES = {
    "x": t.BREAKPOINT_TYPE_EXEC,
    "w": t.BREAKPOINT_TYPE_WRITE,
    "rw": t.BREAKPOINT_TYPE_READ_WRITE,
}


class Api:
    def __init__(self, channel: grpc.Channel) -> None:
        self.arb = arbiter_pb2_grpc.ArbiterStub(channel)
        self.sim = simulation_pb2_grpc.SimulationStub(channel)

    def reserve(
        self,
        host: str,
        *,
        scope: str,
        addr: int,
        length: int = 8,
        type: str = "w",
        cpu: int | None = None,
        task: int | None = None,
        owner: str = "test",
        enabled: bool = True,
        kernel: bool = False,
    ) -> t.Reservation:
        return self.reserve_response(
            host,
            scope=scope,
            addr=addr,
            length=length,
            type=type,
            cpu=cpu,
            task=task,
            owner=owner,
            enabled=enabled,
            kernel=kernel,
        ).reservation

    def reserve_response(
        self,
        host: str,
        *,
        scope: str,
        addr: int,
        length: int = 8,
        type: str = "w",
        cpu: int | None = None,
        task: int | None = None,
        owner: str = "test",
        enabled: bool = True,
        kernel: bool = False,
        key: str = "",
        timeout: float = 10.0,
    ) -> a.ReserveResponse:
        scopes = {
            "system": t.SCOPE_SYSTEM,
            "cpu": t.SCOPE_CPU,
            "task": t.SCOPE_TASK,
            "task+cpu": t.SCOPE_TASK_CPU,
        }
        req = a.ReserveRequest(
            request_id=uuid.uuid4().hex,
            target=t.Target(host=host, scope=scopes[scope], cpu=cpu, task=task),
            spec=t.BreakpointSpec(
                addr=addr, len=length, type=TYPES[type], enabled=enabled, kernel=kernel
            ),
            owner=owner,
            idempotency_key=key,
        )
        return self.arb.Reserve(req, timeout=timeout)

    def release(self, rid: str) -> None:
        self.arb.Release(
            a.ReleaseRequest(request_id=uuid.uuid4().hex, reservation_id=rid), timeout=10
        )

    def inventory(self, host: str) -> list[t.CpuInventory]:
        return list(self.arb.Inventory(a.InventoryRequest(host=host), timeout=10).cpus)

    def ids(self, host: str) -> set[str]:
        return {r.id for r in self.arb.List(a.ListRequest(host=host), timeout=10).reservations}


def error_info(err: grpc.RpcError) -> tuple[grpc.StatusCode, str, dict[str, str], str]:
    """(code, reason, metadata, message) of a failed call."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, f"no rich status on {err}"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return err.code(), info.reason, dict(info.metadata), status.message
    raise AssertionError(f"no ErrorInfo in {status}")


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}: last {last!r}")
