"""A CPU's debug register file: placement of breakpoints into DR0-DR3 and DR7.

(Values below are the contract the agent and arbiter rely on; RegisterFile is added
beside them.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

from hwbp import dr7
from hwbp.arch import X86_64, ArchProfile
from hwbp.dr7 import HBP_NUM
from hwbp.errors import (
    HwbpError,
    InvalidArgument,
    InvalidLength,
    LedgerCorrupt,
    RegisterFileFull,
)
from hwbp.model import AccessType, Assignment, BpType, Breakpoint

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RegisterImage:
    """What one CPU's debug registers hold."""

    dr: tuple[int, int, int, int]
    dr7: int
    dr6: int
    current_task: int | None
    slots: tuple[str | None, str | None, str | None, str | None]  # reservation per DRi


@dataclass(frozen=True, slots=True)
class HitRecord:
    """One breakpoint that fired on a CPU."""

    reservation_id: str
    index: int  # physical register DRi
    bp: Breakpoint
    task: int | None  # the assignment's task; None for a CPU-bound breakpoint
    dr6: int  # DR6 after the hit (bit i set for DRi)
    access_addr: int = 0
    ip: int = 0
    exception: int = 0  # hits of one access (one debug exception) share it; 0: unknown


def _covers(bp: Breakpoint, addr: int, length: int, kind: AccessType) -> bool:
    """Does an access of ``kind`` to [addr, addr+length) trigger ``bp``?

    A write triggers W and RW watchpoints, a read only RW ones (x86 has no read-only
    watchpoint), and an instruction fetch only an execute breakpoint at its first byte
    (execute uses LEN 00: one byte, whatever the generic length says).
    """
    if kind is AccessType.EXEC:
        return bp.type is BpType.EXEC and addr == bp.addr
    if kind is AccessType.WRITE and bp.type not in (BpType.WRITE, BpType.RW):
        return False
    if kind is AccessType.READ and bp.type is not BpType.RW:
        return False
    return addr < bp.addr + bp.length and bp.addr < addr + length


