"""The pipeline under every event order Hypothesis can find, with faults.

Agents connect (taking deltas or only full state; a restarted process holding nothing),
vanish, ACK, NACK, say nothing, or lose track of the base they hold; writes succeed or
fail; callers cancel and retry with the same idempotency key (or reuse one for another
request); applies and undos raise. After every step:

- ``validate_state()`` holds (the ledger's own invariants included);
- what a reader sees is exactly what committed: a reference model built only from
  ``Committed`` instructions matches the committed view, so a rolled-back change is
  never visible;
- committed state never exceeds a CPU's four slots;
- no idempotency key ever answered with two different reservations, and no waiter was
  answered twice;
- every agent that acknowledged the last reload it was sent holds, from applying the full
  states and deltas it was sent, exactly what the ledger holds for its CPU (and, when no
  change is in flight there, exactly the committed state).

At the end everything still out is answered (agents ACK, writes succeed), every waiter
that did not cancel must have had exactly one answer, and every agent holds the
committed state of its CPU.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hwbp.model import Reservation, Scope, Target
from hwbp.pipeline import Change, Committed, Resolve
from tests.unit.pipeline_harness import TIMEOUT, Harness

NCPUS = 3
KEYS = ("alice\0k1", "alice\0k2", "bob\0k1")
TARGETS = [Target(Scope.SYSTEM)] + [Target(Scope.CPU, cpu=c) for c in range(NCPUS)]
TARGETS += [Target(Scope.TASK, task=t) for t in (7, 8)]
ADDRS = (0x1000, 0x2000)


def used(live: Iterable[Reservation], cpu: int) -> int:
    here = [r for r in live if r.target.applies_to(cpu)]
    per_task = Counter(r.target.task for r in here if not r.target.cpu_bound)
    return sum(1 for r in here if r.target.cpu_bound) + max(per_task.values(), default=0)


class PipelineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.h = Harness(ncpus=NCPUS)
        self.reference: dict[str, Reservation] = {}
        self.made: dict[str, str] = {}  # request id -> reservation id its last apply made
        self.kinds: dict[str, tuple[str, str]] = {}  # request id -> ("reserve"|"release", id)
        self.waiting: set[int] = set()  # waiters owed an answer
        self.cancelled: set[int] = set()
        self.by_key: dict[str, set[str]] = {}
        self.key_of: dict[int, str] = {}
        self.seen = 0  # instructions of the log already read

    # --- rules -----------------------------------------------------------------------

    @rule(cpu=st.integers(0, NCPUS - 1), deltas=st.booleans(), restarted=st.booleans())
    def connect(self, cpu: int, deltas: bool, restarted: bool) -> None:
        self.h.connect(cpu, deltas=deltas, restarted=restarted)

    @precondition(lambda self: self.h.links)
    @rule(data=st.data())
    def lose_base(self, data: st.DataObject) -> None:
        """An agent that no longer holds the generation it acknowledged (a bug, a reset
        register file): the next delta is refused and it must get its full state."""
        cpu = data.draw(st.sampled_from(sorted(self.h.links)))
        self.h.agents[cpu].generation = -1

    @precondition(lambda self: self.h.links)
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        self.h.gone(data.draw(st.sampled_from(sorted(self.h.links))))

    @precondition(lambda self: self.h.in_flight)
    @rule(data=st.data(), ok=st.booleans(), kernel=st.booleans())
    def answer(self, data: st.DataObject, ok: bool, kernel: bool) -> None:
        cpu = data.draw(st.sampled_from(sorted(self.h.in_flight)))
        self.h.answer(cpu, ok, reason="" if ok else "refused", errno=28 if kernel else 0)

    @rule(dt=st.sampled_from([0.5, TIMEOUT, TIMEOUT + 0.5]))
    def tick(self, dt: float) -> None:
        self.h.tick(dt)

    @precondition(lambda self: self.h.persist is not None)
    @rule(ok=st.booleans())
    def persist(self, ok: bool) -> None:
        self.h.persisted(ok)

    @rule(
        where=st.sampled_from(TARGETS),
        addr=st.sampled_from(ADDRS),
        key=st.sampled_from(("", *KEYS)),
    )
    def reserve(self, where: Target, addr: int, key: str) -> None:
        change = self.h.reserve(where, key=key, addr=addr)
        inner = change.apply

        def apply() -> tuple[object, Iterable[int]]:
            res, cpus = inner()
            assert isinstance(res, Reservation)
            self.made[change.request_id] = res.id
            return res, cpus

        self._submit(Change(change.request_id, apply, None, key, change.fingerprint), key)
        self.kinds[change.request_id] = ("reserve", "")

    @precondition(lambda self: self.reference)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.reference)))
        change = self.h.release(rid)
        self.kinds[change.request_id] = ("release", rid)
        self._submit(change, "")

    @rule(where=st.sampled_from(["apply", "undo"]))
    def raising(self, where: str) -> None:
        def boom() -> None:
            raise RuntimeError(f"{where} bug")

        base = self.h.reserve(Target(Scope.CPU, cpu=0), addr=0x3000)
        if where == "apply":

            def apply() -> tuple[object, Iterable[int]]:
                boom()
                return None, ()

            self._submit(Change(base.request_id, apply), "")
        else:
            inner = base.apply

            def tracked() -> tuple[object, Iterable[int]]:
                res, cpus = inner()
                assert isinstance(res, Reservation)
                self.made[base.request_id] = res.id
                return res, cpus

            self._submit(Change(base.request_id, tracked, boom), "")
            self.kinds[base.request_id] = ("reserve", "")

    @precondition(lambda self: self.waiting)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        waiter = data.draw(st.sampled_from(sorted(self.waiting)))
        self.h.cancel(waiter)
        self.waiting.discard(waiter)
        self.cancelled.add(waiter)

    # --- checks ----------------------------------------------------------------------

    def _submit(self, change: Change, key: str) -> None:
        waiter = self.h.submit(change)
        self.waiting.add(waiter)
        if key:
            self.key_of[waiter] = key

    @invariant()
    def consistent(self) -> None:
        h = self.h
        for ins in h.log[self.seen :]:
            if isinstance(ins, Committed):
                for request_id in ins.request_ids.split(","):
                    kind, rid = self.kinds[request_id]
                    if kind == "reserve":
                        made = self.made[request_id]
                        self.reference[made] = h.ledger.get(made)
                    else:
                        del self.reference[rid]
        for ins in h.log[self.seen :]:
            waiter = getattr(ins, "waiter", None)
            if waiter is not None:
                self.waiting.discard(waiter)
                assert waiter not in self.cancelled, "a cancelled waiter was answered"
                key = self.key_of.get(waiter)
                if key and isinstance(ins, Resolve):
                    res = ins.outcome.result
                    assert isinstance(res, Reservation)
                    self.by_key.setdefault(key, set()).add(res.id)
                    assert len(self.by_key[key]) == 1, f"key {key!r} made two reservations"
        self.seen = len(h.log)
        h.pipe.validate_state()
        assert not h.twice, f"answered twice: {h.twice}"
        view = h.committed()
        assert set(view) == set(self.reference), "a reader sees something that did not commit"
        for c in range(NCPUS):
            assert used(view.values(), c) <= 4
        self.agents_converged(view)

    def agents_converged(self, view: dict[str, Reservation]) -> None:
        h = self.h
        for c in h.links:
            cpu = h.pipe.cpus[c]
            agent = h.agents[c]
            if cpu.in_flight is not None or cpu.acked != cpu.sent or agent.generation != cpu.acked:
                continue  # a reload is out, or the last one was refused or not applied
            assert agent.held == h.holds(c), f"cpu {c}: the agent holds other than the ledger"
            if c not in h.pipe.pending_cpus():
                committed = {r.id for r in view.values() if r.target.applies_to(c)}
                assert set(agent.held) == committed, f"cpu {c} differs from the committed state"

    def teardown(self) -> None:
        h = self.h
        for c in range(NCPUS):
            if c not in h.links:
                h.connect(c)
        h.settle()
        self.consistent()
        assert not self.waiting, f"waiters never answered: {sorted(self.waiting)}"
        assert h.pipe.idle
        # A CPU whose agent refused the last state it was sent keeps what it held (the
        # refusal was reported); reconnecting it resyncs it. Then every CPU converged.
        for c in sorted(h.refused):
            h.gone(c)
            h.connect(c)
        h.settle()
        view = h.committed()
        for c in range(NCPUS):
            cpu, agent = h.pipe.cpus[c], h.agents[c]
            assert cpu.acked == cpu.sent, f"cpu {c} did not acknowledge its last reload"
            held = {rid: (a.task, a.bp) for rid, a in agent.held.items()}
            want = {r.id: (r.target.task, r.bp) for r in view.values() if r.target.applies_to(c)}
            assert held == want, f"cpu {c} did not converge to the committed state"


TestPipeline = PipelineMachine.TestCase
TestPipeline.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
