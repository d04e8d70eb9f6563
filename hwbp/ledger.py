"""One host's debug-register accounting, as the kernel's ``kernel/events/hw_breakpoint.c``.

``HostLedger`` admits or refuses reservations with the kernel's formulas (first come,
first served, never overcommitted), keeps them in admission order, and journals every
change so a failed fleet-wide reload can be rolled back exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from itertools import chain
from typing import TypeVar

from hwbp.arch import X86_64, ArchProfile
from hwbp.counters import SlotCounters
from hwbp.errors import (
    HostShrinkBlocked,
    InvalidArgument,
    InvalidCpu,
    LedgerCorrupt,
    NoFreeSlot,
    ReservationNotFound,
    UnsupportedSlotClass,
)
from hwbp.model import Assignment, BpType, Breakpoint, Reservation, Scope, SlotClass, Target
from hwbp.processes import counts_on, task_keys
from hwbp.validate import validate_breakpoint


class _Entry:
    """A live reservation with its admission number and the slot class it is counted in."""

    __slots__ = ("_sent", "cls", "res", "seq")

    def __init__(self, res: Reservation, seq: int, cls: SlotClass) -> None:
        self.res = res
        self.seq = seq
        self.cls = cls
        self._sent: Assignment | None = None

    @property
    def assignment(self) -> Assignment:
        """What agents are sent for it: made once, shared by every CPU it applies to."""
        sent = self._sent
        if sent is None or sent.bp is not self.res.bp:  # a modify replaced the breakpoint
            res = self.res
            process = res.target.scope is Scope.PROCESS
            sent = self._sent = Assignment(res.id, res.target.task, res.bp, process)
        return sent


def _seq(entry: _Entry) -> int:
    return entry.seq


def _in_order(entries: Iterable[_Entry]) -> list[_Entry]:
    # Indexes are insertion-ordered; only a rolled-back release re-inserts out of order,
    # and sorting an already-sorted run is linear.
    return sorted(entries, key=_seq)


_K = TypeVar("_K", int, str)

# Journal records: what to undo.
_Undo = tuple[str, _Entry, Reservation | None, SlotClass | None]


class HostLedger:
    """The kernel's slot accounting for one host with ``ncpus`` CPUs."""

    __slots__ = (
        "_bound_on",
        "_by_session",
        "_by_task",
        "_counters",
        "_entries",
        "_everywhere",
        "_high",
        "_host",
        "_journal",
        "_journal_base",
        "_marks",
        "_ncpus",
        "_next_seq",
        "_next_token",
        "_on_cpu",
        "_ordered",
        "_processes",
        "_profile",
        "_system",
    )

    def __init__(self, host: str, ncpus: int, profile: ArchProfile = X86_64) -> None:
        if ncpus < 1:
            raise InvalidArgument(f"host {host} needs at least one cpu, got {ncpus}", host=host)
        self._host = host
        self._ncpus = ncpus
        self._profile = profile
        self._counters = {cls: SlotCounters(profile.slots(cls), ncpus) for cls in profile.classes}
        self._entries: dict[str, _Entry] = {}
        self._ordered = True  # _entries is in admission order
        self._high = -1  # highest admission number ever inserted
        self._next_seq = 0
        self._on_cpu: list[dict[str, _Entry]] = [{} for _ in range(ncpus)]  # CPU, TASK_CPU
        self._everywhere: dict[str, _Entry] = {}  # SYSTEM, TASK
        # CPU-bound ones apart (SYSTEM; CPU per cpu): the kernel caps them at the slots, so
        # what a refusal names or a context switch installs is found without walking tasks.
        self._system: dict[str, _Entry] = {}
        self._bound_on: list[dict[str, _Entry]] = [{} for _ in range(ncpus)]
        self._by_task: dict[int, dict[str, _Entry]] = {}  # PROCESS ones under their pid
        self._processes: dict[str, _Entry] = {}  # PROCESS: counted on each of its threads
        self._by_session: dict[str, dict[str, _Entry]] = {}
        self._journal: list[_Undo] = []
        self._journal_base = 0  # absolute position of _journal[0]
        self._marks: dict[int, int] = {}  # open checkpoint token -> journal position
        self._next_token = 1

    @property
    def host(self) -> str:
        return self._host

    @property
    def ncpus(self) -> int:
        return self._ncpus

    @property
    def profile(self) -> ArchProfile:
        return self._profile

    @profile.setter
    def profile(self, profile: ArchProfile) -> None:
        """The host reported other features (its agent said so); its registers are the
        same. Held reservations stay, as the kernel checks capabilities at creation."""
        old = self._profile
        if (profile.inst_slots, profile.data_slots, profile.mixed) != (
            old.inst_slots,
            old.data_slots,
            old.mixed,
        ):
            raise InvalidArgument(
                f"host {self._host} has {old.name}'s debug registers, not {profile.name}'s",
                host=self._host,
            )
        self._profile = profile

    def resize(self, ncpus: int) -> None:
        """The host now has ``ncpus`` CPUs (hotplug, a resized VM, agents started with
        another count). More is always fine: what applies everywhere applies on the new
        CPUs too (they hold nothing yet, so nothing can be overcommitted). Fewer is
        refused while a reservation is pinned to a CPU that goes away, naming each one:
        an admitted reservation is never dropped behind its holder's back. Only between
        changes: a journal mark open means a change waits for its agents."""
        if ncpus < 1:
            raise InvalidArgument(
                f"host {self._host} needs at least one cpu, got {ncpus}", host=self._host
            )
        if self._marks:
            raise InvalidArgument(
                f"host {self._host} cannot change its cpu count while a change is open",
                host=self._host,
            )
        stranded = self.stranded(ncpus)
        if stranded:
            raise HostShrinkBlocked(
                f"host {self._host} cannot shrink from {self._ncpus} to {ncpus} cpus: "
                + ", ".join(r.describe() for r in stranded[:16])
                + (f" and {len(stranded) - 16} more" if len(stranded) > 16 else "")
                + f" {'is' if len(stranded) == 1 else 'are'} pinned to a removed cpu; "
                "release them, or start its agents with the cpus they had",
                host=self._host,
                known=self._ncpus,
                said=ncpus,
                reservations=",".join(r.id for r in stranded),
            )
        entries = list(self._all())
        self._ncpus = ncpus
        self._counters = {
            cls: SlotCounters(self._profile.slots(cls), ncpus) for cls in self._profile.classes
        }
        self._on_cpu = [{} for _ in range(ncpus)]
        self._everywhere = {}
        self._system = {}
        self._bound_on = [{} for _ in range(ncpus)]
        self._by_task = {}
        self._by_session = {}
        for entry in entries:
            self._insert(entry)

    def stranded(self, ncpus: int) -> list[Reservation]:
        """Reservations pinned to a CPU at or above ``ncpus`` (admission order)."""
        return [
            e.res for e in self._all() if e.res.target.cpu is not None and e.res.target.cpu >= ncpus
        ]

    # --- admission ---------------------------------------------------------------------

    def check(self, target: Target, bp_type: BpType) -> None:
        """Would one more breakpoint of ``bp_type`` fit at ``target``? Raise if not."""
        self._admit(target, bp_type)

    def reserve(self, res: Reservation) -> None:
        """Admit ``res``. As register_perf_hw_breakpoint: reserve first, then validate
        (for a system request CPU by CPU, as register_wide_hw_breakpoint does)."""
        if res.host != self._host:
            raise InvalidArgument(
                f"reservation {res.id} is for host {res.host}, not {self._host}", host=res.host
            )
        if res.id in self._entries:
            raise InvalidArgument(
                f"reservation id {res.id} already exists on host {self._host}",
                host=self._host,
                reservation_id=res.id,
            )
        cls = self._admit(res.target, res.bp.type, wide=res.target.scope is Scope.SYSTEM)
        validate_breakpoint(res.bp, scope=res.target.scope, profile=self._profile)
        if res.target.scope is Scope.SYSTEM:
            self._admit(res.target, res.bp.type)  # the CPUs after the first, once valid
        entry = _Entry(res, self._next_seq, cls)
        self._next_seq += 1
        self._insert(entry)
        if self._marks:
            self._journal.append(("reserve", entry, None, None))

    def release(self, res_id: str) -> Reservation:
        entry = self._entry(res_id)
        self._remove(entry)
        if self._marks:
            self._journal.append(("release", entry, None, None))
        return entry.res

    def modify(self, res_id: str, bp: Breakpoint) -> Reservation:
        """modify_user_hw_breakpoint_check(): on any error the reservation is unchanged."""
        entry = self._entry(res_id)
        old = entry.res
        target = old.target
        validate_breakpoint(bp, scope=target.scope, profile=self._profile)
        if bp.kernel != old.bp.kernel:
            raise InvalidArgument(
                f"modify of {res_id} cannot change kernel from {old.bp.kernel} to {bp.kernel}",
                reservation_id=res_id,
            )
        if bp.tracer_applied != old.bp.tracer_applied:
            raise InvalidArgument(
                f"modify of {res_id} cannot change who arms it (tracer_applied "
                f"{old.bp.tracer_applied} to {bp.tracer_applied})",
                reservation_id=res_id,
            )
        old_cls = entry.cls
        new_cls = self._profile.slot_class(bp.type)
        if new_cls is not old_cls:  # modify_bp_slot(): release the old, reserve the new
            self._counters[old_cls].add(target, -1)
            full = self._counters[new_cls].first_full(target)
            if full is not None:
                error = self._no_space(target, new_cls, *full)
                self._counters[old_cls].add(target, +1)
                raise error
            self._counters[new_cls].add(target, +1)
        entry.res = replace(old, bp=bp)
        entry.cls = new_cls
        if self._marks:
            self._journal.append(("modify", entry, old, old_cls))
        return entry.res

    # --- queries -----------------------------------------------------------------------

    def get(self, res_id: str) -> Reservation:
        return self._entry(res_id).res

    def __contains__(self, res_id: object) -> bool:
        return res_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Reservation]:
        """Admission order; a snapshot, so the ledger may change while iterating."""
        return iter([e.res for e in self._all()])

    def for_cpu(self, cpu: int) -> list[Assignment]:
        """What an agent must install on ``cpu``: everything that applies there."""
        return [_assignment(e) for e in self._applying(cpu)]

    def holders(self, cpu: int) -> list[Reservation]:
        """Every reservation counting on ``cpu`` (cpu-bound on it or a task's there)."""
        return [e.res for e in self._applying(cpu)]

    def installable(self, cpu: int, task: int | None) -> list[Assignment]:
        """What can be in ``cpu``'s registers while ``task`` runs there: its CPU-bound
        breakpoints and that task's, in admission order. Bounded by the slots, whatever
        other tasks hold."""
        entries = self._bound(cpu)
        if task is not None:
            entries += [e for e in self._counting_on(task) if _applies(e, cpu)]
        return [_assignment(e) for e in _in_order(entries)]

    def delta(self, cpu: int, ids: Iterable[str]) -> tuple[list[Assignment], list[str]]:
        """The state of ``ids`` on ``cpu``: those that apply there (admission order), and
        those that do not, or no longer exist (sorted). The cost is that of ``ids``."""
        self._check_cpu(cpu)
        here: list[_Entry] = []
        gone: list[str] = []
        entries = self._entries
        for rid in ids:
            entry = entries.get(rid)
            if entry is not None and _applies(entry, cpu):
                here.append(entry)
            else:
                gone.append(rid)
        return [_assignment(e) for e in _in_order(here)], sorted(gone)

    def affected_cpus(self, target: Target) -> range | tuple[int, ...]:
        if target.cpu is None:
            return range(self._ncpus)
        self._check_cpu(target.cpu)
        return (target.cpu,)

    def used(self, cpu: int, cls: SlotClass | None = None) -> int:
        """cpu_pinned + max_task_bp_pinned on ``cpu`` for ``cls`` (default: first class)."""
        self._check_cpu(cpu)
        counters = self._counters[self._profile.classes[0] if cls is None else cls]
        return counters.used(cpu)

    def count(self, scope: Scope) -> int:
        """Reservations of ``scope``, from the indexes: O(cpus), not O(reservations)."""
        if scope is Scope.SYSTEM:
            return len(self._system)
        if scope is Scope.PROCESS:
            return len(self._processes)
        if scope is Scope.TASK:
            return len(self._everywhere) - len(self._system) - len(self._processes)
        cpu_scoped = sum(len(b) for b in self._bound_on)
        if scope is Scope.CPU:
            return cpu_scoped
        return sum(len(d) for d in self._on_cpu) - cpu_scoped

    def by_task(self, task: int) -> list[Reservation]:
        return [e.res for e in _in_order(self._by_task.get(task, {}).values())]

    def by_session(self, session: str) -> list[Reservation]:
        return [e.res for e in _in_order(self._by_session.get(session, {}).values())]

    # --- journal -----------------------------------------------------------------------

    def checkpoint(self) -> int:
        """Start recording; ``rollback(token)`` undoes everything after this point."""
        token = self._next_token
        self._next_token += 1
        self._marks[token] = self._journal_base + len(self._journal)
        return token

    def rollback(self, token: int) -> None:
        """Undo every reserve/release/modify since ``token`` (and close later checkpoints)."""
        position = self._close(token)
        while self._journal_base + len(self._journal) > position:
            kind, entry, old, old_cls = self._journal.pop()
            if kind == "reserve":
                self._remove(entry)
            elif kind == "release":
                self._insert(entry)
            else:
                assert old is not None and old_cls is not None
                if old_cls is not entry.cls:
                    self._counters[entry.cls].add(old.target, -1)
                    self._counters[old_cls].add(old.target, +1)
                entry.res, entry.cls = old, old_cls
        self._trim()

    def touched_since(self, token: int) -> set[str]:
        """Ids of the reservations reserved, released or modified since ``token``
        (what a durable store must write when the changes are kept)."""
        start = self._marks.get(token)
        if start is None:
            raise InvalidArgument(f"checkpoint {token} is not open", token=token)
        return {entry.res.id for _, entry, _, _ in self._journal[start - self._journal_base :]}

    def touched_where(self, token: int) -> dict[str, int | None]:
        """Like ``touched_since``, with where each applies: its cpu, or None for every
        cpu (a reservation's target never changes, so one answer holds for all its
        journal records)."""
        start = self._marks.get(token)
        if start is None:
            raise InvalidArgument(f"checkpoint {token} is not open", token=token)
        return {
            entry.res.id: entry.res.target.cpu
            for _, entry, _, _ in self._journal[start - self._journal_base :]
        }

    def before(self, token: int) -> dict[str, Reservation | None]:
        """What each reservation touched since ``token`` was at that point (None: it did
        not exist yet): the committed view while a change waits for acknowledgements."""
        start = self._marks.get(token)
        if start is None:
            raise InvalidArgument(f"checkpoint {token} is not open", token=token)
        out: dict[str, Reservation | None] = {}
        for kind, entry, old, _ in self._journal[start - self._journal_base :]:
            rid = entry.res.id
            if rid not in out:
                out[rid] = None if kind == "reserve" else old if kind == "modify" else entry.res
        return out

    def commit(self, token: int) -> None:
        """Keep the changes since ``token``; its journal entries are dropped unless an
        outer checkpoint still needs them."""
        self._close(token)
        self._trim()

    # --- invariants --------------------------------------------------------------------

    def validate(self) -> None:
        """Recompute every counter and index from the reservations; raise LedgerCorrupt."""
        problems: list[str] = []
        fresh = {c: SlotCounters(self._profile.slots(c), self._ncpus) for c in self._counters}
        on_cpu: list[set[str]] = [set() for _ in range(self._ncpus)]
        everywhere: set[str] = set()
        bound_on: list[set[str]] = [set() for _ in range(self._ncpus)]
        system: set[str] = set()
        tasks: dict[int, set[str]] = {}
        processes: set[str] = set()
        sessions: dict[str, set[str]] = {}
        for e in self._all():
            res, target = e.res, e.res.target
            if target.cpu is not None and target.cpu >= self._ncpus:
                problems.append(f"{res.id} is on cpu {target.cpu} of {self._ncpus}")
                continue
            if res.host != self._host:
                problems.append(f"{res.id} belongs to host {res.host}")
            if e.cls is not self._profile.slot_class(res.bp.type):
                problems.append(f"{res.id} is counted as {e.cls.value}")
            try:
                fresh[e.cls].add(target, +1)
            except LedgerCorrupt as exc:
                problems.append(f"{res.id}: {exc}")
            (everywhere if target.cpu is None else on_cpu[target.cpu]).add(res.id)
            if target.cpu_bound:
                (system if target.cpu is None else bound_on[target.cpu]).add(res.id)
            if target.task is not None:
                tasks.setdefault(target.task, set()).add(res.id)
            if target.scope is Scope.PROCESS:
                processes.add(res.id)
            if res.session is not None:
                sessions.setdefault(res.session, set()).add(res.id)
        for cls, counters in self._counters.items():
            problems += [f"{cls.value}: {d}" for d in counters.diff(fresh[cls])]
            for c in range(self._ncpus):
                if counters.used(c) > counters.slots:
                    problems.append(f"cpu {c} uses {counters.used(c)} of {counters.slots}")
        if on_cpu != [set(d) for d in self._on_cpu] or everywhere != set(self._everywhere):
            problems.append("per-cpu index differs from the reservations")
        if bound_on != [set(d) for d in self._bound_on] or system != set(self._system):
            problems.append("cpu-bound index differs from the reservations")

        if tasks != {k: set(v) for k, v in self._by_task.items()}:
            problems.append("per-task index differs from the reservations")
        if processes != set(self._processes):
            problems.append("per-process index differs from the reservations")
        if sessions != {k: set(v) for k, v in self._by_session.items()}:
            problems.append("per-session index differs from the reservations")
        if problems:
            raise LedgerCorrupt(
                f"ledger of host {self._host} is corrupt: " + "; ".join(problems[:8]),
                host=self._host,
            )

    # --- internals ---------------------------------------------------------------------

    def _admit(self, target: Target, bp_type: BpType, *, wide: bool = False) -> SlotClass:
        """Reserve-before-validate: raise NoFreeSlot if ``target`` is full somewhere.

        ``wide``: only the first CPU counts yet. register_wide_hw_breakpoint() creates
        one event per online CPU in order, each reserving then validating, so the first
        CPU answers an invalid request (EINVAL) before a later full one could (ENOSPC).
        """
        if target.cpu is not None:
            self._check_cpu(target.cpu)
        cls = self._profile.slot_class(bp_type)
        counters = self._counters[cls]
        if counters.slots == 0:
            raise UnsupportedSlotClass(
                f"{self._profile.name} has no {cls.value} debug registers for type {bp_type.value}",
                host=self._host,
                slot_class=cls.value,
            )
        full = counters.first_full(target)
        if full is not None and not (wide and full[0] > 0):
            raise self._no_space(target, cls, *full)
        return cls

    def _no_space(self, target: Target, cls: SlotClass, cpu: int, used: int) -> NoFreeSlot:
        """Name the cpu-bound holders and the one task whose breakpoints filled ``cpu``."""
        counters = self._counters[cls]
        task = counters.fullest_task(target, cpu)
        if target.cpu_bound:
            busiest = counters.max_task(cpu)  # 0: no task there, so none is named
            # The first task (in admission order) that holds the busiest count here.
            here = (e for e in self._applying(cpu) if e.cls is cls and not e.res.target.cpu_bound)
            tasks = (t for e in here for t in task_keys(e.res.target)) if busiest else iter(())
            task = next((t for t in tasks if counters.task_on(t, cpu) == busiest), None)
        mine = [] if task is None else self._counting_on(task)
        entries = _in_order(self._bound(cpu) + [e for e in mine if _applies(e, cpu)])
        holders = [e.res for e in entries if e.cls is cls]
        return NoFreeSlot(
            host=self._host,
            cpu=cpu,
            slot_class="shared" if self._profile.mixed else cls.value,
            used=used,
            slots=self._counters[cls].slots,
            holders=holders,
        )

    def _check_cpu(self, cpu: int) -> None:
        if not 0 <= cpu < self._ncpus:
            raise InvalidCpu(
                f"cpu {cpu} does not exist on host {self._host} ({self._ncpus} cpus)",
                host=self._host,
                cpu=cpu,
            )

    def _entry(self, res_id: str) -> _Entry:
        entry = self._entries.get(res_id)
        if entry is None:
            raise ReservationNotFound(
                f"no reservation {res_id} on host {self._host}",
                host=self._host,
                reservation_id=res_id,
            )
        return entry

    def _all(self) -> Iterable[_Entry]:
        if not self._ordered:
            self._entries = {e.res.id: e for e in _in_order(self._entries.values())}
            self._ordered = True
        return self._entries.values()

    def _counting_on(self, task: int) -> list[_Entry]:
        """The entries counted against thread (or counter key) ``task``: its own and the
        process-wide ones of its process."""
        if task < 0:  # a process's threads to come: only its process-wide breakpoints
            return [e for e in self._by_task.get(-task, {}).values() if e.res.id in self._processes]
        own = [e for e in self._by_task.get(task, {}).values() if counts_on(e.res.target, task)]
        if self._processes:
            own += [
                e
                for e in self._processes.values()
                if e.res.target.task != task and counts_on(e.res.target, task)
            ]
        return own

    def _bound(self, cpu: int) -> list[_Entry]:
        self._check_cpu(cpu)
        return [*self._system.values(), *self._bound_on[cpu].values()]

    def _applying(self, cpu: int) -> list[_Entry]:
        self._check_cpu(cpu)
        return _in_order(chain(self._on_cpu[cpu].values(), self._everywhere.values()))

    def _insert(self, entry: _Entry) -> None:
        res = entry.res
        target = res.target
        self._counters[entry.cls].add(target, +1)
        if entry.seq < self._high:
            self._ordered = False
        self._high = max(self._high, entry.seq)
        self._entries[res.id] = entry
        place = self._everywhere if target.cpu is None else self._on_cpu[target.cpu]
        place[res.id] = entry
        if target.task is None:
            (self._system if target.cpu is None else self._bound_on[target.cpu])[res.id] = entry
        if target.task is not None:
            self._by_task.setdefault(target.task, {})[res.id] = entry
        if target.scope is Scope.PROCESS:
            self._processes[res.id] = entry
        if res.session is not None:
            self._by_session.setdefault(res.session, {})[res.id] = entry

    def _remove(self, entry: _Entry) -> None:
        res = entry.res
        target = res.target
        self._counters[entry.cls].add(target, -1)
        del self._entries[res.id]
        place = self._everywhere if target.cpu is None else self._on_cpu[target.cpu]
        del place[res.id]
        if target.task is None:
            del (self._system if target.cpu is None else self._bound_on[target.cpu])[res.id]
        if target.task is not None:
            _discard(self._by_task, target.task, res.id)
        self._processes.pop(res.id, None)
        if res.session is not None:
            _discard(self._by_session, res.session, res.id)

    def _close(self, token: int) -> int:
        position = self._marks.get(token)
        if position is None:
            raise InvalidArgument(f"checkpoint {token} is unknown or already closed")
        for t in [t for t in self._marks if t >= token]:
            del self._marks[t]
        return position

    def _trim(self) -> None:
        keep_from = min(self._marks.values(), default=self._journal_base + len(self._journal))
        del self._journal[: keep_from - self._journal_base]
        self._journal_base = keep_from


def _applies(entry: _Entry, cpu: int) -> bool:
    where = entry.res.target.cpu
    return where is None or where == cpu


def _assignment(entry: _Entry) -> Assignment:
    return entry.assignment


def _discard(index: dict[_K, dict[str, _Entry]], key: _K, res_id: str) -> None:
    bucket = index[key]
    del bucket[res_id]
    if not bucket:
        del index[key]
