"""Shared fixtures: one arbiter per module, stopped by pid."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from tests.integration import procs


@pytest.fixture(scope="module")
def arbiter() -> Iterator[str]:
    proc, address = procs.start_arbiter("--ack-timeout", "1.0")
    try:
        yield address
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def channel(arbiter: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(arbiter) as ch:
        yield ch
