"""A host pipeline with fake agents and a fake clock, for the pipeline's unit tests.

Nothing here imitates our server: the pipeline is the real one, and this harness only
plays the shell's part (feeding events, keeping the answers it was given) and the
agents' (each holds what it applied: a full state replaces it, a delta applies only on
the base it names, all or nothing, else it is refused as ``needs_full``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from hwbp.errors import HwbpError, LedgerWriteFailed
from hwbp.keys import KeyTable
from hwbp.ledger import HostLedger
from hwbp.model import Assignment, BpType, Breakpoint, Reservation, Target
from hwbp.pipeline import (
    AgentConnected,
    AgentGone,
    Answered,
    Cancelled,
    Change,
    Event,
    Fail,
    Fence,
    HostPipeline,
    Instruction,
    Keys,
    Persist,
    Persisted,
    PersistFailed,
    Resolve,
    SendReload,
    Submitted,
    Tick,
)

HOST = "h"
TIMEOUT = 2.0


@dataclass
class FakeAgent:
    """What one CPU's agent process holds; it outlives its links (a reconnect keeps it)."""

    generation: int | None = None  # None: it holds nothing the arbiter sent
    held: dict[str, Assignment] = field(default_factory=dict)
    deltas: bool = True

    def apply(self, reload: SendReload) -> bool:
        """Apply ``reload`` all or nothing; False if it is a delta on another base."""
        if reload.base is None:
            held = {a.reservation_id: a for a in reload.assignments}
        elif reload.base != self.generation:
            return False
        else:
            held = dict(self.held)
            for rid in reload.removed:
                held.pop(rid, None)
            for a in reload.assignments:
                held[a.reservation_id] = a
        self.held, self.generation = held, reload.generation
        return True