class RegisterFile:
    """One x86 CPU's DR0-DR3, DR6 and DR7: where each breakpoint sits, pure and in memory.

    The agent simulates a CPU with it and the arbiter computes the image it expects an
    agent to report. Placement follows arch_install_hw_breakpoint (first free register)
    and is stable: a breakpoint that stays keeps its register. Unlike the kernel, which
    ORs and masks DR7 incrementally, DR7 is recomputed from the installed set after every
    change, so a context switch after the CPU-bound/task balance changed cannot leave a
    stale slot enabled (the point Alan Stern made in March 2009).
    """

    def __init__(self, profile: ArchProfile = X86_64) -> None:
        if not profile.mixed or not 1 <= profile.registers <= HBP_NUM:
            raise InvalidArgument(
                f"a register file models x86 DR0-DR3 (one shared pool of 1..{HBP_NUM}), "
                f"not profile {profile.name}",
                profile=profile.name,
            )
        self._profile = profile
        self._all: dict[str, Assignment] = {}  # every assignment, in the order loaded
        # The same by task (None: CPU-bound): placement reads only the CPU-bound ones and
        # the running task's, so a change costs what it names, not what the CPU holds.
        self._homes: dict[int | None, dict[str, Assignment]] = {}
        self._current: int | None = None
        self._slots: tuple[Assignment | None, ...] = (None,) * HBP_NUM
        self._dr: tuple[int, int, int, int] = (0, 0, 0, 0)
        self._dr7 = dr7.encode(())
        self._dr6 = dr7.DR6_RESERVED
        self._exceptions = 0  # debug exceptions raised so far: one per access that hits

    # --- reading -----------------------------------------------------------------------

    @property
    def profile(self) -> ArchProfile:
        return self._profile

    @property
    def current_task(self) -> int | None:
        """The task running on this CPU; None when only CPU-bound breakpoints apply."""
        return self._current

    @property
    def assignments(self) -> tuple[Assignment, ...]:
        """Every breakpoint that applies to this CPU, installed or not, as last loaded."""
        return tuple(self._all.values())

    @property
    def installed(self) -> tuple[Assignment | None, ...]:
        """What DR0-DR3 hold, by physical register (None: free)."""
        return self._slots

    def image(self) -> RegisterImage:
        return RegisterImage(
            dr=self._dr,
            dr7=self._dr7,
            dr6=self._dr6,
            current_task=self._current,
            slots=_four(None if a is None else a.reservation_id for a in self._slots),
        )

    # --- changing ----------------------------------------------------------------------

    def load(self, assignments: Iterable[Assignment]) -> RegisterImage:
        """Replace every breakpoint that applies to this CPU; all or nothing."""
        new = tuple(assignments)
        every: dict[str, Assignment] = {}
        homes: dict[int | None, dict[str, Assignment]] = {}
        for a in new:
            if a.reservation_id in every:
                raise InvalidArgument(
                    f"reservation {a.reservation_id} is assigned twice to one CPU",
                    reservation=a.reservation_id,
                )
            every[a.reservation_id] = a
            homes.setdefault(a.task, {})[a.reservation_id] = a
        task = self._current
        self._commit(self._place(_wanted(homes, task), task), task)
        self._all = every
        self._homes = homes
        return self.image()

    def update(self, upserts: Iterable[Assignment], removed: Iterable[str]) -> RegisterImage:
        """Apply a delta, all or nothing: drop ``removed`` (one not held is no error),
        then add or replace ``upserts``. Costs what the delta names plus the CPU-bound
        and the running task's breakpoints (what placement reads), whatever else the CPU
        holds."""
        changes: dict[str, Assignment | None] = dict.fromkeys(removed)
        for a in upserts:
            if a.reservation_id in changes:
                raise InvalidArgument(
                    f"reservation {a.reservation_id} is named twice in one update",
                    reservation=a.reservation_id,
                )
            changes[a.reservation_id] = a
        task = self._current
        placed = (None, task)  # the homes placement reads: CPU-bound, the running task's
        if any(
            _touches(self._all.get(rid), placed) or _touches(new, placed)
            for rid, new in changes.items()
        ):
            trial = {key: dict(self._homes.get(key, {})) for key in placed}
            for rid, new in changes.items():
                _move(trial, rid, self._all.get(rid), new)
            self._commit(self._place(_wanted(trial, task), task), task)  # raises: no change
        for rid, new in changes.items():
            _move(self._homes, rid, self._all.get(rid), new, create=True)
            if new is None:
                self._all.pop(rid, None)
            else:
                self._all[rid] = new
        return self.image()

    def switch(self, task: int | None) -> RegisterImage:
        """Context switch: the outgoing task's breakpoints leave, the incoming's go in.

        CPU-bound breakpoints keep their registers; the incoming task's take the lowest
        free ones, wherever the outgoing task's used to be. All or nothing.
        """
        self._commit(self._place(_wanted(self._homes, task), task), task)
        return self.image()

    def access(self, addr: int, length: int, kind: AccessType) -> list[HitRecord]:
        """An access by the current task: which installed breakpoints fire.

        Each hit sets DR6 bit i of its physical register. Like the hardware, B0-B3 stay
        set until cleared (the kernel's #DB handler does that: call ``clear_dr6``); each
        record carries DR6 as it is after this access. One access that hits is one debug
        exception: its records share an ``exception`` number.
        """
        if length < 1:
            raise InvalidLength(f"an access covers at least one byte, not {length}")
        fired = [
            (index, a)
            for index, a in enumerate(self._slots)
            if a is not None and _covers(a.bp, addr, length, kind)
        ]
        for index, _ in fired:
            self._dr6 |= 1 << index
        if fired:
            self._exceptions += 1
        return [
            HitRecord(
                reservation_id=a.reservation_id,
                index=index,
                bp=a.bp,
                task=a.task,
                dr6=self._dr6,
                access_addr=addr,
                exception=self._exceptions,
            )
            for index, a in fired
        ]

    def clear_dr6(self) -> None:
        self._dr6 = dr7.DR6_RESERVED

    def _place(self, wanted: list[Assignment], task: int | None) -> _Placed:
        """Where ``wanted`` goes, keeping what stays in its register; changes nothing."""
        registers = self._profile.registers
        if len(wanted) > registers:
            raise RegisterFileFull(
                f"{len(wanted)} breakpoints must be installed but the CPU has "
                f"{registers} debug registers",
                needed=len(wanted),
                registers=registers,
                task=task,
            )
        by_id = {a.reservation_id: a for a in wanted}
        slots: list[Assignment | None] = [None] * HBP_NUM
        for index, old in enumerate(self._slots):
            if old is not None and old.reservation_id in by_id:
                slots[index] = by_id.pop(old.reservation_id)
        free = iter([i for i in range(registers) if slots[i] is None])
        for a in wanted:
            if a.reservation_id in by_id:
                slots[next(free)] = a
        # Compute everything before changing anything: encode may refuse a breakpoint.
        value = dr7.encode([None if a is None else a.bp for a in slots])
        return tuple(slots), value

    def _commit(self, placed: _Placed, task: int | None) -> None:
        slots, value = placed
        self._dr = _four(0 if a is None else a.bp.addr for a in slots)
        self._dr7 = value
        self._slots = slots
        self._current = task

    # --- invariants --------------------------------------------------------------------

    def validate(self) -> None:
        """Check every invariant; raise LedgerCorrupt naming the first one broken."""
        registers = self._profile.registers
        homes: dict[int | None, dict[str, Assignment]] = {}
        for held in self._all.values():
            homes.setdefault(held.task, {})[held.reservation_id] = held
        if homes != self._homes:
            _corrupt("the per-task index differs from the assignments")
        wanted = {a.reservation_id: a for a in _wanted(homes, self._current)}
        seen: dict[str, int] = {}
        for index, a in enumerate(self._slots):
            where = f"DR{index}"
            if a is None:
                if self._dr[index] != 0:
                    _corrupt(f"{where} is free but holds {self._dr[index]:#x}")
                continue
            rid = a.reservation_id
            if index >= registers:
                _corrupt(f"{where} holds {rid} but the CPU has {registers} registers")
            if rid in seen:
                _corrupt(f"{rid} is installed in both DR{seen[rid]} and {where}")
            seen[rid] = index
            if not a.bp.enabled:
                _corrupt(f"{where} holds {rid}, which is disabled")
            if a.task is not None and a.task != self._current:
                _corrupt(f"{where} holds {rid} of task {a.task}; task {self._current} runs")
            if wanted.get(rid) != a:
                _corrupt(f"{where} holds {rid}, which is not among this CPU's assignments")
            if self._dr[index] != a.bp.addr:
                _corrupt(f"{where} holds {self._dr[index]:#x}, {rid} watches {a.bp.addr:#x}")
        missing = sorted(set(wanted) - set(seen))
        if missing:
            _corrupt(f"enabled breakpoints not installed: {', '.join(missing)}")
        self._validate_dr7()
        trap = self._dr6 & dr7.DR_TRAP_BITS
        if self._dr6 & ~dr7.DR_TRAP_BITS != dr7.DR6_RESERVED or trap >> registers:
            _corrupt(f"DR6 {self._dr6:#x} has bits no breakpoint of this CPU sets")

    def _validate_dr7(self) -> None:
        try:
            decoded = dr7.decode(self._dr7)
        except HwbpError as err:
            _corrupt(f"DR7 {self._dr7:#x} does not decode: {err}")
        for index, (a, got) in enumerate(zip(self._slots, decoded, strict=True)):
            want = (
                None
                if a is None
                else dr7.DecodedSlot(index, False, True, dr7.slot_length(a.bp), a.bp.type)
            )
            if got != want:
                _corrupt(f"DR7 {self._dr7:#x} slot {index} decodes to {got}, installed is {want}")
        expected = dr7.encode([None if a is None else a.bp for a in self._slots])
        if self._dr7 != expected:
            _corrupt(f"DR7 is {self._dr7:#x}, the installed set encodes to {expected:#x}")


