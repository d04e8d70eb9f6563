"""``hwbpctl top``: hosts x CPUs x DR0-DR3 on one screen, refreshed until q or Ctrl-C.

When two tools fight over a CPU's debug registers an admin needs, at a glance, which
reservation sits in which register, whether the agent has caught up with the arbiter
(lag) and whether what the CPU reports is what the arbiter expects. ``frame`` and
``frame_json`` are pure so they can be tested from hand-built ``CpuInfo`` values; ``run``
is the only part that talks to a terminal.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from itertools import groupby
from typing import TextIO

from hwbp.client import terminal
from hwbp.client.cli_render import dump, hx, table
from hwbp.client.errors import Unavailable
from hwbp.client.values import CpuInfo, HolderInfo

# Home + clear: plain ANSI, understood by every terminal, so no curses dependency.
CLEAR = "\x1b[H\x1b[2J"
REGISTERS = 4  # DR0-DR3
HEADERS = (
    "CPU",
    "STATE",
    "BACKEND",
    "GEN",
    "ACKED",
    "LAG",
    "TASK",
    "USED",
    *(f"DR{i}" for i in range(REGISTERS)),
    "DR7",
    "MISMATCH",
)


def by_host(cpus: Iterable[CpuInfo]) -> list[tuple[str, list[CpuInfo]]]:
    """Hosts in name order, CPUs in number order: rows must not jump between refreshes."""
    ordered = sorted(cpus, key=lambda c: (c.host, c.cpu))
    return [(host, list(group)) for host, group in groupby(ordered, key=lambda c: c.host)]


def lag(c: CpuInfo) -> int:
    """Generations sent but not yet acknowledged: non-zero means the agent is behind."""
    return max(0, c.generation - c.acked_generation)


def slot_holders(c: CpuInfo) -> list[tuple[str, HolderInfo | None] | None]:
    """Per DRi of the *reported* image: (reservation id, its holder) or None when free.

    The holder is None when the CPU reports an id the arbiter does not list as holding
    this CPU: exactly the stale or foreign slot an admin is looking for.
    """
    known = {h.reservation_id: h for h in c.holders}
    return [None if rid is None else (rid, known.get(rid)) for rid in c.reported.slots]


def mismatched_registers(c: CpuInfo) -> list[str]:
    """Which registers differ between reported and expected, to say where, not just if."""
    rep, exp = c.reported, c.expected
    names = [
        f"DR{i}" for i in range(REGISTERS) if (rep.dr[i], rep.slots[i]) != (exp.dr[i], exp.slots[i])
    ]
    if rep.dr7 != exp.dr7:
        names.append("DR7")
    return names


def _who(slot: tuple[str, HolderInfo | None] | None) -> str:
    if slot is None:
        return "-"
    rid, h = slot
    if h is None:
        return f"{rid}(?)"
    scope = h.scope.value if h.task is None else f"{h.scope.value}:{h.task}"
    return f"{rid}({h.owner or 'anonymous'},{scope})"


def _mismatch_cell(c: CpuInfo) -> str:
    if not c.mismatch:
        return "-"
    where = mismatched_registers(c)
    return "MISMATCH " + ",".join(where) if where else "MISMATCH"


def state(c: CpuInfo) -> str:
    """The agent link as the arbiter names it; anything but live shouts, to be seen."""
    link = c.link or ("live" if c.online else "offline")
    return link if link == "live" else link.upper()


def _row(c: CpuInfo) -> tuple[object, ...]:
    return (
        c.cpu,
        state(c),
        c.backend or "-",
        c.generation,
        c.acked_generation,
        lag(c),
        c.current_task,
        f"{c.used}/{c.slots}",
        *(_who(s) for s in slot_holders(c)),
        hx(c.reported.dr7),
        _mismatch_cell(c),
    )


def _summary(host: str, cpus: Sequence[CpuInfo]) -> str:
    online = sum(c.online for c in cpus)
    mismatched = sum(c.mismatch for c in cpus)
    worst = max((lag(c) for c in cpus), default=0)
    noun = "CPU" if len(cpus) == 1 else "CPUs"
    return f"{host}: {len(cpus)} {noun}, {online} online, {mismatched} mismatched, max lag {worst}"


def frame(cpus: Iterable[CpuInfo], width: int | None = None) -> str:
    """One screen: per host a summary line, a CPU table, then any per-CPU detail notes.

    ``width``: the terminal's columns. A line never wraps: the least telling columns go
    first (``DROP_FIRST``), then holder cells are elided, then lines are cut.
    """
    blocks = []
    for host, group in by_host(cpus):
        headers, rows = fit(HEADERS, [_row(c) for c in group], width)
        lines = [_summary(host, group), table(headers, rows)]
        lines += [f"  cpu {c.cpu}: {c.detail}" for c in group if c.detail]
        lines += [f"  cpu {c.cpu}: {c.link}: {c.link_reason}" for c in group if c.link_reason]
        blocks.append("\n".join(lines))
    text = "\n\n".join(blocks) if blocks else "no CPUs"
    return text if width is None else cut(text, width)


# Dropped in this order when a table is wider than the terminal; CPU, STATE, USED and
# DR0-DR3 (who holds what) stay.
DROP_FIRST = ("BACKEND", "ACKED", "GEN", "DR7", "TASK", "LAG", "MISMATCH")
MIN_CELL = 6  # a holder cell is never elided below this: "r12(~" still names the id
ELIDED = "~"


def elide(text: str, most: int) -> str:
    """``text`` in at most ``most`` characters, marking what was cut."""
    return text if len(text) <= most else text[: max(0, most - 1)] + ELIDED


def cut(text: str, width: int) -> str:
    """Every line of ``text`` in at most ``width`` characters."""
    return "\n".join(elide(line, width) for line in text.split("\n"))


def _table_width(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> int:
    return max(len(line) for line in table(headers, rows).split("\n"))


def fit(
    headers: Sequence[str], rows: Sequence[Sequence[object]], width: int | None
) -> tuple[list[str], list[list[object]]]:
    """The columns and cells of a table that fits in ``width`` (all of them if None)."""
    keep = list(range(len(headers)))
    cells = [list(r) for r in rows]

    def select(cols: list[int]) -> tuple[list[str], list[list[object]]]:
        return [headers[i] for i in cols], [[r[i] for i in cols] for r in cells]

    if width is None:
        return select(keep)
    for name in DROP_FIRST:
        if _table_width(*select(keep)) <= width:
            break
        keep.remove(headers.index(name))
    registers = [i for i, h in enumerate(headers) if h.startswith("DR") and h != "DR7"]
    longest = max((len(str(r[i])) for r in cells for i in registers), default=0)
    most = longest
    while most > MIN_CELL and _table_width(*select(keep)) > width:
        most -= 1
        for r in cells:
            for i in registers:
                r[i] = elide(str(r[i]), most)
    return select(keep)


def _register_json(
    c: CpuInfo, i: int, slot: tuple[str, HolderInfo | None] | None
) -> dict[str, object]:
    h = slot[1] if slot is not None else None
    return {
        "index": i,
        "addr": c.reported.dr[i],
        "reservation_id": slot[0] if slot is not None else None,
        "owner": h.owner if h is not None else None,
        "scope": h.scope.value if h is not None else None,
        "task": h.task if h is not None else None,
    }


def _cpu_json(c: CpuInfo) -> dict[str, object]:
    return {
        "cpu": c.cpu,
        "online": c.online,
        "link": c.link,
        "link_reason": c.link_reason,
        "pending": c.pending,
        "backend": c.backend,
        "generation": c.generation,
        "acked_generation": c.acked_generation,
        "lag": lag(c),
        "current_task": c.current_task,
        "used": c.used,
        "slots": c.slots,
        "registers": [_register_json(c, i, s) for i, s in enumerate(slot_holders(c))],
        "dr7": c.reported.dr7,
        "expected_dr7": c.expected.dr7,
        "mismatch": c.mismatch,
        "mismatched_registers": mismatched_registers(c),
        "detail": c.detail,
    }


def frame_json(cpus: Iterable[CpuInfo]) -> list[dict[str, object]]:
    """The same frame for programs: a list of hosts, each with its CPUs; ints stay ints."""
    return [{"host": host, "cpus": [_cpu_json(c) for c in group]} for host, group in by_host(cpus)]


def run(
    fetch: Callable[[], Sequence[CpuInfo]],
    out: TextIO,
    *,
    interval: float,
    once: bool,
    as_json: bool,
    title: str = "hwbpctl top",
    sleep: Callable[[float], None] = time.sleep,
    keys: TextIO | None = None,
) -> None:
    """Draw frames until ``q`` is typed on ``keys`` (a terminal) or Ctrl-C, which are how
    one leaves top, so it ends quietly.

    Only a terminal gets the clear-screen redraw, cut to its width; a pipe or file gets
    frames one after another (blank-line separated, or one JSON document per line),
    whole, so nothing is garbled or lost.
    """
    redraw = not once and out.isatty()
    try:
        with terminal.keys(keys if redraw else None, sleep) as wait:
            _loop(fetch, out, interval, once, as_json, title, redraw, wait)
    except KeyboardInterrupt:
        pass
    if redraw:
        out.write("\n")  # leave the shell prompt below the last frame, not inside it
        out.flush()


def _loop(
    fetch: Callable[[], Sequence[CpuInfo]],
    out: TextIO,
    interval: float,
    once: bool,
    as_json: bool,
    title: str,
    redraw: bool,
    wait: terminal.Wait,
) -> None:
    drawn = False
    while True:
        width = None if as_json else terminal.width(out)
        try:
            cpus = fetch()
        except Unavailable as err:
            if not (redraw and drawn):
                raise  # nothing to keep showing: say so once and exit 5
            # The view an admin keeps open: survive an arbiter restart.
            line = f"{title}  arbiter unreachable ({err}); retrying"
            out.write(f"{CLEAR}{line if width is None else cut(line, width)}\n")
            out.flush()
            if wait(interval):
                return
            continue
        drawn = True
        if as_json:
            dump(frame_json(cpus), out)
        elif redraw:
            stamp = time.strftime("%H:%M:%S")
            head = f"{title}  every {interval:g}s  {stamp}  (q or Ctrl-C to quit)"
            if width is not None:
                head = cut(head, width)
            out.write(f"{CLEAR}{head}\n\n{frame(cpus, width)}\n")
            out.flush()
        else:
            out.write(frame(cpus, width) + ("\n" if once else "\n\n"))
            out.flush()
        if once or wait(interval):
            return
