"""Retries of both SDK surfaces against a real arbiter, through a proxy that loses or
delays the answer of a call the arbiter carried out (tests/integration/faults.py).

A reserve whose answer was lost is tried again with the same idempotency key and must
come back as the same reservation, never a second slot; a release whose answer was lost
finds the reservation gone on its retry and reports that as done (None).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from hwbp.client import Deadlines, RetryPolicy, Unavailable
from tests.integration import procs
from tests.integration.faults import LossyProxy
from tests.surfaces import SURFACES, make_client

pytestmark = pytest.mark.timeout(60)

HOST = "hr"
FAULTS = ("cut", "hold")
MUTATE = 2.0  # the client's deadline for a change (a loaded machine commits within it)
HOLD = 2.5  # a held answer comes later than that


@pytest.fixture(scope="module")
def arbiter() -> Iterator[str]:
    with procs.arbiter_with_fleet(HOST, 2) as address:
        yield address


@pytest.fixture
def proxy(arbiter: str) -> Iterator[LossyProxy]:
    with LossyProxy(arbiter) as p:
        yield p


@pytest.fixture(params=SURFACES)
async def client(request: pytest.FixtureRequest, proxy: LossyProxy) -> AsyncIterator[Any]:
    policy = RetryPolicy(attempts=4, initial=0.01, maximum=0.05)
    deadlines = Deadlines(mutate=MUTATE)
    async with make_client(request.param, proxy.address, retry=policy, deadlines=deadlines) as c:
        await c.list(HOST)  # connected through the proxy before anything is armed
        yield c
        for r in await c.list(HOST):
            await c.release(r.id)


def arm(proxy: LossyProxy, fault: str) -> int:
    proxy.arm(fault, HOLD)
    return proxy.requests


def lost(proxy: LossyProxy, fault: str) -> int:
    return proxy.cuts if fault == "cut" else proxy.holds


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_reserve_whose_answer_was_lost_yields_one_reservation(
    client: Any, proxy: LossyProxy, fault: str
) -> None:
    before = arm(proxy, fault)
    handle = await client.reserve(HOST, cpu=0, addr=0x1000, len=4, type="w", owner="retry")
    assert lost(proxy, fault) == 1, "the fault never happened: the test proved nothing"
    assert proxy.requests - before >= 2, "the lost answer was not retried"
    held = await client.list(HOST)
    assert [r.id for r in held] == [handle.id]
    assert (held[0].owner, held[0].addr) == ("retry", 0x1000)


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_release_whose_answer_was_lost_is_done_not_an_error(
    client: Any, proxy: LossyProxy, fault: str
) -> None:
    handle = await client.reserve(HOST, cpu=1, addr=0x2000, len=8, type="x")
    before = arm(proxy, fault)
    assert await handle.release() is None  # the retry found it gone: our first attempt did it
    assert lost(proxy, fault) == 1 and proxy.requests - before >= 2
    assert handle.released and await client.list(HOST) == []


async def test_a_modify_whose_answer_was_lost_is_not_repeated(
    client: Any, proxy: LossyProxy
) -> None:
    """Modify is not safe to repeat: the caller hears UNAVAILABLE, and the change the
    arbiter made stands (one modify, one generation bump)."""
    handle = await client.reserve(HOST, system=True, addr=0x3000, len=8, type="w")
    before = arm(proxy, "cut")
    with pytest.raises(Unavailable):
        await handle.modify(enabled=False)
    assert proxy.requests - before == 1
    (after,) = await client.list(HOST)
    assert after.enabled is False and after.generation > handle.generation