@dataclass
class Harness:
    ncpus: int = 3
    now: float = 0.0
    ledger: HostLedger = field(init=False)
    keys: Keys = field(default_factory=KeyTable)
    pipe: HostPipeline = field(init=False)
    links: dict[int, int] = field(default_factory=dict)  # cpu -> connected link id
    in_flight: dict[int, SendReload] = field(default_factory=dict)  # cpu -> unanswered
    agents: dict[int, FakeAgent] = field(default_factory=dict)  # cpu -> its agent process
    refused: set[int] = field(default_factory=set)  # cpus whose last answer was a NACK
    persist: Persist | None = None
    answers: dict[int, Resolve | Fail] = field(default_factory=dict)
    twice: list[int] = field(default_factory=list)  # waiters answered more than once
    fenced: list[Fence] = field(default_factory=list)
    log: list[Instruction] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _requests: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _links: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _waiters: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.ledger = HostLedger(HOST, self.ncpus)
        self.pipe = HostPipeline(self.ledger, self.keys, ack_timeout=TIMEOUT)

    # --- feeding events ------------------------------------------------------------

    def feed(self, event: Event) -> list[Instruction]:
        out = self.pipe.handle(event)
        self.log += out
        for ins in out:
            if isinstance(ins, SendReload):
                assert self.links.get(ins.cpu) == ins.link, f"reload to a dead link {ins}"
                assert ins.cpu not in self.in_flight, f"second reload in flight on {ins.cpu}"
                assert ins.base is None or self.agents[ins.cpu].deltas, "a delta to a full agent"
                self.in_flight[ins.cpu] = ins
            elif isinstance(ins, Persist):
                assert self.persist is None, "a second write while one is out"
                self.persist = ins
            elif isinstance(ins, Resolve | Fail):
                if ins.waiter in self.answers:
                    self.twice.append(ins.waiter)
                self.answers[ins.waiter] = ins
            elif isinstance(ins, Fence):
                self.fenced.append(ins)
                self.links.pop(ins.cpu, None)  # the shell closes the stream
                self.in_flight.pop(ins.cpu, None)
        return out

    def connect(self, cpu: int, *, deltas: bool = True, restarted: bool = False) -> int:
        """An agent (re)connects; ``restarted``: a new process that holds nothing."""
        link = next(self._links)
        self.links[cpu] = link
        self.in_flight.pop(cpu, None)
        agent = self.agents.get(cpu)
        if agent is None or restarted:
            agent = self.agents[cpu] = FakeAgent()
        agent.deltas = deltas
        self.refused.discard(cpu)
        self.feed(AgentConnected(cpu, link, self.now, deltas=deltas))
        return link

    def gone(self, cpu: int) -> None:
        link = self.links.pop(cpu)
        self.in_flight.pop(cpu, None)
        self.feed(AgentGone(cpu, link, "stream ended", self.now))

    def answer(self, cpu: int, ok: bool = True, *, reason: str = "", errno: int = 0) -> None:
        """The agent answers what is in flight: it applies it and acks (``ok``), or refuses
        it (its state unchanged). A delta on a base it does not hold is always refused."""
        sent = self.in_flight.pop(cpu)
        if ok and not self.agents[cpu].apply(sent):
            self.feed(
                Answered(cpu, sent.link, sent.generation, False, self.now, "base", needs_full=True)
            )
            again = self.in_flight.get(cpu)
            assert again is not None and again.base is None, "no full state after needs_full"
            return
        (self.refused.discard if ok else self.refused.add)(cpu)
        self.feed(Answered(cpu, sent.link, sent.generation, ok, self.now, reason, errno))

    def holds(self, cpu: int) -> dict[str, Assignment]:
        """What the ledger says ``cpu`` holds now (the change in flight included)."""
        return {a.reservation_id: a for a in self.ledger.for_cpu(cpu)}

    def tick(self, dt: float) -> None:
        self.now += dt
        self.feed(Tick(self.now))

    def persisted(self, ok: bool = True) -> None:
        ins, self.persist = self.persist, None
        assert ins is not None
        if ok:
            self.feed(Persisted(ins.generation, self.now))
        else:
            err = LedgerWriteFailed("the disk is full", host=HOST)
            self.feed(PersistFailed(ins.generation, err, self.now))

    def submit(self, change: Change) -> int:
        waiter = next(self._waiters)
        self.feed(Submitted(waiter, change, self.now))
        return waiter

    def cancel(self, waiter: int) -> None:
        self.feed(Cancelled(waiter, self.now))

    def settle(self) -> None:
        """Answer everything in flight (acks) and every write (ok) until nothing is out."""
        for _ in range(1000):
            if self.in_flight:
                self.answer(min(self.in_flight))
            elif self.persist is not None:
                self.persisted()
            else:
                return
        raise AssertionError("the pipeline never settled")

    # --- changes ---------------------------------------------------------------------

    def reserve(self, target: Target, *, key: str = "", addr: int = 0x1000) -> Change:
        def apply() -> tuple[object, Iterable[int]]:
            res = Reservation(
                f"r{next(self._ids)}", HOST, target, Breakpoint(addr, 8, BpType.WRITE)
            )
            self.ledger.reserve(res)
            return res, self.ledger.affected_cpus(target)

        return Change(f"q{next(self._requests)}", apply, key=key, fingerprint=f"{target}/{addr:#x}")

    def release(self, res_id: str) -> Change:
        def apply() -> tuple[object, Iterable[int]]:
            gone = self.ledger.release(res_id)
            return gone, self.ledger.affected_cpus(gone.target)

        return Change(f"q{next(self._requests)}", apply)

    def committed(self) -> dict[str, Reservation]:
        """What a reader sees: the ledger with the change in flight taken out."""
        view = {r.id: r for r in self.ledger}
        for rid, old in self.pipe.committed_view().items():
            if old is None:
                view.pop(rid, None)
            else:
                view[rid] = old
        return view

    def result(self, waiter: int) -> Reservation:
        ans = self.answers[waiter]
        assert isinstance(ans, Resolve), ans
        res = ans.outcome.result
        assert isinstance(res, Reservation)
        return res

    def error(self, waiter: int) -> HwbpError:
        ans = self.answers[waiter]
        assert isinstance(ans, Fail), ans
        return ans.error
