"""The order of reserve and arm, disarm and release, against the real kernel.

``HwPoints`` with a ledger that records what it is asked (and refuses when told to) and
real perf events on this test's own thread, over a buffer nothing writes (a hit would
stop this very process). The arbiter side is covered end to end in test_gdbserver.py.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator

import pytest

from hwbp.errors import HwbpError
from hwbp.gdbserver import hwpoints
from hwbp.gdbserver.hwpoints import HwPoints, Refused
from hwbp.gdbserver.watchplan import Chunk, ZType

_reason = hwpoints.probe()
if _reason is not None:
    pytest.skip(_reason, allow_module_level=True)

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(30)]


class Ledger:
    """Records reserve/release; refuses the reserve numbered ``refuse_at`` (1-based)."""

    def __init__(self, refuse_at: int = 0) -> None:
        self.calls: list[tuple[str, object]] = []
        self.refuse_at = refuse_at
        self._n = 0

    def reserve(self, chunk: Chunk) -> str:
        self._n += 1
        if self._n == self.refuse_at:
            self.calls.append(("refused", chunk.addr))
            raise HwbpError(f"no free debug register (test refusal of {chunk.addr:#x})")
        self.calls.append(("reserve", chunk.addr))
        return f"r{self._n}"

    def release(self, reservation_id: str) -> None:
        self.calls.append(("release", reservation_id))


@pytest.fixture
def buffer() -> Iterator[int]:
    buf = (ctypes.c_char * 64)()
    yield ctypes.addressof(buf)
    del buf


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def points(ledger: Ledger) -> HwPoints:
    return HwPoints(ledger, lambda: [threading.get_native_id()], lambda message: None)


def test_a_refusal_midway_releases_what_was_reserved_and_closes_what_was_armed(
    buffer: int,
) -> None:
    ledger = Ledger(refuse_at=2)
    hw = points(ledger)
    before = open_fds()
    addr = buffer + 3  # 4 bytes at +3: three registers (1, 2, 1 bytes)
    with pytest.raises(Refused, match="test refusal"):
        hw.insert(ZType.WRITE, addr, 4)
    assert ledger.calls == [("reserve", addr), ("refused", addr + 1), ("release", "r1")]
    assert hw.points == [] and open_fds() == before
    assert "test refusal" in hw.last_refusal


def test_a_removed_point_is_kept_until_a_resume_without_it(buffer: int) -> None:
    ledger = Ledger()
    hw = points(ledger)
    before = open_fds()
    hw.insert(ZType.WRITE, buffer, 8)
    assert open_fds() == before + 1  # one event: one register, one thread
    assert hw.remove(ZType.WRITE, buffer, 8)
    hw.insert(ZType.WRITE, buffer, 8)  # gdb inserting it again before resuming
    assert ledger.calls == [("reserve", buffer)]  # no second reservation
    assert hw.remove(ZType.WRITE, buffer, 8)
    assert not hw.remove(ZType.WRITE, buffer, 8)  # already removed
    hw.settle()  # resumed without it
    assert ledger.calls == [("reserve", buffer), ("release", "r1")]
    assert hw.points == [] and open_fds() == before


def test_release_all_disarms_everything(buffer: int) -> None:
    ledger = Ledger()
    hw = points(ledger)
    before = open_fds()
    hw.insert(ZType.ACCESS, buffer, 8)
    hw.insert(ZType.HW_BREAK, buffer + 16, 1)
    assert [p.reason() for p in hw.points] == [b"awatch:%x;" % buffer, b"hwbreak:;"]
    assert hw.hits(threading.get_native_id()) == []  # nothing touched them
    hw.release_all()
    assert sorted(c for c in ledger.calls if c[0] == "release") == [
        ("release", "r1"),
        ("release", "r2"),
    ]
    assert open_fds() == before
