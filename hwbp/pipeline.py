"""One host's change pipeline as a pure state machine: ``handle(event) -> instructions``.

It knows nothing of asyncio, gRPC, threads or clocks (every event carries ``now``); the
arbiter's shell (``server/hosts.py``) turns RPCs, agent answers and timers into events and
carries out the instructions. The contract:

- **Admission.** Changes are admitted against the host's ledger in arrival order. While
  no batch is out, every queued change is admitted at once (a refused one fails alone)
  and the rest go out together as one new *generation*.
- **Broadcast.** That generation is sent to the agent of every CPU it touches whose link
  is resyncing or live. An agent has at most one reload in flight; a newer state waits and
  goes out when it answers, carrying everything that changed meanwhile.
- **Deltas.** A reload is the CPU's full state only when its agent (re)connects, cannot
  apply deltas, or said it does not hold the base a delta was computed on. Otherwise it
  is a *delta* on the generation the agent last acknowledged (its ``base``): the current
  state of every reservation touched on that CPU since then, as upserts and removals,
  which the agent applies all-or-nothing and only on that base. Each CPU keeps the ids
  touched since its base (``dirty``), so a change costs what it touched, not what the host
  holds.
- **Commit.** The batch commits once every agent it waits for acknowledged its
  generation, or stopped counting: it disconnected, or missed its ack deadline and was
  fenced. The batch is then made durable (``Persist``), and only when that succeeds does
  any caller hear success. The answer names the CPUs where the change is applied and
  those where it is *pending* (offline or fenced: they get it when they resync). A CPU
  without a live agent is treated the same whether it never connected, disconnected or
  was fenced: the change commits and the CPU is reported pending.
- **Rollback.** A NACK or a failed write rolls the batch back in the ledger (and calls
  each change's ``undo``), and sends the restored state to every CPU that was sent the
  refused generation. A batch of several changes refused by an agent is retried one
  change at a time, so only the change the agent refused fails. The refused callers are
  told once every CPU answered the restored state (a refusal of it is reported as
  ``ResyncRefused``) or was fenced for not answering;
  the next change does not wait for that, its reload supersedes the restored state.
- **Fencing.** An agent that misses its ack deadline is fenced at once (``Fence``: the
  shell closes its stream), and nothing waits for it again until it reconnects and
  resyncs: one dead agent costs a host at most one ack timeout.
- **Reads** see committed state only (``committed_view``): a change waiting for
  acknowledgements is invisible, and never was visible if it is rolled back.
- **Exactly once.** A change with an idempotency key binds the key when submitted; a
  retry joins the same change, or after commit gets the same outcome (``hwbp.keys``).
- **Every waiter is answered** with ``Resolve`` or ``Fail``, whatever an ``apply`` or
  ``undo`` raises.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeAlias

from hwbp.errors import (
    AgentRefused,
    HostShapeConflict,
    HostShrinkBlocked,
    HwbpError,
    KernelNoSpace,
    KernelRefused,
    LedgerCorrupt,
    PipelineFault,
)
from hwbp.keys import Done, KeyTable
from hwbp.ledger import HostLedger
from hwbp.model import Reservation
from hwbp.pipeline_events import (
    ENOSPC,
    WAITED,
    AgentConnected,
    AgentGone,
    Answered,
    Apply,
    Cancelled,
    Change,
    Committed,
    Event,
    Fail,
    Fault,
    Fence,
    Instruction,
    Link,
    Outcome,
    Persist,
    Persisted,
    PersistFailed,
    Resolve,
    ResyncRefused,
    RolledBack,
    SendReload,
    Submitted,
    Tick,
    Undo,
)

# The pipeline's vocabulary lives in hwbp.pipeline_events; importing it from here too
# keeps one place to import the pipeline from.
__all__ = [
    "ENOSPC",
    "WAITED",
    "AgentConnected",
    "AgentGone",
    "Answered",
    "Apply",
    "Cancelled",
    "Change",
    "Committed",
    "CpuLink",
    "Event",
    "Fail",
    "Fault",
    "Fence",
    "HostPipeline",
    "Instruction",
    "Link",
    "Outcome",
    "Persist",
    "PersistFailed",
    "Persisted",
    "Resolve",
    "ResyncRefused",
    "RolledBack",
    "SendReload",
    "Submitted",
    "Tick",
    "Undo",
]


# --- state ----------------------------------------------------------------------------


@dataclass
class CpuLink:
    state: Link = Link.OFFLINE
    link: int = 0
    in_flight: int | None = None  # generation sent and not yet answered
    deadline: float = math.inf
    stale: bool = False  # the state moved on while in flight: send again on the answer
    sent: int = 0  # newest generation sent on this link
    acked: int = 0  # newest generation it acknowledged
    answered: int = 0  # newest generation it answered, acknowledged or refused
    reason: str = ""  # why it is fenced, offline or mismatched
    deltas: bool = False  # its agent applies deltas
    full: bool = True  # the next reload must be full state (no known base)
    sent_full: bool = False  # the reload in flight is full state
    # Reservation ids touched on this CPU since the state it acknowledged (what a delta
    # on ``acked`` carries), and since the last reload was sent (what stays dirty once
    # that reload is acknowledged). Tracked only while the link is waited for.
    dirty: set[str] = field(default_factory=set)
    fresh: set[str] = field(default_factory=set)


@dataclass(eq=False)
class _Ticket:
    change: Change
    waiters: set[int]
    alone: bool = False  # retried alone after its merged batch was refused


# The fleet's idempotency keys as a pipeline uses them: committed outcomes, and the
# in-flight change a key is bound to.
Keys: TypeAlias = KeyTable[Outcome[object], _Ticket]


@dataclass(eq=False)
class _Batch:
    generation: int
    token: int
    admitted: list[tuple[_Ticket, object, frozenset[int]]]
    affected: frozenset[int]
    waiting: set[int]
    persisting: bool = False  # every awaited agent answered; the write is out
    outcomes: list[Outcome[object]] = field(default_factory=list)  # one per admitted change

    @property
    def request_ids(self) -> str:
        return ",".join(t.change.request_id for t, _, _ in self.admitted)


@dataclass(eq=False)
class _Undone:
    """A rolled-back batch whose callers are told once the restored state is acked."""

    generation: int  # the generation carrying the restored state
    tickets: list[_Ticket]
    error: HwbpError
    waiting: set[int]


class HostPipeline:
    """The change pipeline of one host. ``handle`` is the only way its state changes."""

    def __init__(
        self,
        ledger: HostLedger,
        keys: Keys,
        *,
        ack_timeout: float,
        generation: int = 0,
    ) -> None:
        self.ledger = ledger
        self.keys = keys
        self.ack_timeout = ack_timeout
        self.generation = generation
        self.cpus = [CpuLink() for _ in range(ledger.ncpus)]
        self._queue: deque[_Ticket] = deque()
        self._batch: _Batch | None = None
        self._undone: list[_Undone] = []
        self._tickets: dict[int, _Ticket] = {}  # waiter -> its change
        # (deadline, cpu, generation) of reloads sent; entries whose reload was answered
        # are dropped lazily, so the next deadline costs O(log n), not a scan of the CPUs.
        self._deadlines: list[tuple[float, int, int]] = []
        self._label = "resync"  # request ids behind the newest generation
        self._out: list[Instruction] = []

    # --- reading ---------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return self._batch is None and not self._queue and not self._undone

    def next_deadline(self) -> float | None:
        heap = self._deadlines
        while heap:
            deadline, index, generation = heap[0]
            cpu = self.cpus[index]
            if cpu.in_flight == generation and cpu.deadline == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    def committed_view(self) -> dict[str, Reservation | None]:
        """Reservations the batch in flight changed, as they were committed (None: it
        does not exist yet). Empty when nothing is in flight."""
        return {} if self._batch is None else self.ledger.before(self._batch.token)

    def pending_cpus(self) -> frozenset[int]:
        """CPUs touched by the change in flight (its state there is not committed)."""
        return frozenset() if self._batch is None else self._batch.affected

    def resize(self, ncpus: int) -> None:
        """The host's agents now report ``ncpus`` CPUs. Only while idle (no change waits
        on a CPU that might go away), and a removed CPU must have no agent waited for;
        the ledger refuses if a reservation is pinned there. New CPUs start offline and
        get the whole state when their agent says hello."""
        old = len(self.cpus)
        if ncpus == old:
            return
        host = self.ledger.host
        if not self.idle:
            raise HostShapeConflict(
                f"host {host} is in the middle of a change; its cpu count changes from "
                f"{old} to {ncpus} once the change settles",
                host=host,
                known=old,
                said=ncpus,
            )
        live = [i for i in range(ncpus, old) if self.cpus[i].state in WAITED]
        if live:
            raise HostShrinkBlocked(
                f"host {host} cannot shrink from {old} to {ncpus} cpus: cpu "
                f"{', '.join(map(str, live))} still {'has' if len(live) == 1 else 'have'} "
                "a live agent",
                host=host,
                known=old,
                said=ncpus,
            )
        self.ledger.resize(ncpus)
        if ncpus < old:
            del self.cpus[ncpus:]
            self._deadlines = [d for d in self._deadlines if d[1] < ncpus]
            heapq.heapify(self._deadlines)
        else:
            self.cpus.extend(CpuLink() for _ in range(ncpus - old))

    # --- the one entry point ---------------------------------------------------------

    def handle(self, event: Event) -> list[Instruction]:
        self._out = []
        if isinstance(event, Submitted):
            self._submitted(event)
        elif isinstance(event, Cancelled):
            ticket = self._tickets.pop(event.waiter, None)
            if ticket is not None:
                ticket.waiters.discard(event.waiter)
        elif isinstance(event, AgentConnected):
            self._connected(event)
        elif isinstance(event, AgentGone):
            cpu = self.cpus[event.cpu]
            if cpu.link == event.link and cpu.state in WAITED:
                cpu.state = Link.FENCED if event.fenced else Link.OFFLINE
                cpu.reason = event.reason
                _unlink(cpu)
                self._settled(event.cpu)
        elif isinstance(event, Answered):
            self._answered(event)
        elif isinstance(event, Tick):
            while (deadline := self.next_deadline()) is not None and deadline <= event.now:
                i = heapq.heappop(self._deadlines)[1]
                self._fence(
                    i,
                    f"did not acknowledge generation {self.cpus[i].in_flight} within "
                    f"{self.ack_timeout:g}s",
                )
        elif isinstance(event, Persisted):
            self._persisted(event)
        elif isinstance(event, PersistFailed):
            batch = self._batch
            if batch is not None and batch.persisting and batch.generation == event.generation:
                self._rollback(batch, event.error, event.now, split=False)
        self._progress(event.now)
        out, self._out = self._out, []
        return out

    # --- events ----------------------------------------------------------------------

    def _submitted(self, ev: Submitted) -> None:
        change = ev.change
        if change.key:
            try:
                found = self.keys.lookup(change.key, change.fingerprint, ev.now)
            except HwbpError as err:
                self._out.append(Fail(ev.waiter, err))
                return
            if isinstance(found, Done):
                self._out.append(Resolve(ev.waiter, found.outcome))
                return
            if found is not None:  # in flight: join it
                found.change.waiters.add(ev.waiter)
                self._tickets[ev.waiter] = found.change
                return
        ticket = _Ticket(change, {ev.waiter})
        if change.key:
            self.keys.bind(change.key, self.ledger.host, change.fingerprint, ticket)
        self._tickets[ev.waiter] = ticket
        self._queue.append(ticket)

    def _connected(self, ev: AgentConnected) -> None:
        self.cpus[ev.cpu] = CpuLink(state=Link.RESYNCING, link=ev.link, deltas=ev.deltas)
        self._push(ev.cpu, ev.now)
        batch = self._batch
        if batch is not None and not batch.persisting and ev.cpu in batch.affected:
            batch.waiting.add(ev.cpu)

    def _answered(self, ev: Answered) -> None:
        cpu = self.cpus[ev.cpu]
        if cpu.link != ev.link or cpu.in_flight != ev.generation or cpu.state not in WAITED:
            return  # an old stream's, or a superseded generation's: nothing waits for it
        cpu.in_flight, cpu.deadline = None, math.inf
        if ev.needs_full and not ev.ok and not cpu.sent_full:
            # It does not hold the base the delta was computed on: nothing was refused,
            # it gets its whole state (still at the generation it is waited for).
            cpu.full, cpu.stale = True, False
            self._push(ev.cpu, ev.now)
            return
        cpu.answered = ev.generation
        stale, cpu.stale = cpu.stale, False
        if ev.ok:
            cpu.acked = ev.generation
            self._settled(ev.cpu)
            cpu.full = False
            cpu.dirty = cpu.fresh  # what changed after that reload was sent
            cpu.fresh = set(cpu.fresh)
            if cpu.reason.startswith("refused"):
                cpu.reason = ""
        else:
            batch = self._batch
            if (
                batch is not None
                and not batch.persisting
                and ev.cpu in batch.affected
                and ev.generation >= batch.generation
            ):
                self._rollback(batch, _refusal(self.ledger.host, ev), ev.now, split=True)
                stale = False  # the rollback sent it the restored state
            else:
                cpu.reason = f"refused generation {ev.generation}: {ev.reason}"
                self._out.append(ResyncRefused(ev.cpu, ev.generation, ev.reason, ev.errno))
        if cpu.state is Link.RESYNCING:
            cpu.state = Link.LIVE
        if stale:
            self._push(ev.cpu, ev.now)

    def _persisted(self, ev: Persisted) -> None:
        batch = self._batch
        if batch is None or not batch.persisting or batch.generation != ev.generation:
            return
        self.ledger.commit(batch.token)
        self._batch = None
        for (ticket, _, _), outcome in zip(batch.admitted, batch.outcomes, strict=True):
            if ticket.change.key:
                self.keys.resolve(ticket.change.key, outcome, ev.now)
            self._answer(ticket, outcome)
        self._out.append(Committed(batch.generation, batch.request_ids))

    # --- the batch -------------------------------------------------------------------

    def _progress(self, now: float) -> None:
        """Start the next batch when none is out; send a finished one to be persisted;
        tell the callers of a rolled-back batch once its restored state is acked."""
        for undone in list(self._undone):
            # A CPU that refused the restored state does not hold it either, but it has
            # answered (the refusal is reported as ResyncRefused): its callers are told.
            undone.waiting = {
                c
                for c in undone.waiting
                if self.cpus[c].state in WAITED and self.cpus[c].answered < undone.generation
            }
            if not undone.waiting:
                self._undone.remove(undone)
                for ticket in undone.tickets:
                    self._fail(ticket, undone.error)
        while True:
            if self._batch is None:
                if not self._queue:
                    return
                self._start(now)
                continue
            batch = self._batch
            if batch.persisting:
                return
            if batch.waiting:  # kept exact as agents answer or go (see _settled)
                return
            keys = []
            for ticket, result, cpus in batch.admitted:
                acked = tuple(c for c in sorted(cpus) if self.cpus[c].acked >= batch.generation)
                pending = tuple(c for c in sorted(cpus) if c not in acked)
                outcome = Outcome(result, batch.generation, acked, pending)
                batch.outcomes.append(outcome)
                if ticket.change.key:
                    keys.append((ticket.change.key, ticket.change.fingerprint, outcome))
            batch.persisting = True
            touched = frozenset(self.ledger.touched_since(batch.token))
            self._out.append(Persist(batch.generation, touched, tuple(keys)))
            return

    def _start(self, now: float) -> None:
        """Admit the next changes (one if it must go alone) as a new generation."""
        tickets = [self._queue.popleft()]
        if not tickets[0].alone:
            while self._queue and not self._queue[0].alone:
                tickets.append(self._queue.popleft())
        token = self.ledger.checkpoint()
        admitted: list[tuple[_Ticket, object, frozenset[int]]] = []
        for ticket in tickets:
            step = self.ledger.checkpoint()
            try:
                result, cpus = ticket.change.apply()
                touched = frozenset(cpus)
            except HwbpError as err:
                self.ledger.rollback(step)
                self._fail(ticket, err)
                continue
            except Exception as err:
                self.ledger.rollback(step)
                self._out.append(Fault(ticket.change.request_id, err))
                self._fail(ticket, _fault(ticket.change.request_id, "admitting", err))
                continue
            admitted.append((ticket, result, touched))
        if not admitted:
            self.ledger.commit(token)
            return
        self.generation += 1
        affected = frozenset().union(*(cpus for _, _, cpus in admitted))
        self._touched(self.ledger.touched_where(token))
        batch = _Batch(self.generation, token, admitted, affected, set())
        self._batch = batch
        self._label = batch.request_ids
        for cpu in sorted(affected):
            if self.cpus[cpu].state in WAITED:
                batch.waiting.add(cpu)
                self._push(cpu, now)

    def _rollback(self, batch: _Batch, error: HwbpError, now: float, *, split: bool) -> None:
        touched = self.ledger.touched_where(batch.token)
        self.ledger.rollback(batch.token)
        self._touched(touched)  # their restored state differs from what went out
        for ticket, _, _ in reversed(batch.admitted):
            if ticket.change.undo is not None:
                try:
                    ticket.change.undo()
                except Exception as err:  # the ledger is restored regardless
                    self._out.append(Fault(ticket.change.request_id, err))
        self._batch = None
        self.generation += 1
        self._label = f"rollback of {batch.generation}"
        restored = set()
        for i, cpu in enumerate(self.cpus):
            if cpu.state in WAITED and cpu.sent >= batch.generation:
                self._push(i, now)
                restored.add(i)
        self._out.append(RolledBack(batch.generation, self.generation, batch.request_ids, error))
        if split and len(batch.admitted) > 1:
            for ticket, _, _ in reversed(batch.admitted):
                ticket.alone = True
                self._queue.appendleft(ticket)
        else:
            tickets = [ticket for ticket, _, _ in batch.admitted]
            self._undone.append(_Undone(self.generation, tickets, error, restored))

    # --- helpers ---------------------------------------------------------------------

    def _push(self, index: int, now: float) -> None:
        """Send the CPU its current state, or mark it to be sent when it answers."""
        cpu = self.cpus[index]
        if cpu.in_flight is not None:
            cpu.stale = True
            return
        cpu.in_flight = cpu.sent = self.generation
        cpu.deadline = now + self.ack_timeout
        heapq.heappush(self._deadlines, (cpu.deadline, index, self.generation))
        cpu.sent_full = cpu.full or not cpu.deltas
        if cpu.sent_full:
            ins = SendReload(
                index, cpu.link, self.generation, self._label, tuple(self.ledger.for_cpu(index))
            )
        else:
            upserts, removed = self.ledger.delta(index, cpu.dirty)
            ins = SendReload(
                index,
                cpu.link,
                self.generation,
                self._label,
                tuple(upserts),
                base=cpu.acked,
                removed=tuple(removed),
            )
        cpu.fresh = set()
        self._out.append(ins)

    def _touched(self, where: dict[str, int | None]) -> None:
        """Mark reservation ids dirty on every CPU they apply to whose agent takes deltas
        (a CPU without a live link is sent its full state when it connects)."""
        tracked: list[CpuLink] | None = None
        for rid, cpu_index in where.items():
            if cpu_index is None:
                if tracked is None:
                    tracked = [c for c in self.cpus if c.deltas and c.state in WAITED]
                cpus: Iterable[CpuLink] = tracked
            else:
                one = self.cpus[cpu_index]
                cpus = (one,) if one.deltas and one.state in WAITED else ()
            for cpu in cpus:
                cpu.dirty.add(rid)
                cpu.fresh.add(rid)

    def _fence(self, index: int, reason: str) -> None:
        cpu = self.cpus[index]
        cpu.state, cpu.reason = Link.FENCED, reason
        _unlink(cpu)
        self._settled(index)
        self._out.append(Fence(index, cpu.link, reason))

    def _settled(self, index: int) -> None:
        """The batch stops waiting for a CPU that acknowledged it or is no longer waited
        for (each answer costs O(1), not a pass over every CPU the batch waits for)."""
        batch = self._batch
        if batch is None or batch.persisting or index not in batch.waiting:
            return
        cpu = self.cpus[index]
        if cpu.state not in WAITED or cpu.acked >= batch.generation:
            batch.waiting.discard(index)

    def _fail(self, ticket: _Ticket, error: HwbpError) -> None:
        if ticket.change.key:
            self.keys.free(ticket.change.key)
        self._answer(ticket, error)

    def _answer(self, ticket: _Ticket, answer: Outcome[object] | HwbpError) -> None:
        for waiter in sorted(ticket.waiters):
            self._tickets.pop(waiter, None)
            if isinstance(answer, Outcome):
                self._out.append(Resolve(waiter, answer))
            else:
                self._out.append(Fail(waiter, answer))
        ticket.waiters.clear()

    # --- invariants ------------------------------------------------------------------

    def validate_state(self) -> None:
        """Raise LedgerCorrupt naming every broken invariant (tests call it each step)."""
        problems: list[str] = []
        batch = self._batch
        if batch is None and self._queue:
            problems.append("changes are queued but no batch is out")
        for i, cpu in enumerate(self.cpus):
            if max(cpu.in_flight or 0, cpu.sent, cpu.acked, cpu.answered) > self.generation:
                problems.append(f"cpu {i} is ahead of generation {self.generation}")
            if cpu.in_flight is not None and (cpu.state not in WAITED or math.isinf(cpu.deadline)):
                problems.append(f"cpu {i} has a reload in flight while {cpu.state.value}")
            if cpu.in_flight is None and cpu.stale:
                problems.append(f"cpu {i} is marked stale with nothing in flight")
            if cpu.dirty and (cpu.state not in WAITED or not cpu.deltas):
                problems.append(f"cpu {i} tracks changes while {cpu.state.value}")
            if not cpu.fresh <= cpu.dirty:
                problems.append(f"cpu {i} has changes since its last reload it would not send")
        live: list[_Ticket] = list(self._queue)
        for undone in self._undone:
            live += undone.tickets
            if not undone.waiting <= set(range(len(self.cpus))):
                problems.append("a rollback waits for cpus that do not exist")
        if batch is not None:
            live += [t for t, _, _ in batch.admitted]
            if not batch.waiting <= batch.affected:
                problems.append("the batch waits for cpus it does not touch")
            owed = {
                c
                for c in batch.affected
                if self.cpus[c].state in WAITED and self.cpus[c].acked < batch.generation
            }
            if not batch.persisting and batch.waiting != owed:
                problems.append(
                    f"the batch waits for cpus {sorted(batch.waiting)}, not {sorted(owed)}"
                )
            if batch.generation > self.generation:
                problems.append("the batch is ahead of the host's generation")
        if len({id(t) for t in live}) != len(live):
            problems.append("a change is queued twice")
        for waiter, ticket in self._tickets.items():
            if waiter not in ticket.waiters or not any(ticket is t for t in live):
                problems.append(f"waiter {waiter} waits for a change that is not live")
        bound = {t.change.key for t in live if t.change.key}
        for key in self.keys.pending_for(self.ledger.host) - bound:
            problems.append(f"idempotency key {key!r} is bound to no live change")
        try:
            self.ledger.validate()
        except LedgerCorrupt as err:
            problems.append(str(err))
        if problems:
            raise LedgerCorrupt(
                f"pipeline of host {self.ledger.host}: " + "; ".join(problems[:8]),
                host=self.ledger.host,
            )


def _unlink(cpu: CpuLink) -> None:
    """Nothing is in flight or tracked for a link that is not waited for."""
    cpu.in_flight, cpu.deadline, cpu.stale = None, math.inf, False
    cpu.dirty, cpu.fresh = set(), set()


def _refusal(host: str, ev: Answered) -> HwbpError:
    message = (
        f"host {host}: the agent on cpu {ev.cpu} refused generation {ev.generation} "
        f"({ev.reason or 'no reason given'}); the change was rolled back everywhere"
    )
    meta: dict[str, object] = {"host": host, "cpus": str(ev.cpu), "generation": ev.generation}
    if ev.errno:
        cls = KernelNoSpace if ev.errno == ENOSPC else KernelRefused
        return cls(message, kernel_errno=ev.errno, **meta)
    return AgentRefused(message, **meta)


def _fault(request_id: str, doing: str, err: BaseException) -> PipelineFault:
    return PipelineFault(
        f"request {request_id}: {doing} the change raised {type(err).__name__}: {err}; "
        "nothing was changed",
        request_id=request_id,
    )
