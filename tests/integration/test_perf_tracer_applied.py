"""The perf backend accounts a tracer-applied breakpoint without arming it a second time.

hwbp-gdbserver arms its watchpoints itself; an agent that also opened an event for them
would take a second kernel slot for one reservation. Skipped only where the kernel
refuses perf_event_open breakpoints.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from hwbp.agent.perf import PerfBackend, probe
from hwbp.model import Assignment, BpType, Breakpoint
from tests.integration.targets import Target

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(30)]

_reason = probe()
if _reason is not None:
    pytest.skip(_reason, allow_module_level=True)


@pytest.fixture
def target() -> Iterator[Target]:
    t = Target(max(os.sched_getaffinity(0)))
    try:
        yield t
    finally:
        t.kill()


@pytest.fixture
def backend() -> Iterator[PerfBackend]:
    b = PerfBackend(max(os.sched_getaffinity(0)))
    try:
        yield b
    finally:
        b.close()


def test_tracer_applied_is_accounted_not_armed(target: Target, backend: PerfBackend) -> None:
    traced = Breakpoint(target.addr, 8, BpType.WRITE, tracer_applied=True)
    image = backend.apply(
        [
            Assignment("armed", target.pid, Breakpoint(target.addr, 8, BpType.WRITE)),
            Assignment("traced", target.pid, traced),
        ]
    )
    assert len(backend.fds()) == 1  # the event of "armed"; none for "traced"
    assert set(image.slots) == {"armed", "traced", None}  # both in the image it acks
    assert "traced (pid" in backend.detail() and "armed by its tracer" in backend.detail()

    assert target.ask("w 7") == "done"
    assert backend.counts() == {"armed": 7}
    assert {record.reservation_id for record, _ in backend.poll_hits()} == {"armed"}

    image = backend.apply([Assignment("traced", target.pid, traced)])
    assert backend.fds() == []  # "armed" closed, and "traced" never had an event
    assert image.slots == ("traced", None, None, None) and backend.counts() == {}
    assert backend.apply([]).slots == (None, None, None, None)
