"""google.rpc.Status -> typed hwbp error, and the CLI's exit code table (pure, no server)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from hwbp import errors as core
from hwbp.client.errors import (
    EXIT_CODES,
    DeadlineExceeded,
    ExitCode,
    NoFreeSlot,
    RemoteError,
    Unavailable,
    UsageError,
    class_for_reason,
    exit_code_for,
    from_status,
    status_from_trailers,
)
from hwbp.client.values import Scope, SlotHolder
from hwbp.errors import ErrorClass


def status(code: int, message: str, reason: str, **metadata: str) -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(domain="hwbp.dev", reason=reason, metadata=metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    quota = any_pb2.Any()
    quota.Pack(error_details_pb2.QuotaFailure())  # a detail we do not read must not confuse
    return status_pb2.Status(code=code, message=message, details=[quota, detail])


NO_SLOT_MSG = (
    "no free debug register on host h1 cpu 0: 4 of 4 in use, "
    "held by r-1 (alice, cpu 0), r-2 (bob, task 7)"
)


def no_slot() -> RemoteError:
    st = status(
        code_pb2.RESOURCE_EXHAUSTED,
        NO_SLOT_MSG,
        "NO_FREE_SLOT",
        host="h1",
        cpu="0",
        errno="ENOSPC",
        holders="r-1 (alice, cpu 0);r-2 (bob, task 7)",
    )
    return from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, NO_SLOT_MSG, st)


def test_no_free_slot_is_typed_with_host_cpu_and_holders() -> None:
    err = no_slot()
    assert isinstance(err, core.NoFreeSlot)
    assert isinstance(err, NoFreeSlot)
    assert isinstance(err, RemoteError)
    assert (err.host, err.cpu) == ("h1", 0)
    # An arbiter that sends only ErrorInfo text: what it names is parsed into values.
    assert err.holders == (
        SlotHolder("r-1", "alice", "", Scope.CPU, 0, None),
        SlotHolder("r-2", "bob", "", Scope.TASK, None, 7),
    )
    assert [str(h) for h in err.holders] == ["r-1 (alice, cpu 0)", "r-2 (bob, task 7)"]
    assert err.errno_name == "ENOSPC"
    assert str(err) == NO_SLOT_MSG
    assert err.reason == "NO_FREE_SLOT"
    assert exit_code_for(err) == ExitCode.NO_FREE_SLOT == 3


def test_one_class_per_reason() -> None:
    assert type(no_slot()) is type(no_slot())
    assert type(no_slot()).__name__ == "NoFreeSlot"


@pytest.mark.parametrize(
    ("reason", "cls", "code"),
    [
        ("INVALID_LENGTH", core.InvalidLength, 2),
        ("MISALIGNED_ADDRESS", core.MisalignedAddress, 2),
        ("PTRACE_EIO", core.PtraceIOError, 2),
        ("ALREADY_ATTACHED", core.AlreadyAttached, 2),
        ("RESERVATION_NOT_FOUND", core.ReservationNotFound, 6),
        ("HOST_NOT_FOUND", core.HostNotFound, 6),
        ("NOT_OWNER", core.NotOwner, 4),
        ("UNAUTHENTICATED", core.Unauthenticated, 4),
        ("DRAINING", core.Draining, 5),
        ("ACK_TIMEOUT", core.AckTimeout, 5),
        ("KERNEL_REFUSED", core.KernelRefused, 1),
        ("KERNEL_NO_FREE_SLOT", core.KernelNoSpace, 3),
        ("AGENT_REFUSED", core.AgentRefused, 1),
    ],
)
def test_reason_maps_to_the_core_class(reason: str, cls: type[core.HwbpError], code: int) -> None:
    err = from_status(grpc.StatusCode.UNKNOWN, "x", status(code_pb2.UNKNOWN, "msg", reason))
    assert isinstance(err, cls)
    assert err.reason == reason
    assert err.message == "msg"
    assert exit_code_for(err) == code


def test_every_core_reason_is_found_by_walking_the_hierarchy() -> None:
    def walk(c: type[core.HwbpError]) -> list[type[core.HwbpError]]:
        return [s for sub in c.__subclasses__() for s in (sub, *walk(sub))]

    for cls in walk(core.HwbpError):
        if cls.__module__ == "hwbp.errors":
            assert class_for_reason(cls.reason) is cls


def test_unknown_reason_falls_back_to_the_status_code() -> None:
    err = from_status(
        grpc.StatusCode.NOT_FOUND, "gone", status(code_pb2.NOT_FOUND, "gone", "SOMETHING_NEW")
    )
    assert isinstance(err, core.NotFound)
    assert err.remote_reason == "SOMETHING_NEW"
    assert exit_code_for(err) == 6


@pytest.mark.parametrize(
    ("code", "cls", "exit_code"),
    [
        (grpc.StatusCode.UNAVAILABLE, Unavailable, 5),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded, 5),
        (grpc.StatusCode.PERMISSION_DENIED, core.PermissionDenied, 4),
        (grpc.StatusCode.INVALID_ARGUMENT, core.InvalidArgument, 2),
        (grpc.StatusCode.INTERNAL, core.HwbpError, 1),
    ],
)
def test_plain_transport_errors(
    code: grpc.StatusCode, cls: type[core.HwbpError], exit_code: int
) -> None:
    err = from_status(code, "failed to connect to all addresses", None)
    assert isinstance(err, cls)
    assert err.code is code
    assert exit_code_for(err) == exit_code
    assert err.transient == (
        code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    )


def test_unavailable_error_class() -> None:
    err = from_status(grpc.StatusCode.UNAVAILABLE, "connection refused", None)
    assert err.error_class is ErrorClass.UNAVAILABLE
    assert "unavailable" in str(err)
    assert from_status(grpc.StatusCode.DEADLINE_EXCEEDED, "", None).error_class is (
        ErrorClass.DEADLINE
    )


def test_status_is_read_from_trailers_and_corrupt_details_are_ignored() -> None:
    st = status(code_pb2.NOT_FOUND, "no r-9", "RESERVATION_NOT_FOUND")
    trailers = (("other", "x"), ("grpc-status-details-bin", st.SerializeToString()))
    assert status_from_trailers(trailers) == st
    assert status_from_trailers((("grpc-status-details-bin", b"\xff\xff"),)) is None
    assert status_from_trailers(None) is None


def test_exit_code_table_covers_every_error_class() -> None:
    assert set(EXIT_CODES) == set(ErrorClass)
    assert exit_code_for(UsageError("bad")) == ExitCode.USAGE and int(ExitCode.USAGE) == 2
    assert exit_code_for(ValueError("boom")) == ExitCode.UNEXPECTED
    assert int(ExitCode.UNEXPECTED) == 1
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4, 5, 6, 7]


def test_resource_exhausted_without_a_slot_reason_is_not_no_free_slot() -> None:
    """A message-size limit is RESOURCE_EXHAUSTED with no ErrorInfo: exit 7, not 3."""
    details = "Received message larger than max (31457339 vs. 4194304)"
    err = from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, details, None)
    assert not isinstance(err, core.NoFreeSlot)
    assert isinstance(err, core.ResourceExhausted)
    assert exit_code_for(err) == ExitCode.RESOURCE_EXHAUSTED
    assert int(ExitCode.RESOURCE_EXHAUSTED) == 7
    assert "resource exhausted" in str(err) and details in str(err)
    assert "debug register" in str(err)  # says it is not about the registers
    assert not err.transient


@pytest.mark.parametrize(
    ("reason", "code"),
    [("NO_FREE_SLOT", 3), ("KERNEL_NO_FREE_SLOT", 3), ("TOO_MANY_WATCHERS", 7), ("NEW", 7)],
)
def test_resource_exhausted_exit_code_follows_the_reason(reason: str, code: int) -> None:
    st = status(code_pb2.RESOURCE_EXHAUSTED, "msg", reason)
    err = from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "msg", st)
    assert exit_code_for(err) == code
    assert err.message == "msg"
