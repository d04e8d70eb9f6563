"""A host's CPU count changes: the ledger, the pipeline and the host shell.

The property: whatever the reservations, resizing to N succeeds exactly when none is
pinned to a CPU at or above N, and then the ledger is the one a fresh N-CPU ledger
admitting the same reservations would be (same use per CPU, invariants intact); a
refused resize changes nothing and names every reservation in the way.
"""

from __future__ import annotations

import asyncio
import contextlib

import hypothesis.strategies as st
import pytest
from hypothesis import given

from hwbp.errors import HostShapeConflict, HostShrinkBlocked, NoFreeSlot
from hwbp.keys import KeyTable
from hwbp.ledger import HostLedger
from hwbp.model import BpType, Breakpoint, Reservation, Scope, Target
from hwbp.pipeline import AgentConnected, Change, HostPipeline, Submitted
from hwbp.server.fleet import Fleet
from hwbp.server.links import AgentChannel

HOST = "h"
MAX_CPUS = 6


def target_of(scope: Scope, cpu: int, task: int) -> Target:
    return Target(
        scope,
        cpu=cpu if scope in (Scope.CPU, Scope.TASK_CPU) else None,
        task=task if scope in (Scope.TASK, Scope.TASK_CPU, Scope.PROCESS) else None,
        # a process: its main thread and one more, shared with the next task number's
        threads=(task, task + 1) if scope is Scope.PROCESS else (),
    )


requests = st.lists(
    st.tuples(
        st.sampled_from(list(Scope)),
        st.integers(0, MAX_CPUS - 1),
        st.integers(1, 3),
    ),
    max_size=24,
)


def admitted(ncpus: int, wanted: list[tuple[Scope, int, int]]) -> HostLedger:
    ledger = HostLedger(HOST, ncpus)
    for n, (scope, cpu, task) in enumerate(wanted):
        if cpu >= ncpus:
            continue
        res = Reservation(
            f"r{n}",
            HOST,
            target_of(scope, cpu, task),
            Breakpoint(0x1000 + 8 * n, 8, BpType.WRITE),
            "o",
        )
        with contextlib.suppress(NoFreeSlot):
            ledger.reserve(res)
    return ledger


@given(st.integers(1, MAX_CPUS), st.integers(1, MAX_CPUS), requests)
def test_resize_is_a_fresh_ledger_or_a_refusal_naming_every_stranded_one(
    before: int, after: int, wanted: list[tuple[Scope, int, int]]
) -> None:
    ledger = admitted(before, wanted)
    held = list(ledger)
    stranded = [r.id for r in held if r.target.cpu is not None and r.target.cpu >= after]
    if stranded:
        with pytest.raises(HostShrinkBlocked) as refused:
            ledger.resize(after)
        for rid in stranded:
            assert f"{rid} (o, " in refused.value.message
        assert refused.value.metadata["reservations"] == ",".join(stranded)
        assert ledger.ncpus == before and list(ledger) == held
        ledger.validate()
        return
    ledger.resize(after)
    ledger.validate()
    fresh = HostLedger(HOST, after)
    for res in held:
        fresh.reserve(res)
    assert ledger.ncpus == after and list(ledger) == held
    assert [ledger.used(c) for c in range(after)] == [fresh.used(c) for c in range(after)]
    assert [ledger.holders(c) for c in range(after)] == [fresh.holders(c) for c in range(after)]


def test_a_grown_host_admits_on_its_new_cpus() -> None:
    ledger = HostLedger(HOST, 2)
    system = Reservation("r1", HOST, Target(Scope.SYSTEM), Breakpoint(0x1000, 8, BpType.WRITE), "o")
    ledger.reserve(system)
    ledger.resize(4)
    assert ledger.holders(3) == [system]
    ledger.reserve(
        Reservation("r2", HOST, Target(Scope.CPU, cpu=3), Breakpoint(0x2000, 8, BpType.WRITE), "o")
    )
    assert ledger.used(3) == 2


def test_the_pipeline_refuses_to_drop_a_cpu_whose_agent_is_waited_for() -> None:
    pipeline = HostPipeline(HostLedger(HOST, 3), KeyTable(), ack_timeout=1.0)
    pipeline.handle(AgentConnected(2, link=7, now=0.0))
    with pytest.raises(HostShrinkBlocked, match="cpu 2 still has a live agent"):
        pipeline.resize(2)
    assert len(pipeline.cpus) == 3 and pipeline.ledger.ncpus == 3
    pipeline.resize(5)  # growing never strands anything
    assert len(pipeline.cpus) == 5 and pipeline.ledger.ncpus == 5


def test_a_refused_hello_is_kept_on_its_cpu_until_an_agent_connects() -> None:
    async def run() -> None:
        fleet = Fleet(ack_timeout=1.0)
        host = fleet.ensure_host(HOST, 4)
        host.ledger.reserve(
            Reservation(
                "r9", HOST, Target(Scope.CPU, cpu=3), Breakpoint(0x1000, 8, BpType.WRITE), "alice"
            )
        )
        with pytest.raises(HostShrinkBlocked):
            fleet.ensure_host(HOST, 2, cpu=0)
        _link, reason = host.link_state(0)
        assert "r9 (alice, cpu 3)" in reason and host.ncpus == 4
        host.connect(AgentChannel(HOST, 0, "sim"))
        assert host.link_state(0)[1] == ""

    asyncio.run(run())


def test_the_cpu_count_changes_only_between_changes() -> None:
    ledger = HostLedger(HOST, 2)
    pipeline = HostPipeline(ledger, KeyTable(), ack_timeout=1.0)
    pipeline.handle(AgentConnected(0, link=1, now=0.0))
    res = Reservation(
        "r1", HOST, Target(Scope.CPU, cpu=0), Breakpoint(0x1000, 8, BpType.WRITE), "o"
    )

    def apply() -> tuple[Reservation, tuple[int, ...]]:
        ledger.reserve(res)
        return res, (0,)

    pipeline.handle(Submitted(1, Change("q", apply), now=0.0))
    assert not pipeline.idle  # waiting for cpu 0's agent
    with pytest.raises(HostShapeConflict, match="in the middle of a change"):
        pipeline.resize(4)
    assert len(pipeline.cpus) == 2 and ledger.ncpus == 2
