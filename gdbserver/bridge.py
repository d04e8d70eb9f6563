"""The gdbserver's side of the arbiter: one leased session, a reservation per register.

Everything the gdbserver reserves is held by one session whose lease the SDK keeps
alive; if the gdbserver dies (even by SIGKILL) the lease lapses and the arbiter
releases it all. Reservations are task-scoped (the inferior's pid on this host) and
tracer-applied: the agents account them but leave arming them to us.
"""

from __future__ import annotations

from hwbp.client import Client, CpuInfo, ReservationInfo
from hwbp.gdbserver.watchplan import Chunk
from hwbp.model import BpType, Scope


class ArbiterBridge:
    """A session on the arbiter, held for as long as the gdbserver runs."""

    def __init__(self, endpoint: str | None, host: str, owner: str, ttl: float) -> None:
        self.client = Client(endpoint)
        try:
            self.session = self.client.session(ttl=ttl, owner=owner)
        except BaseException:
            self.client.close()
            raise
        self.host = host
        self.owner = self.session.owner or owner
        self.task = 0  # the inferior's pid, known once it runs

    def reserve(self, chunk: Chunk) -> str:
        """A tracer-applied, task-scoped reservation for one register; its id. The SDK
        retries a transient failure under one idempotency key: never two slots."""
        handle = self.session.reserve(
            self.host,
            task=self.task,
            addr=chunk.addr,
            len=chunk.length,
            type=chunk.type,
            tracer_applied=True,
        )
        return handle.id

    def release(self, reservation_id: str) -> None:
        self.client.release(reservation_id, session_id=self.session.id)

    def close(self) -> None:
        """Release whatever the session still holds, then hang up."""
        try:
            self.session.close()
        finally:
            self.client.close()

    # --- monitor hwbp --------------------------------------------------------------------

    def slot_map(self) -> str:
        """This host's debug registers, CPU by CPU, and who holds each reservation."""
        cpus = self.client.inventory(self.host)
        held = self.client.list(self.host)
        lines = [
            f"hwbp: host {self.host}, arbiter {self.client.endpoint}; this gdbserver is "
            f"{self.owner} (session {self.session.id}, lease {self.session.ttl:g} s)",
            *_cpu_table(cpus),
            "reservations on this host:" if held else "no reservations on this host",
            *(_reservation_line(r, mine=r.session_id == self.session.id) for r in held),
        ]
        return "\n".join(lines) + "\n"


def _cpu_table(cpus: list[CpuInfo]) -> list[str]:
    rows: list[tuple[str, ...]] = [("CPU", "USED", "LINK", "DR0", "DR1", "DR2", "DR3", "HOLDERS")]
    for c in cpus:
        slots = tuple(s or "-" for s in c.reported.slots)
        holders = ", ".join(f"{h.reservation_id} ({h.owner or 'anonymous'})" for h in c.holders)
        rows.append((str(c.cpu), f"{c.used}/{c.slots}", c.link, *slots, holders or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    ]


def _reservation_line(r: ReservationInfo, *, mine: bool) -> str:
    where = {
        Scope.SYSTEM: "system",
        Scope.CPU: f"cpu {r.cpu}",
        Scope.TASK: f"task {r.task}",
        Scope.TASK_CPU: f"task {r.task} on cpu {r.cpu}",
        Scope.PROCESS: f"process {r.task}",
    }[r.scope]
    kind = {BpType.EXEC: "x", BpType.WRITE: "w", BpType.RW: "rw", BpType.READ: "r"}[r.type]
    return f"  {r.id}  {r.owner or 'anonymous'}  {where}  {kind} {r.addr:#x} len {r.len}" + (
        "  (this gdbserver)" if mine else ""
    )
