"""The simulated CPU backend: a register file placed and encoded by the core."""

from __future__ import annotations

from collections.abc import Sequence

from hwbp.arch import DEFAULT_FEATURES, HostFeatures
from hwbp.model import AccessType, Assignment
from hwbp.registers import HitRecord, RegisterFile, RegisterImage


class SimBackend:
    """One simulated x86 CPU: context switches and memory accesses that hit or miss."""

    name = "sim"
    polls = False  # hits come back in the answer to an access

    def __init__(
        self,
        cpu: int,
        *,
        refuse_addr: int | None = None,
        features: HostFeatures = DEFAULT_FEATURES,
    ) -> None:
        self.cpu = cpu
        self.regs = RegisterFile()
        self.features = features  # what the simulated host's CPU and kernel offer
        # Fault injection for tests and drills: refuse any reload that programs this address,
        # as a kernel that refused perf_event_open would.
        self.refuse_addr = refuse_addr

    def apply(self, assignments: Sequence[Assignment]) -> RegisterImage:
        if self.refuse_addr is not None:
            for a in assignments:
                if a.bp.addr == self.refuse_addr:
                    raise RefusedBySim(
                        f"cpu {self.cpu}: address {a.bp.addr:#x} of {a.reservation_id} is refused "
                        "by this agent's fault injection (--refuse-addr)"
                    )
        # RegisterFile keeps its invariants by construction (the unit tests validate it
        # after every step); re-checking here would cost a tenth of the agent's time.
        return self.regs.load(assignments)

    def apply_delta(self, upserts: Sequence[Assignment], removed: Sequence[str]) -> RegisterImage:
        """A delta reload, all or nothing, at the cost of what it names."""
        refused = [a for a in upserts if a.bp.addr == self.refuse_addr]
        if refused:
            raise RefusedBySim(
                f"cpu {self.cpu}: address {refused[0].bp.addr:#x} of "
                f"{refused[0].reservation_id} is refused by this agent's fault injection "
                "(--refuse-addr)"
            )
        return self.regs.update(upserts, removed)

    def switch(self, task: int | None) -> RegisterImage:
        return self.regs.switch(task)

    def access(self, addr: int, length: int, kind: AccessType) -> list[HitRecord]:
        self.regs.clear_dr6()
        return self.regs.access(addr, length, kind)

    def image(self) -> RegisterImage:
        return self.regs.image()

    def installed(self) -> tuple[Assignment, ...]:
        return self.regs.assignments

    def poll_hits(self) -> list[HitRecord]:
        return []

    def fds(self) -> list[int]:
        return []

    def watch_task(self, pid: int) -> None:
        """Simulated tasks have no process to watch."""

    def exited_tasks(self) -> list[int]:
        return []

    def close(self) -> None:
        """Nothing to release."""


class RefusedBySim(Exception):
    """A reload the simulated CPU refuses (fault injection)."""
