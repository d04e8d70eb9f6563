"""The perf backend against the real kernel: real processes, real debug registers.

Skipped only where the kernel refuses perf_event_open breakpoints (``probe()``).
Every wait is bounded and every child is killed in ``finally``.
"""

from __future__ import annotations

import errno
import os
import platform
import select
import time
from collections.abc import Iterator

import pytest

from hwbp.agent.perf import PerfBackend, probe
from hwbp.errors import KernelNoSpace, KernelRefused
from hwbp.model import Assignment, BpType, Breakpoint
from tests.integration.targets import WAIT, Target, need_every_register

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(30)]

FIXED_ADDR = 0x5A5A00000000  # both processes of the isolation test map their long here

_reason = probe()
if _reason is not None:
    pytest.skip(_reason, allow_module_level=True)


@pytest.fixture
def cpu() -> int:
    """The CPU the task tests pin their targets to (the last one we may run on)."""
    return max(os.sched_getaffinity(0))


@pytest.fixture
def targets() -> Iterator[list[Target]]:
    started: list[Target] = []
    try:
        yield started
    finally:
        for t in started:
            t.kill()


@pytest.fixture
def backends() -> Iterator[list[PerfBackend]]:
    made: list[PerfBackend] = []
    try:
        yield made
    finally:
        for b in made:
            b.close()


def _write_bp(addr: int, **kw: bool) -> Breakpoint:
    return Breakpoint(addr=addr, length=8, type=BpType.WRITE, **kw)


def test_write_watchpoint_counts_every_store(
    cpu: int, targets: list[Target], backends: list[PerfBackend]
) -> None:
    n = 500
    t = Target(cpu)
    targets.append(t)
    b = PerfBackend(cpu)
    backends.append(b)
    image = b.apply([Assignment("w1", t.pid, _write_bp(t.addr))])
    assert image.slots == ("w1", None, None, None)
    assert image.dr[0] == t.addr and image.current_task is None
    assert image.dr7 & 0b10  # G0

    assert t.ask(f"w {n}") == "done"

    assert b.counts() == {"w1": n}
    hits = b.poll_hits()
    assert len(hits) == n
    for record, tid in hits:
        assert record.reservation_id == "w1" and record.task == t.pid and tid == t.pid
        assert record.access_addr == t.addr and record.index == 0
        assert record.dr6 == 0xFFFF0FF1 and record.ip != 0
    assert b.poll_hits() == []


def test_modify_in_place_keeps_event_and_count(
    cpu: int, targets: list[Target], backends: list[PerfBackend]
) -> None:
    t = Target(cpu)
    targets.append(t)
    b = PerfBackend(cpu)
    backends.append(b)
    b.apply([Assignment("m", t.pid, _write_bp(t.addr))])
    fds = b.fds()
    t.ask("w 10")
    b.apply([Assignment("m", t.pid, _write_bp(t.addr, enabled=False))])
    t.ask("w 10")
    image = b.apply([Assignment("m", t.pid, _write_bp(t.addr))])
    t.ask("w 5")
    assert b.fds() == fds  # modified through the ioctl, not reopened
    assert b.counts() == {"m": 15}
    assert image.slots[0] == "m"
    # Hits buffered before a reload are still reported, against the breakpoint they hit.
    hits = b.poll_hits()
    assert len(hits) == 15 and all(r.bp.enabled for r, _ in hits)
    t.ask("w 3")
    assert b.apply([]).slots == (None, None, None, None)
    assert b.counts() == {} and len(b.poll_hits()) == 3


def test_task_watchpoint_ignores_other_process_at_same_address(
    cpu: int, targets: list[Target], backends: list[PerfBackend]
) -> None:
    watched, other = Target(cpu, at=FIXED_ADDR), Target(cpu, at=FIXED_ADDR)
    targets += [watched, other]
    assert watched.addr == other.addr == FIXED_ADDR
    b = PerfBackend(cpu)
    backends.append(b)
    b.apply([Assignment("iso", watched.pid, _write_bp(FIXED_ADDR))])

    other.ask("w 300")
    watched.ask("w 40")
    other.ask("w 300")

    assert b.counts() == {"iso": 40}
    hits = b.poll_hits()
    assert len(hits) == 40
    assert {tid for _, tid in hits} == {watched.pid}


def test_exec_breakpoint_counts_calls(
    cpu: int, targets: list[Target], backends: list[PerfBackend]
) -> None:
    k = 200
    t = Target(cpu)
    targets.append(t)
    b = PerfBackend(cpu)
    backends.append(b)
    bp = Breakpoint(addr=t.getpid, length=1, type=BpType.EXEC)
    image = b.apply([Assignment("x1", t.pid, bp)])
    assert (image.dr7 >> 16) & 0xF == 0  # R/W 00, LEN 00

    assert t.ask(f"x {k}") == "done"

    assert b.counts() == {"x1": k}
    hits = b.poll_hits()
    assert len(hits) == k
    assert all(r.ip == t.getpid and tid == t.pid for r, tid in hits)