_Placed = tuple[tuple[Assignment | None, ...], int]  # (DR0-DR3 holders, DR7)


def _wanted(homes: dict[int | None, dict[str, Assignment]], task: int | None) -> list[Assignment]:
    """What must be installed: enabled CPU-bound ones, then the task's, in given order."""
    cpu_bound = [a for a in homes.get(None, {}).values() if a.bp.enabled]
    if task is None:
        return cpu_bound
    return cpu_bound + [a for a in homes.get(task, {}).values() if a.bp.enabled]


def _touches(a: Assignment | None, homes: tuple[int | None, ...]) -> bool:
    return a is not None and a.task in homes


def _move(
    homes: dict[int | None, dict[str, Assignment]],
    rid: str,
    old: Assignment | None,
    new: Assignment | None,
    *,
    create: bool = False,
) -> None:
    """Update the by-task index for ``rid`` going from ``old`` to ``new`` (None: absent).
    A replacement keeps its place; ``create``: add (and drop) task entries as needed,
    else only the entries ``homes`` already has are kept up to date."""
    if old is not None and (new is None or old.task != new.task):
        home = homes.get(old.task)
        if home is not None:
            home.pop(rid, None)
            if create and not home:
                del homes[old.task]
    if new is not None:
        home = homes.get(new.task)
        if home is None and create:
            home = homes[new.task] = {}
        if home is not None:
            home[rid] = new


def _four(values: Iterable[_T]) -> tuple[_T, _T, _T, _T]:
    a, b, c, d = values
    return (a, b, c, d)


def _corrupt(message: str) -> NoReturn:
    raise LedgerCorrupt(f"register file: {message}")
