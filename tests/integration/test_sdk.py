"""The Python SDK (sync and asyncio) against a real arbiter and a real fleet of 2 CPUs."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from hwbp import errors as core
from hwbp.client import Client, EventKind, ReservationInfo, Unavailable
from hwbp.client.aio import AsyncClient
from hwbp.client.errors import NoFreeSlot
from hwbp.client.retry import RetryPolicy
from hwbp.errors import ReservationNotFound
from hwbp.model import BpType, Scope
from tests.integration import procs

pytestmark = pytest.mark.timeout(60)

HOST = "h2"


@pytest.fixture(scope="module")
def addr() -> Iterator[str]:
    arbiter, address = procs.start_arbiter()
    try:
        fleet = procs.start_fleet(address, HOST, 2)
        try:
            yield address
        finally:
            fleet.stop()
    finally:
        arbiter.stop()


@pytest.fixture
def client(addr: str) -> Iterator[Client]:
    with Client(addr) as c:
        yield c
        for r in c.list():
            c.release(r.id)


def test_session_reserve_modify_release(client: Client) -> None:
    with client.session(ttl=5.0, owner="sdk") as s:
        h = s.reserve(HOST, cpu=0, addr=0x1000, len=4, type="w")
        assert isinstance(h.info, ReservationInfo)
        assert (h.scope, h.cpu, h.task, h.type, h.owner) == (
            Scope.CPU,
            0,
            None,
            BpType.WRITE,
            "sdk",
        )
        assert h.session_id == s.id and h.id in {r.id for r in s.list()}

        info = h.modify(addr=0x2000, enabled=False)
        assert (info.addr, info.enabled, h.addr) == (0x2000, False, 0x2000)
        assert info.generation > 0

        h.release()
        assert client.list(HOST) == []
        with pytest.raises(ReservationNotFound):
            client.release(h.id)


def test_context_managers_release(client: Client) -> None:
    with client.session(ttl=5.0) as s:
        with s.reserve(HOST, task=42, addr=0x3000, type="x") as h:
            assert h.len == 8 and h.scope is Scope.TASK
            assert [r.id for r in client.list(HOST)] == [h.id]
        assert client.list(HOST) == []
        s.reserve(HOST, system=True, addr=0x4000, len=8, type="rw")
        assert len(client.list(HOST)) == 1
    # Closing the session released what it still held.
    assert client.list(HOST) == []


def test_keep_alive_holds_the_lease_past_its_ttl(client: Client) -> None:
    with client.session(ttl=1.5) as s:
        h = s.reserve(HOST, cpu=1, addr=0x5000, type="x")
        time.sleep(3.5)  # more than two TTLs: only the keep-alive thread keeps it
        assert not s.expired
        assert [r.id for r in client.list(HOST)] == [h.id]


def test_no_free_slot_is_typed_with_cpu_and_holders(client: Client) -> None:
    held = [
        client.reserve(HOST, cpu=1, addr=0x1000 + 8 * i, len=8, type="w", owner=f"u{i}")
        for i in range(4)
    ]
    with pytest.raises(NoFreeSlot) as refused:
        client.reserve(HOST, cpu=1, addr=0x9000, type="x")
    err = refused.value
    assert isinstance(err, core.NoFreeSlot)  # the core class catches it too
    assert (err.host, err.cpu) == (HOST, 1)
    assert len(err.holders) == 4
    for h, text in zip(held, err.holders, strict=True):
        assert h.id in text and h.owner in text
    assert "cpu 1" in str(err)
    # The refusal changed nothing; the other CPU still has room.
    assert len(client.list(HOST)) == 4
    client.reserve(HOST, cpu=0, addr=0x9000, type="x").release()


def test_watch_sees_a_simulated_hit(client: Client) -> None:
    h = client.reserve(HOST, task=77, addr=0x6000, len=4, type="w")
    image = client.context_switch(HOST, 0, 77)
    assert image.current_task == 77 and 0x6000 in image.dr

    stop = threading.Event()

    def touch() -> None:
        # The watch subscribes asynchronously: keep accessing until it has seen a hit.
        with Client(client.endpoint) as other:
            while not stop.is_set():
                assert other.access(HOST, 0, 0x6001, 1, "w").hit
                stop.wait(0.2)

    toucher = threading.Thread(target=touch, daemon=True)
    toucher.start()
    try:
        event = next(iter(client.watch(HOST, task=77, kinds=["hit"], timeout=20)))
    finally:
        stop.set()
        toucher.join(timeout=10)
    assert event.kind is EventKind.HIT and event.hit is not None
    assert (event.hit.reservation_id, event.hit.access_addr) == (h.id, 0x6001)
    client.context_switch(HOST, 0, None)
    assert client.exit_task(HOST, 77) == 1


def test_inventory_and_tracer(client: Client) -> None:
    with client.session(ttl=5.0) as s, s.attach(HOST, 900) as tracer:
        tracer.poke(0, 0x7000)
        assert tracer.peek(0) == 0x7000
        cpus = client.inventory(HOST)
        assert [c.cpu for c in cpus] == [0, 1]
        assert all(c.online and len(c.dr) == 4 and c.slots == 4 for c in cpus)
    assert client.list(HOST) == []


def test_unreachable_arbiter_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"
    with (
        Client(closed, retry=RetryPolicy(attempts=2, initial=0.01)) as c,
        pytest.raises(Unavailable),
    ):
        c.list()


async def test_async_client(addr: str) -> None:
    async with AsyncClient(addr) as c:
        s = await c.session(ttl=2.0, owner="aio")
        async with s:
            async with await s.reserve(HOST, cpu=0, addr=0x8000, len=2, type="rw") as h:
                assert (h.owner, h.len, h.session_id) == ("aio", 2, s.id)
                assert [r.id for r in await c.list(HOST)] == [h.id]
                await h.modify(len=4)
                assert h.len == 4
            held = [await s.reserve(HOST, cpu=0, addr=0x100 * (i + 1), type="x") for i in range(4)]
            with pytest.raises(NoFreeSlot) as refused:
                await c.reserve(HOST, cpu=0, addr=0x9000, type="x")
            assert refused.value.cpu == 0
            assert all(h.id in t for h, t in zip(held, refused.value.holders, strict=True))
            events = [e async for e in c.watch(HOST, task=123456, timeout=0.5)]
            assert events == []
        assert await c.list(HOST) == []


def test_results_of_changes_say_where_they_are_applied(client: Client) -> None:
    """Reserve, modify and release answer with applied/pending CPUs; on a live fleet
    nothing is pending. (Which CPUs are applied is the arbiter's to fill.)"""
    h = client.reserve(HOST, system=True, addr=0xA000, len=8, type="w", owner="ann")
    assert h.pending_cpus == () and set(h.applied_cpus) <= {0, 1}
    changed = h.modify(enabled=False, expect_owner="ann")
    assert (changed.id, changed.enabled, changed.pending_cpus) == (h.id, False, ())
    assert h.change is changed
    gone = h.release(expect_owner="ann")
    assert gone is not None and gone.id == h.id and not gone.pending


def test_list_and_inventory_follow_pages(client: Client) -> None:
    """Asked for pages smaller than the answer, every item still comes back once; an
    arbiter that ignores page_size answers in one page, with the same result."""
    held = {client.reserve(HOST, task=700 + i, addr=0xB000, type="x").id for i in range(5)}
    assert {r.id for r in client.list(HOST, page_size=2)} == held
    assert [(c.host, c.cpu) for c in client.inventory(page_size=1)] == [(HOST, 0), (HOST, 1)]


async def test_async_client_follows_pages_and_reports_changes(addr: str) -> None:
    async with AsyncClient(addr) as c:
        h = await c.reserve(HOST, task=801, addr=0xC000, type="x")
        assert h.pending_cpus == ()
        assert [r.id for r in await c.list(HOST, page_size=1)] == [h.id]
        assert len(await c.inventory(HOST, page_size=1)) == 2
        gone = await h.release()
        assert gone is not None and gone.pending_cpus == ()


def test_tracer_detach_keeps_and_flush_releases(client: Client) -> None:
    """PTRACE_DETACH keeps the task's breakpoints; flush_ptrace_hw_breakpoint() (what
    exit and exec do, here on demand) releases them."""
    tracer = client.ptrace(HOST, 901)
    tracer.poke(0, 0x7100)
    tracer.poke(7, 0x1)
    assert tracer.detach() == 0
    assert [r.task for r in client.list(HOST)] == [901]
    with pytest.raises(core.NotAttached):
        tracer.peek(0)
    tracer.poke(6, 0)  # a poke outside a session attaches again, registers as they were
    assert (tracer.peek(0), tracer.peek(7)) == (0x7100, 0x1)
    assert tracer.flush() == 1
    assert client.list(HOST) == []
    with pytest.raises(core.NotAttached):  # nothing left to flush
        tracer.flush()


async def test_async_tracer_detach_keeps_and_flush_releases(addr: str) -> None:
    async with AsyncClient(addr) as c:
        s = await c.session(ttl=5.0)
        async with s:
            tracer = await s.attach(HOST, 902)
            await tracer.poke(0, 0x7200)
            assert await tracer.detach() == 0
            assert [r.task for r in await c.list(HOST)] == [902]
            tracer = await s.attach(HOST, 902)
            assert await tracer.peek(0) == 0x7200
            assert await tracer.flush() == 1
            assert await c.list(HOST) == []
            tracer = await s.attach(HOST, 903)
            await tracer.poke(1, 0x7300)
            await tracer.detach()
        assert await c.list(HOST) == []  # the session's end releases what it left behind
