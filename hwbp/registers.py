"""A CPU's debug register file: placement of breakpoints into DR0-DR3 and DR7.

(Values below are the contract the agent and arbiter rely on; RegisterFile is added
beside them.)
"""

from __future__ import annotations

from dataclasses import dataclass

from hwbp.model import Breakpoint


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