def test_registers_held_outside_give_enospc_and_keep_previous_set(
    targets: list[Target], backends: list[PerfBackend]
) -> None:
    need_every_register(0)
    t = Target(0)
    holder = Target(0)
    targets += [t, holder]
    b = PerfBackend(0)
    backends.append(b)
    first = Assignment("keep", None, _write_bp(t.addr))
    before = b.apply([first])
    fds = b.fds()
    held = int(holder.ask("h 0"))
    if platform.machine() == "x86_64":
        assert held == 3  # 4 registers, one is ours

    extra = Assignment("extra", None, _write_bp(t.addr + 8))
    with pytest.raises(KernelNoSpace) as info:
        b.apply([first, extra])
    assert info.value.kernel_errno == errno.ENOSPC
    assert info.value.details()["errno"] == "ENOSPC"
    assert "cpu 0" in str(info.value) and "extra" in str(info.value)

    # Also roll back an in-place modify made earlier in the same failed apply.
    moved = Assignment("keep", None, _write_bp(t.addr + 16))
    with pytest.raises(KernelNoSpace):
        b.apply([moved, extra])

    assert b.fds() == fds and b.image() == before
    t.ask("w 25")
    assert b.counts() == {"keep": 25}
    assert {r.reservation_id for r, _ in b.poll_hits()} == {"keep"}

    # A full CPU can still swap one breakpoint for another: the old slot is freed first;
    # and if the rest then fails, the old one comes back with its count.
    other = Assignment("other", None, _write_bp(t.addr + 24))
    with pytest.raises(KernelNoSpace):
        b.apply([extra, other])
    assert b.counts() == {"keep": 25} and b.image() == before
    t.ask("w 5")
    assert b.counts() == {"keep": 30}
    assert b.apply([extra]).slots == ("extra", None, None, None)
    assert b.counts() == {"extra": 0}
    b.apply([first])
    b.poll_hits()

    holder.quit()  # its registers come back; the same request now fits
    image = b.apply([first, extra])
    assert image.slots == ("keep", "extra", None, None)


def test_refusal_names_cpu_reservation_and_errno(backends: list[PerfBackend]) -> None:
    b = PerfBackend(0)
    backends.append(b)
    bad = Assignment("odd", None, Breakpoint(addr=0x1001, length=4, type=BpType.WRITE))
    with pytest.raises(KernelRefused) as info:
        b.apply([bad])
    assert info.value.kernel_errno == errno.EINVAL
    assert "odd" in str(info.value) and "cpu 0" in str(info.value)
    assert b.fds() == [] and b.counts() == {}


def test_exited_task_reported_once(
    cpu: int, targets: list[Target], backends: list[PerfBackend]
) -> None:
    t = Target(cpu)
    targets.append(t)
    b = PerfBackend(cpu)
    backends.append(b)
    b.watch_task(t.pid)
    assert b.exited_tasks() == []
    pidfds = b.fds()
    t.quit()

    ready, _, _ = select.select(pidfds, [], [], WAIT)
    assert ready
    deadline = time.monotonic() + WAIT
    exited: list[int] = []
    while not exited and time.monotonic() < deadline:
        exited = b.exited_tasks()
    assert exited == [t.pid]
    assert b.exited_tasks() == [] and b.fds() == []

    b.watch_task(t.pid)  # reaped already: reported at the next call
    assert b.exited_tasks() == [t.pid]


def test_one_store_hitting_two_breakpoints_is_one_exception(
    cpu: int, targets: list[Target], backends: list[PerfBackend]
) -> None:
    """hw_breakpoint_handler() handles every DR6 bit of one #DB in one go (one
    perf_bp_event per breakpoint that fired): the two samples one store leaves are one
    debug exception, reported under one exception id with both bits in DR6; separate
    stores are separate exceptions, even by the same instruction."""
    t = Target(cpu)
    targets.append(t)
    b = PerfBackend(cpu)
    backends.append(b)
    b.apply(
        [
            Assignment("wide", t.pid, _write_bp(t.addr)),
            Assignment("byte", t.pid, Breakpoint(addr=t.addr, length=1, type=BpType.WRITE)),
        ]
    )
    assert t.ask("s 0 1") == "done"
    hits = [h.record for h in b.poll_hits()]
    assert sorted(h.reservation_id for h in hits) == ["byte", "wide"]
    assert hits[0].exception == hits[1].exception != 0
    assert all(h.dr6 == 0xFFFF0FF3 for h in hits)

    assert t.ask("w 3") == "done"  # three stores, each hitting both
    hits = [h.record for h in b.poll_hits()]
    assert len(hits) == 6
    by_exception: dict[int, set[str]] = {}
    for h in hits:
        by_exception.setdefault(h.exception, set()).add(h.reservation_id)
    assert list(by_exception.values()) == [{"byte", "wide"}] * 3

    assert t.ask("s 4 4") == "done"  # bytes 4..7: only the 8-byte watchpoint
    (only,) = [h.record for h in b.poll_hits()]
    assert only.reservation_id == "wide" and only.exception not in by_exception
