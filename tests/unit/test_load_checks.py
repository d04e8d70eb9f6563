"""The load generator's own judgement, fed made-up answers: it must flag what is wrong."""

from __future__ import annotations

from typing import Any, cast

import pytest

from hwbp.load.contend import Outcome, judge
from hwbp.load.invariants import Checker
from hwbp.load.rpc import Failure, Stubs, all_pages
from hwbp.load.stats import Stats, percentile
from hwbp.v1 import arbiter_pb2, simulation_pb2, types_pb2


def _checker() -> Checker:
    return Checker(cast(Stubs, None), "load-test")


def _full(holders: str = "r1 (a, cpu 0);r2 (b, cpu 0)", **meta: str) -> Failure:
    m = {"host": "h0", "cpu": "0", "used": "4", "slots": "4", "holders": holders, **meta}
    return Failure("RESOURCE_EXHAUSTED", "NO_FREE_SLOT", "no free slot", m)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([], 50) == 0.0


def test_stats_count_refusals_and_rolled_back_changes() -> None:
    s = Stats()
    s.record("reserve", 0.001, None)
    s.record("reserve", 0.002, "NO_FREE_SLOT")
    s.record("release", 0.003, "ACK_TIMEOUT")
    out = s.summary(1.0)
    assert out["ops"] == 3 and out["ack_timeouts"] == 1 and out["nacks"] == 0
    assert out["per_op"]["reserve"]["refused"] == {"NO_FREE_SLOT": 1}


def test_holder_ids_are_read_from_the_metadata() -> None:
    assert _full().holder_ids == ["r1", "r2"]


def test_a_justified_no_free_slot_is_not_a_violation() -> None:
    c = _checker()
    c.refused("reserve", _full())
    assert c.violations == 0


def test_refusals_that_do_not_hold_up_are_violations() -> None:
    c = _checker()
    c.refused("reserve", _full(holders=""))
    c.refused("reserve", _full(used="2"))
    c.refused("release", _full())  # a release never needs a slot
    c.refused("reserve", Failure("INTERNAL", "INTERNAL", "boom"))
    assert c.kinds["bad_refusal"] == 4


def test_a_hit_returned_twice_is_flagged() -> None:
    hit = types_pb2.Hit(seq=7, reservation_id="r1")
    c = _checker()
    c.hits(simulation_pb2.MemoryAccessResponse(hits=[hit, hit]))
    assert c.kinds["hit_seq"] == 1


def _race(gens: list[int], checker: Checker, holders: str) -> dict[str, Any]:
    outcomes = [Outcome(i, i, 0.01, g, f"r{10 + i}", None, f"race-{i}") for i, g in enumerate(gens)]
    for o in outcomes:
        checker.committed[o.request_id] = o.generation
    outcomes += [Outcome(9, 9, 0.01, refusal=_full(holders=holders))]
    return judge(outcomes, checker, host="h0", cpu=0, slots=4, base=5)


def test_contention_with_four_grants_in_order_passes() -> None:
    c = _checker()
    report = _race([6, 7, 7, 8], c, "r10 (x);r11 (x);r12 (x);r13 (x)")
    assert c.violations == 0, c.details
    assert report["grants"] == 4 and report["admission_matches_send_order"]


def test_contention_flags_a_fifth_grant_a_gap_and_wrong_holders() -> None:
    c = _checker()
    _race([6, 7, 9, 9, 10], c, "r10 (x);r11 (x)")
    assert c.kinds["contend"] == 3, c.details


class _PagedInventory:
    """Hands out fixed pages by token, recording each request (the pager under test)."""

    def __init__(self, pages: dict[str, tuple[list[int], str]]) -> None:
        self.pages = pages
        self.asked: list[tuple[str, str]] = []

    async def __call__(self, req: Any, timeout: float) -> Any:
        self.asked.append((req.host, req.page_token))
        cpus, token = self.pages[req.page_token]
        return arbiter_pb2.InventoryResponse(
            cpus=[types_pb2.CpuInventory(cpu=c) for c in cpus], next_page_token=token
        )


async def test_load_reads_every_page_of_the_inventory() -> None:
    paged = _PagedInventory({"": ([0, 1], "p2"), "p2": ([2], "p3"), "p3": ([], "")})
    inv = await all_pages(paged, arbiter_pb2.InventoryRequest(host="h"), "cpus")
    assert [c.cpu for c in inv.cpus] == [0, 1, 2]
    assert paged.asked == [("h", ""), ("h", "p2"), ("h", "p3")]
    unpaged = _PagedInventory({"": ([0, 1, 2], "")})
    assert len((await all_pages(unpaged, arbiter_pb2.InventoryRequest(), "cpus")).cpus) == 3
    looping = _PagedInventory({"": ([0], "p2"), "p2": ([1], "p2")})
    with pytest.raises(RuntimeError, match="twice"):
        await all_pages(looping, arbiter_pb2.InventoryRequest(), "cpus")
