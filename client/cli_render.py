"""How hwbpctl shows things: JSON for programs (numbers stay integers), tables for people."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from enum import Enum
from typing import Any, TextIO

from client.values import (
    AccessResult,
    CpuInfo,
    EventInfo,
    EventKind,
    HitInfo,
    ReservationInfo,
    TrapInfo,
)
from hwbp.registers import RegisterImage


def jsonable(value: Any) -> Any:
    """Dataclasses to objects, enums to their spelling, tuples to lists; ints stay ints."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def cpu_json(c: CpuInfo) -> dict[str, Any]:
    """The inventory row, flattened: reported registers as dr/dr7, expected beside them."""
    return {
        "host": c.host,
        "cpu": c.cpu,
        "online": c.online,
        "backend": c.backend,
        "generation": c.generation,
        "acked_generation": c.acked_generation,
        "current_task": c.current_task,
        "dr": list(c.reported.dr),
        "dr7": c.reported.dr7,
        "dr6": c.reported.dr6,
        "slot_reservations": list(c.reported.slots),
        "expected_dr": list(c.expected.dr),
        "expected_dr7": c.expected.dr7,
        "mismatch": c.mismatch,
        "used": c.used,
        "slots": c.slots,
        "holders": jsonable(c.holders),
        "detail": c.detail,
    }


def access_json(r: AccessResult) -> dict[str, Any]:
    return {
        "hit": r.hit,
        "reservation_id": r.reservation_id,
        "register": r.register,
        "dr6": r.dr6,
        "hits": jsonable(r.hits),
    }


def dump(doc: Any, out: TextIO) -> None:
    """Exactly one JSON document per line, flushed so a reader sees it at once."""
    out.write(json.dumps(doc) + "\n")
    out.flush()


# --- for people -----------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *([_cell(v) for v in row] for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def hx(value: int | None) -> str:
    return "-" if value is None else f"{value:#x}"


def reservations_table(items: Sequence[ReservationInfo]) -> str:
    if not items:
        return "no reservations"
    headers = (
        "ID",
        "HOST",
        "SCOPE",
        "CPU",
        "TASK",
        "ADDR",
        "LEN",
        "TYPE",
        "OWNER",
        "ENABLED",
        "GEN",
        "SESSION",
    )
    rows = (
        (
            r.id,
            r.host,
            r.scope.value,
            r.cpu,
            r.task,
            hx(r.addr),
            r.len,
            r.type.value,
            r.owner or "-",
            r.enabled,
            r.generation,
            r.session_id or "-",
        )
        for r in items
    )
    return table(headers, rows)


def cpus_table(items: Sequence[CpuInfo]) -> str:
    if not items:
        return "no CPUs"
    headers = (
        "HOST",
        "CPU",
        "ONLINE",
        "TASK",
        "USED",
        "GEN",
        "ACKED",
        "DR0",
        "DR1",
        "DR2",
        "DR3",
        "DR7",
        "MISMATCH",
        "HOLDERS",
    )
    rows = (
        (
            c.host,
            c.cpu,
            c.online,
            c.current_task,
            f"{c.used}/{c.slots}",
            c.generation,
            c.acked_generation,
            *(hx(d) for d in c.reported.dr),
            hx(c.reported.dr7),
            "MISMATCH" if c.mismatch else "",
            _holders(c) or "-",
        )
        for c in items
    )
    return table(headers, rows)


def _holders(c: CpuInfo) -> str:
    return ", ".join(f"{h.reservation_id}({h.owner or 'anonymous'})" for h in c.holders)


def registers_line(image: RegisterImage) -> str:
    dr = " ".join(f"DR{i}={hx(v)}" for i, v in enumerate(image.dr))
    task = "idle" if image.current_task is None else f"task {image.current_task}"
    return f"{task}: {dr} DR7={hx(image.dr7)} DR6={hx(image.dr6)}"


def access_line(r: AccessResult) -> str:
    if not r.hit:
        return f"no hit (DR6={hx(r.dr6)})"
    return "\n".join(hit_line(h) for h in r.hits)


def hit_line(h: HitInfo) -> str:
    task = "-" if h.task is None else h.task
    return (
        f"hit {h.reservation_id} via DR{h.register} on {h.host} cpu {h.cpu} task {task}: "
        f"addr {hx(h.addr)} accessed {hx(h.access_addr)} DR6={hx(h.dr6)}"
    )


def event_line(e: EventInfo) -> str:
    where = e.host + ("" if e.cpu is None else f" cpu {e.cpu}")
    if e.kind is EventKind.HIT and e.hit is not None:
        return f"#{e.seq} {hit_line(e.hit)}"
    parts = [f"#{e.seq}", e.kind.value, where]
    if e.task is not None:
        parts.append(f"task {e.task}")
    if e.reservation is not None:
        r = e.reservation
        parts.append(
            f"{r.id} ({r.owner or 'anonymous'}, {r.scope.value} {hx(r.addr)} {r.type.value})"
        )
    if e.generation:
        parts.append(f"gen {e.generation}")
    if e.reason:
        parts.append(f"- {e.reason}")
    return " ".join(parts)


def trap_line(t: TrapInfo) -> str:
    return (
        f"trap {t.host} task {t.task} DR{t.ptrace_index} addr {hx(t.addr)} cpu {t.cpu} "
        f"DR6={hx(t.dr6)} ip {hx(t.ip)}"
    )
