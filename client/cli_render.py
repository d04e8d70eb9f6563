"""How hwbpctl shows things: JSON for programs (numbers stay integers), tables for people."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, TextIO

from hwbp.client.errors import NoFreeSlot
from hwbp.client.hit_ip import ip_words
from hwbp.client.values import (
    AccessResult,
    Change,
    CpuInfo,
    EventInfo,
    EventKind,
    HitInfo,
    ReservationInfo,
    SessionSummary,
    TrapInfo,
)
from hwbp.model import Scope
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
        "link": c.link,
        "link_reason": c.link_reason,
        "pending": c.pending,
    }


def change_json(c: Change) -> dict[str, Any]:
    """The reservation's fields, and where the change is applied or still pending."""
    doc: dict[str, Any] = jsonable(c.reservation)
    doc["applied_cpus"] = list(c.applied_cpus)
    doc["pending_cpus"] = list(c.pending_cpus)
    return doc


_SUBJECT = {"reserve": "{id}", "release": "the release of {id}", "modify": "the change to {id}"}


def pending_warning(verb: str, c: Change) -> str | None:
    """One stderr line when a committed change has not reached every CPU yet, else None.

    The change stands (the ledger has it); the registers of those CPUs catch up when
    their agent resyncs, so a person must not take "ok" to mean "armed everywhere".
    """
    if not c.pending_cpus:
        return None
    subject = _SUBJECT.get(verb, "{id}").format(id=c.reservation.id)
    many = len(c.pending_cpus) > 1
    cpus = ", ".join(str(n) for n in c.pending_cpus)
    where = f"{c.reservation.host} {'cpus' if many else 'cpu'} {cpus}"
    agents, resync = ("agents", "agents resync") if many else ("agent", "agent resyncs")
    return (
        f"hwbpctl: warning: {subject} is committed but pending on {where} "
        f"({agents} offline or fenced): it is applied when the {resync}"
    )


def access_json(r: AccessResult) -> dict[str, Any]:
    return {
        "hit": r.hit,
        "reservation_id": r.reservation_id,
        "register": r.register,
        "dr6": r.dr6,
        "hits": jsonable(r.hits),
    }


def no_free_slot_json(e: NoFreeSlot) -> dict[str, Any]:
    """A refused reservation for --json (printed on stdout; exit 3 says it failed)."""
    return {
        "error": e.reason,
        "message": e.message,
        "host": e.host,
        "cpu": e.cpu,
        "slot_class": e.slot_class,
        "used": e.used,
        "slots": e.slots,
        "holders": jsonable(e.holders),
    }


def no_free_slot_line(e: NoFreeSlot) -> str:
    """The one line a person reads: the CPU, and each holder with its session, age and
    lease as far as the arbiter told them."""
    pool = "" if e.slot_class in ("shared", "") else f"{e.slot_class} "
    held = ", ".join(str(h) for h in e.holders) or "nobody (all slots free)"
    return (
        f"no free {pool}debug register on host {e.host} cpu {e.cpu}: "
        f"{e.used} of {e.slots} in use, held by {held}"
    )


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


def session_json(s: SessionSummary, now: datetime) -> dict[str, Any]:
    """One session for --json; ``expires_at`` is UTC, from this machine's clock."""
    doc: dict[str, Any] = jsonable(s)
    doc["expires_at"] = _expiry(s, now).isoformat(timespec="seconds").replace("+00:00", "Z")
    return doc


def _expiry(s: SessionSummary, now: datetime) -> datetime:
    return now + timedelta(seconds=s.lease_left)


def sessions_table(items: Sequence[SessionSummary], now: datetime, *, wide: bool = False) -> str:
    """Open sessions; ``wide`` adds the hosts each holds something on."""
    if not items:
        return "no sessions"
    headers = ["SESSION", "OWNER", "TTL", "EXPIRES", "RESERVATIONS", "STATE"]
    if wide:
        headers.append("HOSTS")
    rows = []
    for s in items:
        at = _expiry(s, now).strftime("%H:%M:%SZ")
        row: list[object] = [
            s.session_id,
            s.owner or "-",
            f"{s.ttl:g}s",
            f"in {s.lease_left:.1f}s ({at})",
            s.reservations,
            "ending" if s.ending else "open",
        ]
        if wide:
            row.append(",".join(s.hosts) or "-")
        rows.append(row)
    return table(headers, rows)


