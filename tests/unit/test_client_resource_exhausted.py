"""A real gRPC message-size refusal decodes to exit 7, never to "no free slot" (exit 3).

A generic echo-like service on 127.0.0.1 (not the arbiter) answers with more bytes than
the caller's channel accepts, or than the server may send; gRPC itself then reports
RESOURCE_EXHAUSTED without any ErrorInfo, which is what a fleet-wide Inventory hit.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from hwbp import errors as core
from hwbp.client.errors import ExitCode, exit_code_for, from_rpc_error

METHOD = "/test.Big/Get"
BIG = 5 * 1024 * 1024  # over gRPC's default 4 MiB receive limit


def _identity(data: bytes) -> bytes:
    return data


@pytest.fixture
def big_server() -> Iterator[tuple[str, str]]:
    """Two servers: one answers 5 MiB, the other may send only 1 KiB."""

    def answer(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b"x" * BIG

    handler = grpc.method_handlers_generic_handler(
        "test.Big",
        {"Get": grpc.unary_unary_rpc_method_handler(answer, _identity, _identity)},
    )
    servers, addresses = [], []
    for options in ([], [("grpc.max_send_message_length", 1024)]):
        server = grpc.server(ThreadPoolExecutor(max_workers=2), options=options)
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        addresses.append(f"127.0.0.1:{port}")
    try:
        yield addresses[0], addresses[1]
    finally:
        for server in servers:
            server.stop(grace=None)


def _call(address: str) -> grpc.RpcError:
    with grpc.insecure_channel(address) as ch:
        get = ch.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)
        with pytest.raises(grpc.RpcError) as caught:
            get(b"", timeout=10)
    return caught.value


@pytest.mark.parametrize("which", ["receive", "send"])
def test_message_size_limit_is_resource_exhausted_exit_7(
    big_server: tuple[str, str], which: str
) -> None:
    rpc_error = _call(big_server[0] if which == "receive" else big_server[1])
    assert rpc_error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    err = from_rpc_error(rpc_error)
    assert not isinstance(err, core.NoFreeSlot)
    assert exit_code_for(err) == ExitCode.RESOURCE_EXHAUSTED
    assert "resource exhausted" in str(err).lower()
