"""The Python SDK against a real arbiter and a real fleet of 2 CPUs.

Every test runs twice: against ``AsyncClient`` and against the sync ``Client`` generated
from it (tests/surfaces.py gives the sync one the async API, blocking underneath). Their
retries against the same arbiter are in test_sdk_retries.py.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from hwbp import errors as core
from hwbp.client import EventKind, NoFreeSlot, ReservationInfo, RetryPolicy, Unavailable
from hwbp.errors import ReservationNotFound
from hwbp.model import BpType, Scope
from tests.integration import procs
from tests.surfaces import SURFACES, make_client

pytestmark = pytest.mark.timeout(60)

HOST = "h2"


@pytest.fixture(scope="module")
def addr() -> Iterator[str]:
    with procs.arbiter_with_fleet(HOST, 2) as address:
        yield address


@pytest.fixture(params=SURFACES)
def surface(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def client(addr: str, surface: str) -> AsyncIterator[Any]:
    async with make_client(surface, addr) as c:
        yield c
        for r in await c.list():
            await c.release(r.id)


async def test_session_reserve_modify_release(client: Any) -> None:
    async with await client.session(ttl=5.0, owner="sdk") as s:
        h = await s.reserve(HOST, cpu=0, addr=0x1000, len=4, type="w")
        assert isinstance(h.info, ReservationInfo)
        assert (h.scope, h.cpu, h.task, h.type, h.owner) == (
            Scope.CPU,
            0,
            None,
            BpType.WRITE,
            "sdk",
        )
        assert h.session_id == s.id and h.id in {r.id for r in await s.list()}

        info = await h.modify(addr=0x2000, enabled=False)
        assert (info.addr, info.enabled, h.addr) == (0x2000, False, 0x2000)
        assert info.generation > 0

        await h.release()
        assert await client.list(HOST) == []
        with pytest.raises(ReservationNotFound):
            await client.release(h.id)


async def test_context_managers_release(client: Any) -> None:
    async with await client.session(ttl=5.0) as s:
        async with await s.reserve(HOST, task=42, addr=0x3000, type="x") as h:
            assert h.len == 8 and h.scope is Scope.TASK
            assert [r.id for r in await client.list(HOST)] == [h.id]
        assert await client.list(HOST) == []
        await s.reserve(HOST, system=True, addr=0x4000, len=8, type="rw")
        assert len(await client.list(HOST)) == 1
    # Closing the session released what it still held; closing again is a no-op.
    assert await client.list(HOST) == []
    assert await s.close() == 0


async def test_keep_alive_holds_the_lease_past_its_ttl(client: Any) -> None:
    async with await client.session(ttl=1.5) as s:
        h = await s.reserve(HOST, cpu=1, addr=0x5000, type="x")
        # Time passing is the point: more than two TTLs, only the keep-alive keeps it.
        await asyncio.sleep(3.5)
        assert not s.expired and s.remaining is not None
        assert [r.id for r in await client.list(HOST)] == [h.id]


async def test_no_free_slot_is_typed_with_cpu_and_holders(client: Any) -> None:
    held = [
        await client.reserve(HOST, cpu=1, addr=0x1000 + 8 * i, len=8, type="w", owner=f"u{i}")
        for i in range(3)
    ]
    async with await client.session(ttl=30.0, owner="leased") as s:
        held.append(await s.reserve(HOST, task=55, addr=0x1100, len=8, type="w"))
        with pytest.raises(NoFreeSlot) as refused:
            await client.reserve(HOST, cpu=1, addr=0x9000, type="x")
    err = refused.value
    assert isinstance(err, core.NoFreeSlot)  # the core class catches it too
    assert (err.host, err.cpu, err.used, err.slots) == (HOST, 1, 4, 4)
    assert "cpu 1" in str(err)
    holders = {h.reservation_id: h for h in err.holders}
    assert set(holders) == {h.id for h in held}
    for h in held[:3]:
        got = holders[h.id]
        assert (got.owner, got.scope, got.cpu, got.task) == (h.owner, Scope.CPU, 1, None)
        assert (got.session_id, got.lease_left) == ("", None)
        assert got.age is not None and 0 <= got.age < 60
        assert str(got).startswith(f"{h.id} ({h.owner}, cpu 1, held ")
    leased = holders[held[3].id]
    assert (leased.owner, leased.scope, leased.task) == ("leased", Scope.TASK, 55)
    assert leased.session_id == s.id and leased.lease_left is not None
    assert 0 < leased.lease_left <= 30
    # The refusal changed nothing; the other CPU still has room.
    assert len(await client.list(HOST)) == 3
    await (await client.reserve(HOST, cpu=0, addr=0x9000, type="x")).release()


async def test_watch_sees_a_simulated_hit(client: Any) -> None:
    h = await client.reserve(HOST, task=77, addr=0x6000, len=4, type="w")
    image = await client.context_switch(HOST, 0, 77)
    assert image.current_task == 77 and 0x6000 in image.dr

    events = client.watch(HOST, task=77, kinds=["hit"], timeout=20, announce_subscribed=True)
    first = await anext(events)
    assert first.kind is EventKind.SUBSCRIBED  # from here on, nothing is missed
    assert (await client.access(HOST, 0, 0x6001, 1, "w")).hit
    event = await anext(events)
    await events.aclose()
    assert event.kind is EventKind.HIT and event.hit is not None
    assert (event.hit.reservation_id, event.hit.access_addr) == (h.id, 0x6001)
    await client.context_switch(HOST, 0, None)
    assert await client.exit_task(HOST, 77) == 1


async def test_a_watch_with_a_timeout_ends_quietly(client: Any) -> None:
    assert [e async for e in client.watch(HOST, task=123456, timeout=0.5)] == []


async def test_inventory_and_tracer(client: Any) -> None:
    async with await client.session(ttl=5.0) as s, await s.attach(HOST, 900) as tracer:
        await tracer.poke(0, 0x7000)
        assert await tracer.peek(0) == 0x7000
        cpus = await client.inventory(HOST)
        assert [c.cpu for c in cpus] == [0, 1]
        assert all(c.online and len(c.dr) == 4 and c.slots == 4 for c in cpus)
    assert await client.list(HOST) == []


async def test_a_tracer_sees_the_traps_of_its_task(client: Any) -> None:
    async with await client.session(ttl=5.0) as s, await s.attach(HOST, 902) as tracer:
        await tracer.poke(2, 0x8000)
        await tracer.poke(7, (1 << 4) | (0b1101 << 24))  # L2, write, 4 bytes
        await client.context_switch(HOST, 1, 902)
        traps = tracer.traps(timeout=20)
        first = asyncio.ensure_future(anext(traps))
        # A trap stream announces nothing: write until it has seen one (bounded by its 20 s).
        while not first.done():
            assert (await client.access(HOST, 1, 0x8001, 1, "w")).hit
            await asyncio.wait({first}, timeout=0.2)
        trap = first.result()
        await traps.aclose()
        assert (trap.host, trap.task, trap.ptrace_index, trap.addr, trap.cpu) == (
            HOST,
            902,
            2,
            0x8000,
            1,
        )
        assert trap.dr6 & 0b100  # B2: DR2 fired
        await client.context_switch(HOST, 1, None)


async def test_a_tracer_outside_a_session_persists_until_flushed(client: Any) -> None:
    tracer = client.ptrace(HOST, 904)
    await tracer.poke(1, 0x7100)
    assert [r.ptrace_index for r in await client.list(HOST)] == [1]
    assert await tracer.detach() == 0  # the kernel keeps a detached task's breakpoints
    assert [r.ptrace_index for r in await client.list(HOST)] == [1]
    await tracer.poke(6, 0)  # attached again
    assert await tracer.flush() == 1
    assert await client.list(HOST) == []


async def test_unreachable_arbiter_is_unavailable(surface: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"
    async with make_client(surface, closed, retry=RetryPolicy(attempts=2, initial=0.01)) as c:
        with pytest.raises(Unavailable):
            await c.list()


async def test_results_of_changes_say_where_they_are_applied(client: Any) -> None:
    """Reserve, modify and release answer with applied/pending CPUs; on a live fleet
    nothing is pending. (Which CPUs are applied is the arbiter's to fill.)"""
    h = await client.reserve(HOST, system=True, addr=0xA000, len=8, type="w", owner="ann")
    assert h.pending_cpus == () and set(h.applied_cpus) <= {0, 1}
    changed = await h.modify(enabled=False, expect_owner="ann")
    assert (changed.id, changed.enabled, changed.pending_cpus) == (h.id, False, ())
    assert h.change is changed
    gone = await h.release(expect_owner="ann")
    assert gone is not None and gone.id == h.id and not gone.pending


async def test_a_tracer_applied_reservation_is_accounted_and_listed_as_such(
    client: Any,
) -> None:
    """A debugger that arms the register itself still takes the slot, through the SDK."""
    async with await client.session(ttl=30, owner="gdb") as s:
        h = await s.reserve(HOST, task=4243, addr=0xB000, len=4, type="w", tracer_applied=True)
        mine = [r for r in await client.list(HOST) if r.id == h.id]
        assert len(mine) == 1 and mine[0].tracer_applied and mine[0].task == 4243
        plain = await s.reserve(HOST, task=4243, addr=0xB008, len=4, type="w")
        listed = {r.id: r.tracer_applied for r in await client.list(HOST)}
        assert listed[plain.id] is False and listed[h.id] is True


async def test_list_and_inventory_follow_pages(client: Any) -> None:
    """Asked for pages smaller than the answer, every item still comes back once; an
    arbiter that ignores page_size answers in one page, with the same result."""
    held = {(await client.reserve(HOST, task=700 + i, addr=0xB000, type="x")).id for i in range(5)}
    assert {r.id for r in await client.list(HOST, page_size=2)} == held
    assert [(c.host, c.cpu) for c in await client.inventory(page_size=1)] == [(HOST, 0), (HOST, 1)]


async def test_tracer_detach_keeps_and_flush_releases(client: Any) -> None:
    """PTRACE_DETACH keeps the task's breakpoints; flush_ptrace_hw_breakpoint() (what
    exit and exec do, here on demand) releases them."""
    tracer = client.ptrace(HOST, 901)
    await tracer.poke(0, 0x7100)
    await tracer.poke(7, 0x1)
    assert await tracer.detach() == 0
    assert [r.task for r in await client.list(HOST)] == [901]
    with pytest.raises(core.NotAttached):
        await tracer.peek(0)
    await tracer.poke(6, 0)  # a poke outside a session attaches again, registers as they were
    assert (await tracer.peek(0), await tracer.peek(7)) == (0x7100, 0x1)
    assert await tracer.flush() == 1
    assert await client.list(HOST) == []
    with pytest.raises(core.NotAttached):  # nothing left to flush
        await tracer.flush()


async def test_a_sessions_end_releases_what_a_detached_task_kept(client: Any) -> None:
    async with await client.session(ttl=5.0) as s:
        tracer = await s.attach(HOST, 902)
        await tracer.poke(0, 0x7200)
        assert await tracer.detach() == 0
        assert [r.task for r in await client.list(HOST)] == [902]
        tracer = await s.attach(HOST, 902)  # attached again: the registers as they were
        assert await tracer.peek(0) == 0x7200
        assert await tracer.flush() == 1
        assert await client.list(HOST) == []
        tracer = await s.attach(HOST, 903)
        await tracer.poke(1, 0x7300)
        await tracer.detach()
    assert await client.list(HOST) == []  # the session's end released what it left behind