def cpus_table(items: Sequence[CpuInfo], *, wide: bool = False) -> str:
    """The inventory; ``wide`` adds why a link is down, pending changes and the backend."""
    if not items:
        return "no CPUs"
    headers = [
        "HOST",
        "CPU",
        "ONLINE",
        "LINK",
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
    ]
    if wide:
        headers += ["PENDING", "BACKEND", "REASON"]
    rows = []
    for c in items:
        row: list[object] = [
            c.host,
            c.cpu,
            c.online,
            c.link or "-",
            c.current_task,
            f"{c.used}/{c.slots}",
            c.generation,
            c.acked_generation,
            *(hx(d) for d in c.reported.dr),
            hx(c.reported.dr7),
            "MISMATCH" if c.mismatch else "",
            _holders(c) or "-",
        ]
        if wide:
            row += [c.pending, c.backend or "-", c.link_reason or "-"]
        rows.append(row)
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
    thread = "" if h.tid is None else f" thread {h.tid}"
    line = (
        f"hit {h.reservation_id} via DR{h.register} on {h.host} cpu {h.cpu} task {task}"
        f"{thread}: addr {hx(h.addr)} accessed {hx(h.access_addr)} DR6={hx(h.dr6)}"
    )
    if h.ip:  # x86: the instruction after the access
        where = ip_words(h)
        line += f" ip {hx(h.ip)}" + ("" if where is None else f" {where}")
    return line


# Events the change log numbers: their "#seq" is what `watch --since` resumes after.
CHANGE_KINDS = frozenset(
    {
        EventKind.RESERVED,
        EventKind.MODIFIED,
        EventKind.RELEASED,
        EventKind.LEASE_EXPIRED,
        EventKind.TASK_EXITED,
    }
)


def event_line(e: EventInfo) -> str:
    """One watch event. Change events start with their ``#seq``; others (hits, reloads,
    agents) are live only and carry none. CPUs are decimal, addresses hex."""
    where = e.host + ("" if e.cpu is None else f" cpu {e.cpu}")
    if e.kind is EventKind.SUBSCRIBED:
        after = f" after seq {e.seq}" if e.seq else ""
        return f"subscribed: watching {f'host {e.host}' if e.host else 'every host'}{after}"
    head = f"#{e.seq} " if e.kind in CHANGE_KINDS else ""
    if e.kind is EventKind.HIT and e.hit is not None:
        return head + hit_line(e.hit)
    parts = [e.kind.value, where]
    if e.task is not None:
        parts.append(f"task {e.task}")
    if e.reservation is not None:
        r = e.reservation
        whose = _whose(e.owner or r.owner, e.session or r.session_id)
        parts.append(f"{r.id} ({whose}, {_target(r)} {hx(r.addr)} len {r.len} {r.type.value})")
    elif e.kind in CHANGE_KINDS and (e.session or e.owner or e.reservation_ids):
        if e.session or e.owner:
            parts.append(_whose(e.owner, e.session))
        parts.append(f"released {', '.join(e.reservation_ids) or 'none'}")
    if e.generation:
        parts.append(f"gen {e.generation}")
    if e.reason:
        parts.append(f"- {e.reason}")
    return head + " ".join(parts)


def _whose(owner: str, session: str) -> str:
    return f"owner {owner or 'anonymous'}" + (f" session {session}" if session else "")


def _target(r: ReservationInfo) -> str:
    """A reservation's target in words; a CPU is a decimal number."""
    if r.scope is Scope.CPU:
        return f"cpu {r.cpu}"
    if r.scope is Scope.TASK:
        return f"task {r.task}"
    if r.scope is Scope.TASK_CPU:
        return f"task {r.task} cpu {r.cpu}"
    return str(r.scope.value)


def trap_line(t: TrapInfo) -> str:
    return (
        f"trap {t.host} task {t.task} DR{t.ptrace_index} addr {hx(t.addr)} cpu {t.cpu} "
        f"DR6={hx(t.dr6)} ip {hx(t.ip)}"
    )
