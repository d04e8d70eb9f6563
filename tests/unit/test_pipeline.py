"""The change pipeline, event by event: what each caller is told and what a reader sees.

Each test ends with ``validate_state()`` (the ``h`` fixture checks it on teardown).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pytest

from hwbp.errors import (
    AgentRefused,
    IdempotencyKeyReused,
    KernelNoSpace,
    LedgerWriteFailed,
    NoFreeSlot,
    PipelineFault,
)
from hwbp.model import Scope, Target
from hwbp.pipeline import (
    Change,
    Committed,
    Fault,
    Link,
    ResyncRefused,
    RolledBack,
    SendReload,
)
from tests.unit.pipeline_harness import TIMEOUT, Harness

SYSTEM = Target(Scope.SYSTEM)


def cpu(c: int) -> Target:
    return Target(Scope.CPU, cpu=c)


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness(ncpus=3)
    for c in range(3):
        harness.connect(c)
    harness.settle()  # the first resync
    yield harness
    harness.pipe.validate_state()
    assert not harness.twice, f"waiters answered twice: {harness.twice}"


def test_a_change_commits_only_when_every_agent_acked_and_it_is_durable(h: Harness) -> None:
    w = h.submit(h.reserve(SYSTEM))
    assert sorted(h.in_flight) == [0, 1, 2]
    gen = h.in_flight[0].generation
    assert [a.reservation_id for a in h.in_flight[0].assignments] == ["r1"]
    h.answer(0)
    h.answer(1)
    assert w not in h.answers and h.persist is None and h.committed() == {}
    h.answer(2)
    assert h.persist is not None and h.persist.touched == {"r1"} and w not in h.answers
    assert h.committed() == {}  # acked but not durable: still invisible
    h.persisted()
    res = h.result(w)
    outcome = h.answers[w].outcome
    assert (outcome.generation, outcome.applied, outcome.pending) == (gen, (0, 1, 2), ())
    assert list(h.committed()) == [res.id]


def test_a_reader_never_sees_a_change_that_is_rolled_back(h: Harness) -> None:
    keep = h.submit(h.reserve(cpu(0)))
    h.settle()
    kept = h.result(keep)
    w = h.submit(h.reserve(SYSTEM))
    gone = h.submit(h.release(kept.id))  # queued behind: admitted after the system one
    assert list(h.committed()) == [kept.id]  # the system reserve is in flight, not shown
    h.answer(1, ok=False, reason="kernel said no", errno=28)
    assert any(isinstance(i, RolledBack) for i in h.log)
    assert list(h.committed()) == [kept.id] and w not in h.answers
    # Every CPU that was sent the refused generation gets the restored state, and the
    # caller is told once they hold it.
    h.settle()
    assert isinstance(h.error(w), KernelNoSpace)
    assert "cpu 1" in str(h.error(w)) and "rolled back" in str(h.error(w))
    assert h.result(gone).id == kept.id and h.committed() == {}


def test_a_retry_with_the_same_key_joins_the_change_in_flight(h: Harness) -> None:
    change = h.reserve(SYSTEM, key="bob\0k1")
    first = h.submit(change)
    h.cancel(first)  # the caller's deadline passed: its change still runs
    retry = h.submit(h.reserve(SYSTEM, key="bob\0k1"))
    h.settle()
    assert first not in h.answers  # cancelled: nobody to tell
    assert len(h.ledger) == 1 and h.result(retry).id == "r1"
    again = h.submit(h.reserve(SYSTEM, key="bob\0k1"))  # after commit: the same answer
    assert h.result(again).id == "r1" and len(h.ledger) == 1
    other = h.submit(h.reserve(cpu(1), key="bob\0k1"))  # same key, another request
    err = h.error(other)
    assert isinstance(err, IdempotencyKeyReused) and "'k1'" in str(err)
    assert len(h.ledger) == 1


def test_a_failed_change_frees_its_key(h: Harness) -> None:
    first = h.submit(h.reserve(SYSTEM, key="k"))
    h.answer(0, ok=False, reason="no")
    joined = h.submit(h.reserve(SYSTEM, key="k"))  # while the rollback goes out: joins it
    h.settle()
    assert isinstance(h.error(first), AgentRefused) and isinstance(h.error(joined), AgentRefused)
    retry = h.submit(h.reserve(SYSTEM, key="k"))
    h.settle()
    assert h.result(retry).id in h.ledger


def test_a_hung_agent_is_fenced_once_and_never_waited_for_again(h: Harness) -> None:
    w = h.submit(h.reserve(SYSTEM))
    h.answer(0)
    h.answer(2)  # cpu 1 never answers
    h.tick(TIMEOUT - 0.1)
    assert w not in h.answers
    h.tick(0.2)
    assert [f.cpu for f in h.fenced] == [1] and "within 2s" in h.fenced[0].reason
    assert h.pipe.cpus[1].state is Link.FENCED
    h.persisted()
    outcome = h.answers[w].outcome  # type: ignore[union-attr]
    assert (outcome.applied, outcome.pending) == ((0, 2), (1,))
    # A later change on every CPU waits only for the healthy ones: no second timeout.
    later = h.submit(h.reserve(SYSTEM, addr=0x2000))
    assert sorted(h.in_flight) == [0, 2]
    h.settle()
    assert h.answers[later].outcome.pending == (1,)  # type: ignore[union-attr]
    # It comes back: a full resync, then it is waited for again.
    h.connect(1)
    assert h.in_flight[1].generation == h.pipe.generation
    assert {a.reservation_id for a in h.in_flight[1].assignments} == {"r1", "r2"}
    h.settle()
    back = h.pipe.cpus[1]  # read afresh: the fence above narrowed the old expression
    assert back.state is Link.LIVE and len(h.fenced) == 1


def test_a_merged_batch_refused_is_retried_one_change_at_a_time(h: Harness) -> None:
    blocker = h.submit(h.reserve(cpu(0)))
    a = h.submit(h.reserve(cpu(2), addr=0x2000))
    b = h.submit(h.reserve(cpu(2), addr=0x3000))  # a and b go out merged
    h.settle()
    assert {h.result(x).id for x in (blocker, a, b)} == {"r1", "r2", "r3"}
    c = h.submit(h.reserve(cpu(0), addr=0x4000))
    d = h.submit(h.reserve(cpu(1), addr=0x5000))
    e = h.submit(h.reserve(cpu(1), addr=0x6000))  # d and e merged, behind c
    h.answer(0)
    h.persisted()
    assert [i.generation for i in h.in_flight.values()] == [h.pipe.generation]
    h.answer(1, ok=False, reason="refused")  # the merged d+e: retried alone
    h.answer(1)  # the rollback; d alone goes out next
    assert [a.bp.addr for a in h.in_flight[1].assignments] == [0x5000]
    h.answer(1, ok=False, reason="refused")  # d alone: fails
    h.settle()
    assert isinstance(h.error(d), AgentRefused)
    assert h.result(c).id in h.ledger and h.result(e).id in h.ledger


def test_whatever_apply_or_undo_raises_every_caller_is_answered(h: Harness) -> None:
    def boom() -> tuple[object, Iterable[int]]:
        raise RuntimeError("bug")

    def bad_undo() -> None:
        raise RuntimeError("undo bug")

    ok = h.reserve(cpu(0))
    w1 = h.submit(Change("broken", boom))
    w2 = h.submit(Change(ok.request_id, ok.apply, bad_undo))
    err = h.error(w1)
    assert isinstance(err, PipelineFault) and "broken" in str(err) and "RuntimeError" in str(err)
    h.answer(0, ok=False, reason="no")
    assert any(isinstance(i, Fault) and "undo bug" in str(i.error) for i in h.log)
    h.settle()
    assert isinstance(h.error(w2), AgentRefused)
    assert h.committed() == {}


def test_a_failed_write_rolls_back_everywhere(h: Harness) -> None:
    w = h.submit(h.reserve(SYSTEM))
    for c in range(3):
        h.answer(c)
    h.persisted(ok=False)
    assert sorted(h.in_flight) == [0, 1, 2]  # the restored state goes out
    assert all(not i.assignments for i in h.in_flight.values())
    h.settle()
    assert isinstance(h.error(w), LedgerWriteFailed)
    assert len(h.ledger) == 0


def test_the_next_change_does_not_wait_for_a_rollback_its_caller_does(h: Harness) -> None:
    w = h.submit(h.reserve(SYSTEM))
    h.answer(0, ok=False, reason="no")
    nxt = h.submit(h.reserve(cpu(0)))  # goes straight out, behind the rollback on cpu 0
    h.answer(0)  # the rollback
    h.answer(0)  # the new change
    h.persisted()
    assert h.result(nxt).id in h.ledger
    assert w not in h.answers  # cpus 1 and 2 do not hold the restored state yet
    h.tick(TIMEOUT + 0.1)  # they never answered the refused generation or its rollback
    assert sorted(f.cpu for f in h.fenced) == [1, 2]
    assert isinstance(h.error(w), AgentRefused)


def test_a_refused_restored_state_still_answers_the_rolled_back_caller(h: Harness) -> None:
    """Found by the state machine: an agent that refuses the rollback's restored state
    too must not leave the refused caller waiting for an acknowledgement that never
    comes (the refusal is reported instead)."""
    w = h.submit(h.reserve(cpu(0)))
    h.answer(0, ok=False, reason="no")  # the change: rolled back, restored state sent
    h.answer(0, ok=False, reason="still no")  # the restored state refused as well
    assert isinstance(h.error(w), AgentRefused)
    assert any(isinstance(i, ResyncRefused) and i.cpu == 0 for i in h.log)
    assert h.pipe.idle


def test_a_disconnect_mid_broadcast_commits_as_pending(h: Harness) -> None:
    w = h.submit(h.reserve(SYSTEM))
    h.answer(0)
    h.answer(1)
    h.gone(2)
    h.persisted()
    assert h.answers[w].outcome.pending == (2,)  # type: ignore[union-attr]
    assert h.pipe.cpus[2].state is Link.OFFLINE


def test_a_refused_resync_is_reported_not_rolled_back(h: Harness) -> None:
    w = h.submit(h.reserve(cpu(1)))
    h.settle()
    h.gone(1)
    h.connect(1)
    h.answer(1, ok=False, reason="kernel said EBUSY", errno=16)
    refused = [i for i in h.log if isinstance(i, ResyncRefused)]
    assert refused and refused[0].cpu == 1 and refused[0].errno == 16
    assert h.result(w).id in h.committed() and h.pipe.cpus[1].state is Link.LIVE
    assert "refused generation" in h.pipe.cpus[1].reason


def test_an_agent_connecting_mid_batch_is_waited_for(h: Harness) -> None:
    h.gone(1)
    w = h.submit(h.reserve(SYSTEM))
    assert sorted(h.in_flight) == [0, 2]
    h.connect(1)
    assert h.in_flight[1].generation == h.pipe.generation
    h.answer(0)
    h.answer(2)
    assert h.persist is None  # cpu 1 got the batch in its resync: it is waited for
    h.answer(1)
    h.persisted()
    assert h.answers[w].outcome.applied == (0, 1, 2)  # type: ignore[union-attr]


def test_a_refused_admission_fails_alone_and_sends_nothing(h: Harness) -> None:
    for i in range(4):
        h.submit(h.reserve(cpu(0), addr=0x1000 + 8 * i))
    h.settle()
    sent = len([i for i in h.log if isinstance(i, SendReload)])
    w = h.submit(h.reserve(cpu(0), addr=0x9000))
    assert isinstance(h.error(w), NoFreeSlot)
    assert len([i for i in h.log if isinstance(i, SendReload)]) == sent
    assert sum(isinstance(i, Committed) for i in h.log) >= 1


# --- deltas ---------------------------------------------------------------------------


def converged(h: Harness) -> None:
    """Every agent holds exactly what the ledger holds for its CPU."""
    for c in range(h.ncpus):
        assert h.agents[c].held == h.holds(c), f"cpu {c} holds other than the ledger"


def test_a_change_sends_only_what_it_touched_whatever_the_host_holds(h: Harness) -> None:
    for i in range(50):
        h.submit(h.reserve(Target(Scope.TASK, task=100 + i)))
    h.settle()
    base = h.pipe.generation
    w = h.submit(h.reserve(Target(Scope.TASK, task=7)))
    for c in range(3):
        sent = h.in_flight[c]
        assert (sent.base, sent.removed) == (base, ())
        assert [a.reservation_id for a in sent.assignments] == ["r51"]
    h.settle()
    rid = h.result(w).id
    h.submit(h.release(rid))
    assert all((s.assignments, s.removed) == ((), (rid,)) for s in h.in_flight.values())
    h.settle()
    converged(h)
    assert len(h.agents[0].held) == 50


def test_a_cpu_that_acked_a_refused_change_is_sent_its_undoing(h: Harness) -> None:
    w = h.submit(h.reserve(SYSTEM))
    gen = h.pipe.generation
    h.answer(0)  # cpu 0 holds r1 now
    h.answer(1, ok=False, reason="no")
    assert (h.in_flight[0].base, h.in_flight[0].removed) == (gen, ("r1",))
    h.settle()
    assert isinstance(h.error(w), AgentRefused)
    converged(h)
    assert not any(a.held for a in h.agents.values())


def test_changes_behind_a_reload_in_flight_go_out_when_it_is_answered(h: Harness) -> None:
    h.submit(h.reserve(SYSTEM))
    h.answer(0, ok=False, reason="no")  # the restored state is now in flight on cpu 0
    nxt = h.submit(h.reserve(cpu(0), addr=0x2000))
    h.answer(0)  # the restored state acked: the new change follows as a delta on it
    sent = h.in_flight[0]
    assert sent.base == h.pipe.cpus[0].acked
    assert [a.bp.addr for a in sent.assignments] == [0x2000]
    h.settle()
    assert h.result(nxt).id in h.committed()
    converged(h)


def test_an_agent_that_lost_its_base_is_sent_its_full_state(h: Harness) -> None:
    kept = h.submit(h.reserve(cpu(1)))
    h.settle()
    h.agents[1].generation = -1  # it no longer holds what it acknowledged
    w = h.submit(h.reserve(SYSTEM, addr=0x2000))
    h.answer(1)  # the delta is refused for its base; the full state goes out instead
    sent = h.in_flight[1]
    assert sent.base is None and sent.generation == h.pipe.generation
    assert {a.reservation_id for a in sent.assignments} == {h.result(kept).id, "r2"}
    h.settle()
    assert h.result(w).id == "r2" and not any(isinstance(i, RolledBack) for i in h.log)
    converged(h)


def test_an_agent_without_deltas_is_sent_its_full_state_every_time(h: Harness) -> None:
    h.gone(2)
    h.connect(2, deltas=False)
    h.settle()
    h.submit(h.reserve(cpu(2)))
    h.submit(h.reserve(SYSTEM, addr=0x2000))
    h.settle()
    reloads = [i for i in h.log if isinstance(i, SendReload) and i.cpu == 2]
    assert reloads and all(i.base is None for i in reloads)
    assert {a.reservation_id for a in reloads[-1].assignments} == {"r1", "r2"}
    converged(h)


def test_a_restarted_agent_is_resynced_in_full_then_sent_deltas(h: Harness) -> None:
    h.submit(h.reserve(Target(Scope.TASK, task=5)))
    h.settle()
    h.gone(1)
    h.submit(h.reserve(Target(Scope.TASK, task=6)))  # pending on cpu 1
    h.settle()
    h.connect(1, restarted=True)
    sent = h.in_flight[1]
    assert sent.base is None and {a.reservation_id for a in sent.assignments} == {"r1", "r2"}
    h.settle()
    h.submit(h.reserve(Target(Scope.TASK, task=7)))
    sent = h.in_flight[1]
    assert sent.base == h.pipe.cpus[1].acked and [a.reservation_id for a in sent.assignments] == [
        "r3"
    ]
    h.settle()
    converged(h)
