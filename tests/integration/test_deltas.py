"""Delta reloads between real processes: whatever an agent missed, it converges exactly.

Each change reaches an agent as a delta on the generation it acknowledged; a restarted
agent gets its full state, then deltas again. The check is the CPU's own registers, read
back through context switches into every task the host knows, against what the test
itself reserved (not only against the arbiter's own idea of them).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest

from hwbp.v1 import arbiter_pb2 as a
from hwbp.v1 import simulation_pb2 as s
from hwbp.v1 import types_pb2 as t
from tests.integration import procs
from tests.integration.stubs import Api, wait_until

HOST = "hdelta"
TASKS = range(700, 708)


@pytest.fixture(scope="module")
def api(channel: grpc.Channel) -> Api:
    return Api(channel)


@pytest.fixture
def agents(arbiter: str) -> Iterator[list[procs.Proc]]:
    running = [procs.start_agent(arbiter, HOST, c, "--cpus", "2") for c in range(2)]
    try:
        yield running
    finally:
        for p in running:
            p.stop()


def _held(api: Api, cpu: int, task: int | None) -> set[tuple[str, int]]:
    """(reservation, address) installed on ``cpu`` while ``task`` runs there."""
    req = s.ContextSwitchRequest(host=HOST, cpu=cpu)
    if task is not None:
        req.task = task
    img = api.sim.ContextSwitch(req, timeout=10).image
    return {(img.slot_reservation[i], img.dr[i]) for i in range(4) if img.slot_reservation[i]}


def _modify(api: Api, rid: str, addr: int) -> t.Reservation:
    req = a.ModifyRequest(request_id=uuid.uuid4().hex, reservation_id=rid, addr=addr)
    return api.arb.Modify(req, timeout=10).reservation


def test_an_agent_restarted_between_deltas_holds_exactly_the_ledger(
    api: Api, arbiter: str, agents: list[procs.Proc]
) -> None:
    want: dict[str, tuple[int | None, int | None, int]] = {}  # id -> (cpu, task, addr)

    def reserve(scope: str, addr: int, cpu: int | None = None, task: int | None = None) -> str:
        res = api.reserve(HOST, scope=scope, addr=addr, cpu=cpu, task=task)
        want[res.id] = (cpu, task, addr)
        return res.id

    def release(rid: str) -> None:
        api.release(rid)
        del want[rid]

    def move(rid: str, addr: int) -> int:
        gen = _modify(api, rid, addr).generation
        cpu, task, _ = want[rid]
        want[rid] = (cpu, task, addr)
        return gen

    tasks = [reserve("task", 0x40000 + 0x100 * i, task=task) for i, task in enumerate(TASKS)]
    reserve("cpu", 0x41000, cpu=1)
    reserve("task+cpu", 0x42000, cpu=1, task=TASKS[0])
    release(tasks[0])  # every one of these reached both agents as a delta

    agents[1].kill()
    wait_until(lambda: not api.inventory(HOST)[1].online, what="cpu 1 offline")
    # Changes it misses: pending there, applied when its agent comes back.
    release(tasks[1])
    move(tasks[2], 0x43000)
    reserve("system", 0x44000)
    missed = reserve("task", 0x45000, task=TASKS[1])

    agents[1] = procs.start_agent(arbiter, HOST, 1, "--cpus", "2")  # holds nothing
    gen = api.arb.List(a.ListRequest(host=HOST), timeout=10).reservations[-1].generation
    wait_until(
        lambda: api.inventory(HOST)[1].acked_generation >= gen and api.inventory(HOST)[1].online,
        what="cpu 1 resynced",
    )
    # And deltas again on top of the full state it was resynced to.
    release(missed)
    move(tasks[3], 0x46000)
    reserve("task+cpu", 0x47000, cpu=1, task=TASKS[4])
    release(tasks[5])

    for cpu in (0, 1):
        for task in (None, *TASKS):
            expected = {
                (rid, addr)
                for rid, (where, owner, addr) in want.items()
                if where in (None, cpu) and owner in (None, task)
            }
            assert _held(api, cpu, task) == expected, f"cpu {cpu} task {task}"
            inv = api.inventory(HOST)[cpu]
            assert not inv.mismatch and inv.acked_generation == inv.generation
        api.sim.ContextSwitch(s.ContextSwitchRequest(host=HOST, cpu=cpu), timeout=10)
    for rid in list(want):
        release(rid)
