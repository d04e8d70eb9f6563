"""hwbpctl top's frame, rendered from hand-built inventory rows (no arbiter needed)."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable

import pytest

from hwbp.client import top
from hwbp.client.cli_args import parse
from hwbp.client.errors import Unavailable, UsageError
from hwbp.client.values import CpuInfo, HolderInfo, RegisterImage, Scope

Slots = tuple[str | None, str | None, str | None, str | None]
EMPTY: Slots = (None, None, None, None)


def image(
    dr: tuple[int, int, int, int] = (0, 0, 0, 0), dr7: int = 0, slots: Slots = EMPTY
) -> RegisterImage:
    return RegisterImage(dr=dr, dr7=dr7, dr6=0xFFFF0FF0, current_task=None, slots=slots)


def cpu(
    host: str = "h1",
    n: int = 0,
    *,
    online: bool = True,
    gen: int = 3,
    acked: int = 3,
    reported: RegisterImage | None = None,
    expected: RegisterImage | None = None,
    holders: tuple[HolderInfo, ...] = (),
    task: int | None = None,
    detail: str = "",
) -> CpuInfo:
    rep = reported or image()
    exp = expected or rep
    return CpuInfo(
        host=host,
        cpu=n,
        online=online,
        generation=gen,
        acked_generation=acked,
        current_task=task,
        reported=rep,
        expected=exp,
        mismatch=rep != exp,
        used=sum(s is not None for s in rep.slots),
        slots=4,
        holders=holders,
        backend="sim",
        detail=detail,
    )


ANN = HolderInfo("r7", "ann", Scope.CPU, 1, None)
BOB = HolderInfo("r9", "bob", Scope.TASK_CPU, 1, 501)


def rows(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """Parse a frame back into {(host, cpu): {column: cell}} (test cells have no spaces)."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    host, headers = "", []
    for line in text.splitlines():
        if summary := re.match(r"(\S+): \d+ CPUs?, ", line):
            host = summary.group(1)
        elif line.startswith("CPU "):
            headers = line.split()
        elif line[:1].isdigit():
            cells = line.split(None, len(headers) - 1)  # the last column may hold spaces
            out[(host, cells[0])] = dict(zip(headers, cells, strict=True))
    return out


def sample() -> list[CpuInfo]:
    # Given out of order: the frame must sort hosts and CPUs so rows never jump.
    return [
        cpu(
            n=1,
            gen=12,
            acked=9,
            task=501,
            reported=image((0, 0x1000, 0, 0x2000), 0x5D000C4, (None, "r7", None, "r9")),
            holders=(ANN, BOB),
        ),
        cpu("h2", 0, online=False, detail="agent gone"),
        cpu(n=0),
    ]


def test_holders_sit_in_their_dr_columns_and_lag_is_shown() -> None:
    text = top.frame(sample())
    got = rows(text)
    c1 = got[("h1", "1")]
    assert (c1["DR0"], c1["DR2"]) == ("-", "-")
    assert c1["DR1"] == "r7(ann,cpu)"
    assert c1["DR3"] == "r9(bob,task+cpu:501)"
    assert (c1["GEN"], c1["ACKED"], c1["LAG"]) == ("12", "9", "3")
    assert (c1["TASK"], c1["USED"], c1["DR7"], c1["MISMATCH"]) == ("501", "2/4", "0x5d000c4", "-")
    assert got[("h1", "0")]["LAG"] == "0"
    assert "h1: 2 CPUs, 2 online, 0 mismatched, max lag 3" in text


def test_offline_cpu_is_shown_with_its_detail() -> None:
    text = top.frame(sample())
    h2 = rows(text)[("h2", "0")]
    assert h2["STATE"] == "OFFLINE"
    assert "h2: 1 CPU, 0 online" in text
    assert "  cpu 0: agent gone" in text
    # Hosts in name order, CPUs in number order.
    assert text.index("h1:") < text.index("h2:")
    assert list(rows(text)) == [("h1", "0"), ("h1", "1"), ("h2", "0")]


def test_mismatch_names_the_registers_and_unknown_holders_stand_out() -> None:
    expected = image((0x1000, 0, 0, 0), 0x1, ("r7", None, None, None))
    stale = image((0x1000, 0x9000, 0, 0), 0x5, ("r7", "r99", None, None))
    c = cpu(n=1, reported=stale, expected=expected, holders=(ANN,))
    row = rows(top.frame([c]))[("h1", "1")]
    assert row["DR1"] == "r99(?)"  # the CPU reports a reservation the arbiter does not list
    assert row["MISMATCH"] == "MISMATCH DR1,DR7"
    assert top.mismatched_registers(c) == ["DR1", "DR7"]


def test_no_cpus() -> None:
    assert top.frame([]) == "no CPUs"
    assert top.frame_json([]) == []


def test_json_frame_is_hosts_with_cpus_and_int_numbers() -> None:
    doc = json.loads(json.dumps(top.frame_json(sample())))
    assert [h["host"] for h in doc] == ["h1", "h2"]
    c1 = doc[0]["cpus"][1]
    assert (c1["cpu"], c1["lag"], c1["dr7"], c1["online"]) == (1, 3, 0x5D000C4, True)
    assert c1["registers"][1] == {
        "index": 1,
        "addr": 0x1000,
        "reservation_id": "r7",
        "owner": "ann",
        "scope": "cpu",
        "task": None,
    }
    assert c1["registers"][3]["task"] == 501 and c1["registers"][0]["reservation_id"] is None
    assert doc[1]["cpus"][0]["online"] is False


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def interrupt_after(n: int) -> tuple[list[float], Callable[[float], None]]:
    naps: list[float] = []

    def sleep(s: float) -> None:
        naps.append(s)
        if len(naps) >= n:
            raise KeyboardInterrupt

    return naps, sleep


def test_once_prints_one_plain_frame_even_on_a_terminal() -> None:
    out = Tty()
    top.run(sample, out, interval=1.0, once=True, as_json=False)
    assert out.getvalue() == top.frame(sample()) + "\n"
    assert "\x1b" not in out.getvalue()


def test_terminal_redraws_until_ctrl_c_which_ends_quietly() -> None:
    out = Tty()
    naps, sleep = interrupt_after(3)
    top.run(sample, out, interval=0.25, once=False, as_json=False, sleep=sleep)
    assert naps == [0.25, 0.25, 0.25]
    assert out.getvalue().count(top.CLEAR) == 3
    assert out.getvalue().count("r9(bob,task+cpu:501)") == 3


def test_a_live_view_survives_an_arbiter_restart() -> None:
    calls = iter([sample, unreachable, unreachable, sample])

    def fetch() -> list[CpuInfo]:
        return next(calls)()

    out = Tty()
    naps, sleep = interrupt_after(4)
    top.run(fetch, out, interval=0.5, once=False, as_json=False, sleep=sleep)
    assert naps == [0.5] * 4
    assert out.getvalue().count("arbiter unreachable") == 2
    assert out.getvalue().count("r9(bob,task+cpu:501)") == 2  # drawn before and after


def test_unreachable_at_start_is_an_error_not_a_retry() -> None:
    with pytest.raises(Unavailable):
        top.run(unreachable, Tty(), interval=0.5, once=False, as_json=False)


def unreachable() -> list[CpuInfo]:
    raise Unavailable("arbiter 127.0.0.1:1 is unreachable")


def test_a_pipe_gets_frames_in_sequence_without_escapes() -> None:
    out = io.StringIO()
    _, sleep = interrupt_after(2)
    top.run(sample, out, interval=1.0, once=False, as_json=True, sleep=sleep)
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(docs) == 2 and docs[0] == top.frame_json(sample())
    assert "\x1b" not in out.getvalue()


def test_parser_defaults_and_refusals() -> None:
    a = parse(["top"])
    assert (a.command, a.host, a.interval, a.once) == ("top", None, 1.0, False)
    a = parse(["--json", "top", "--host", "h1", "--interval", "0.2", "--once"])
    assert (a.host, a.interval, a.once, a.json) == ("h1", 0.2, True, True)
    with pytest.raises(UsageError, match="interval"):
        parse(["top", "--interval", "0"])


def test_state_is_the_link_and_a_fenced_cpu_says_why() -> None:
    from dataclasses import replace

    fenced = replace(cpu("h1", 1), link="fenced", link_reason="missed ack deadline")
    live = replace(cpu("h1", 0), link="live")
    assert (top.state(live), top.state(fenced)) == ("live", "FENCED")
    text = top.frame([live, fenced])
    assert "FENCED" in text and "cpu 1: fenced: missed ack deadline" in text
    doc = json.loads(json.dumps(top.frame_json([fenced])))[0]["cpus"][0]
    assert (doc["link"], doc["link_reason"], doc["pending"]) == (
        "fenced",
        "missed ack deadline",
        False,
    )


# --- the terminal's width and the q key -----------------------------------------------------

LONG = HolderInfo("r12", "someone@a-rather-long-host-name.example.com", Scope.TASK_CPU, 1, 4242)


def crowded() -> list[CpuInfo]:
    slots: Slots = ("r12", "r7", "r9", "r12")
    return [
        *sample(),
        cpu(n=2, reported=image((1, 2, 3, 4), 0xFF, slots), holders=(LONG, ANN, BOB)),
    ]


@pytest.mark.parametrize("width", [40, 60, 80, 100, 132])
def test_a_frame_never_wraps_at_the_terminal_width(width: int) -> None:
    text = top.frame(crowded(), width)
    assert all(len(line) <= width for line in text.splitlines()), text
    assert "h1: 3 CPUs"[: width - 1] in text


def test_columns_go_least_telling_first_and_holders_keep_their_id() -> None:
    full = top.frame(crowded())
    widest = max(len(line) for line in full.splitlines())
    assert top.frame(crowded(), widest) == full  # it fits: nothing changes
    header = next(line for line in top.frame(crowded(), 100).splitlines() if line.startswith("CPU"))
    assert "BACKEND" not in header and {"CPU", "STATE", "USED", "DR0", "DR3"} <= set(header.split())
    narrow = top.frame(crowded(), 60)
    row = next(line for line in narrow.splitlines() if line.startswith("2 "))
    assert "r12(" in row and top.ELIDED in row  # elided, but still names the reservation


def test_elide_marks_the_cut() -> None:
    assert top.elide("abcdef", 6) == "abcdef"
    assert top.elide("abcdefg", 6) == "abcde" + top.ELIDED


def test_q_on_the_terminal_quits_and_another_key_redraws_now() -> None:
    import os
    import pty
    import termios

    master, slave = pty.openpty()
    fetched = 0

    def fetch() -> list[CpuInfo]:
        nonlocal fetched
        fetched += 1
        if fetched == 2:
            os.write(master, b"q")
        return sample()

    try:
        with os.fdopen(slave, "r", closefd=False) as keys:
            before = termios.tcgetattr(slave)
            os.write(master, b"x")  # any other key: refresh now instead of in 30 s
            out = Tty()
            naps: list[float] = []
            top.run(
                fetch, out, interval=30, once=False, as_json=False, sleep=naps.append, keys=keys
            )
            assert termios.tcgetattr(slave) == before  # the terminal is as it was
    finally:
        os.close(master)
        os.close(slave)
    assert (fetched, naps) == (2, [])  # two frames, and no 30 s wait: the keys ended both
    assert out.getvalue().count(top.CLEAR) == 2
    assert "q or Ctrl-C to quit" in out.getvalue()
