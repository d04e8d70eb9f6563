"""hwbpctl end to end: a real arbiter, a real fleet of 2 simulated CPUs, CLI processes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration import procs
from tests.integration.procs import CliResult

pytestmark = pytest.mark.timeout(60)

HOST = "h1"


@pytest.fixture(scope="module")
def addr() -> Iterator[str]:
    with procs.arbiter_with_fleet(HOST, 2) as address:
        yield address


@pytest.fixture(autouse=True)
def clean(addr: str) -> Iterator[None]:
    """Every test starts and ends with no reservations, so slot counts are predictable."""
    yield
    for r in ok(run(addr, "ls")).json():
        run(addr, f"release {r['id']}")


def ok(res: CliResult) -> CliResult:
    assert res.code == 0, (res.code, res.err)
    assert res.err == ""
    return res


def one_line_error(res: CliResult, code: int) -> str:
    assert res.code == code, (res.code, res.out, res.err)
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    assert lines[0].startswith("hwbpctl"), res.err
    assert "Traceback" not in res.err
    return lines[0]


def run(addr: str, command: str, *, as_json: bool = True) -> CliResult:
    """hwbpctl with a command line written as one string (no quoting needed in these tests)."""
    return procs.cli(addr, *command.split(), as_json=as_json)


def spawn(addr: str, command: str, wait_for: str | None = None) -> procs.Proc:
    """hwbpctl in the background, for commands that stream; with ``wait_for``, once it
    printed a line containing that (its output is then in ``proc.lines``)."""
    args = ["hwbp.client", "--arbiter", addr, *command.split()]
    proc, _ = procs.start(args, "hwbpctl", wait_for=wait_for)
    return proc


def reserve(addr: str, args: str) -> dict[str, Any]:
    doc: dict[str, Any] = ok(run(addr, f"reserve --host {HOST} {args}")).json()
    return doc


def assert_ints(doc: dict[str, Any], *keys: str) -> None:
    for k in keys:
        assert type(doc[k]) is int, (k, doc[k])


SCOPES = [
    ("--system", "system", None, None),
    ("--cpu 1", "cpu", 1, None),
    ("--task 501", "task", None, 501),
    ("--task 0x1f6 --cpu 0", "task+cpu", 0, 502),
]


@pytest.mark.parametrize(("flags", "scope", "cpu", "task"), SCOPES)
def test_reserve_modify_release_each_scope(
    addr: str, flags: str, scope: str, cpu: int | None, task: int | None
) -> None:
    r = reserve(addr, f"{flags} --addr 0x1000 --len 4 --type w --owner ann")
    assert (r["scope"], r["cpu"], r["task"]) == (scope, cpu, task)
    assert (r["type"], r["owner"]) == ("w", "ann")
    assert (r["addr"], r["len"], r["enabled"]) == (0x1000, 4, True)
    assert_ints(r, "addr", "len", "generation")

    listed = ok(run(addr, f"ls --host {HOST}")).json()
    assert [x["id"] for x in listed] == [r["id"]]

    refused = run(addr, f"reserve --host {HOST} {flags} --addr 0x1001 --len 4 --type w")
    assert "align" in one_line_error(refused, 2).lower()

    m = ok(run(addr, f"modify {r['id']} --addr 2048 --len 8 --disable")).json()
    assert (m["id"], m["addr"], m["len"], m["enabled"]) == (r["id"], 2048, 8, False)
    assert m["scope"] == scope and m["generation"] > r["generation"]

    ok(run(addr, f"release {r['id']}"))
    assert ok(run(addr, "ls")).json() == []
    one_line_error(run(addr, f"release {r['id']}"), 6)


def test_exec_defaults_to_len_8_and_disabled_holds_a_slot(addr: str) -> None:
    r = reserve(addr, "--cpu 0 --addr 0x401000 --type x --disabled")
    assert (r["len"], r["type"], r["enabled"]) == (8, "x", False)
    cpu0 = next(c for c in ok(run(addr, f"cpus --host {HOST}")).json() if c["cpu"] == 0)
    assert cpu0["used"] == 1


def test_fifth_reservation_on_a_cpu_exits_3_naming_the_holders(addr: str) -> None:
    ids = [
        reserve(addr, f"--cpu 0 --addr {0x1000 + 8 * i} --len 8 --type rw --owner user{i}")["id"]
        for i in range(4)
    ]
    line = one_line_error(run(addr, f"reserve --host {HOST} --cpu 0 --addr 0x2000 --type x"), 3)
    assert "h1" in line and "cpu 0" in line
    for i, rid in enumerate(ids):
        assert rid in line and f"user{i}" in line
    # The other CPU is unaffected: a CPU-scoped budget is per CPU.
    reserve(addr, "--cpu 1 --addr 0x2000 --type x")


def test_fifth_reservation_with_json_prints_each_holder_as_an_object(addr: str) -> None:
    ids = [
        reserve(addr, f"--cpu 1 --addr {0x1000 + 8 * i} --len 8 --type w --owner u{i}")["id"]
        for i in range(4)
    ]
    res = run(addr, f"reserve --host {HOST} --cpu 1 --addr 0x2000 --type x")
    line = one_line_error(res, 3)
    assert all(f"{rid} (u{i}, cpu 1, held " in line for i, rid in enumerate(ids)), line
    doc = res.json()
    assert (doc["error"], doc["host"], doc["cpu"], doc["used"], doc["slots"]) == (
        "NO_FREE_SLOT",
        HOST,
        1,
        4,
        4,
    )
    assert [h["reservation_id"] for h in doc["holders"]] == ids
    for i, h in enumerate(doc["holders"]):
        assert (h["owner"], h["scope"], h["cpu"], h["task"]) == (f"u{i}", "cpu", 1, None)
        assert (h["session_id"], h["lease_left"]) == ("", None)
        assert type(h["age"]) is float and h["age"] >= 0


def test_cpus_json_numbers_are_ints_and_holders_are_named(addr: str) -> None:
    r = reserve(addr, "--cpu 1 --addr 0xdead0 --len 8 --type w --owner o")
    cpus = ok(run(addr, "cpus")).json()
    assert {(c["host"], c["cpu"]) for c in cpus} == {(HOST, 0), (HOST, 1)}
    for c in cpus:
        assert_ints(c, "cpu", "generation", "acked_generation", "dr7", "expected_dr7", "used")
        assert len(c["dr"]) == 4 and all(type(v) is int for v in c["dr"] + c["expected_dr"])
        assert c["online"] is True and c["mismatch"] is False and c["backend"] == "sim"
    cpu1 = next(c for c in cpus if c["cpu"] == 1)
    assert 0xDEAD0 in cpu1["dr"]
    assert cpu1["holders"] == [
        {"reservation_id": r["id"], "owner": "o", "scope": "cpu", "cpu": 1, "task": None}
    ]


def test_human_output_is_a_table_with_hex_addresses(addr: str) -> None:
    reserve(addr, "--cpu 0 --addr 4096 --len 4 --type w --owner ann")
    out = ok(run(addr, "ls", as_json=False)).out
    header, row = out.strip().splitlines()
    assert header.split()[:3] == ["ID", "HOST", "SCOPE"]
    assert "0x1000" in row and "ann" in row
    assert "0x1000" in ok(run(addr, "cpus", as_json=False)).out


@pytest.mark.parametrize(
    ("command", "needle"),
    [
        (f"reserve --host {HOST} --cpu 0 --addr 0xZZ --type x", "--addr"),
        (f"reserve --host {HOST} --cpu 0 --addr 0x10 --type w", "--len"),
        (f"reserve --host {HOST} --cpu 0 --addr 0x10 --len 3 --type w", "length"),
        (f"sim access --host {HOST} --cpu 0 --addr 1 --len x --type r", "--len"),
        (f"ptrace poke --host {HOST} --task 5 --reg 0 --value 0x1_0000", "--value"),
    ],
)
def test_bad_input_exits_2_with_one_line(addr: str, command: str, needle: str) -> None:
    assert needle in one_line_error(run(addr, command), 2).lower()


def test_unknown_things_exit_6(addr: str) -> None:
    one_line_error(run(addr, "release r-none"), 6)
    one_line_error(run(addr, "modify r-none --enable"), 6)
    one_line_error(run(addr, "cpus --host no-such-host"), 6)


def test_unreachable_arbiter_exits_5() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    line = one_line_error(run(closed, "ls"), 5)
    assert closed in line


def test_sim_access_hit_is_seen_by_watch(addr: str) -> None:
    r = reserve(addr, "--task 4242 --addr 0x5000 --len 4 --type w")
    switched = ok(run(addr, f"sim switch --host {HOST} --cpu 0 --task 4242"))
    assert switched.json()["current_task"] == 4242
    assert 0x5000 in switched.json()["dr"]

    # --announce: the first line says the arbiter will show us every later event.
    watch = spawn(addr, "--json watch --task 4242 --count 1 --timeout 30 --announce", "subscribed")
    try:
        acc = ok(run(addr, f"sim access --host {HOST} --cpu 0 --addr 0x5002 --len 1 --type w"))
        acc = acc.json()
        assert acc["hit"] is True and acc["reservation_id"] == r["id"]
        assert_ints(acc, "register", "dr6")
        assert watch.popen.wait(timeout=20) == 0, "".join(watch.lines)
    finally:
        watch.stop()
    marker, *rest = watch.lines
    assert json.loads(marker)["kind"] == "subscribed"
    out = "".join(rest)
    lines = out.strip().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["kind"] == "hit" and event["task"] == 4242
    assert event["hit"]["reservation_id"] == r["id"]
    assert type(event["hit"]["register"]) is int and event["hit"]["access_addr"] == 0x5002

    # cpu 1 runs no task, so the task breakpoint is not installed there.
    miss = ok(run(addr, f"sim access --host {HOST} --cpu 1 --addr 0x5000 --len 4 --type w")).json()
    assert miss["hit"] is False and miss["hits"] == []
    ok(run(addr, f"sim switch --host {HOST} --cpu 0 --idle"))
    assert ok(run(addr, f"sim exit --host {HOST} --task 4242")).json() == {"released": 1}
    assert ok(run(addr, "ls")).json() == []


def test_watch_stops_after_timeout_and_on_ctrl_c(addr: str) -> None:
    started = time.monotonic()
    res = ok(run(addr, f"watch --host {HOST} --task 999999 --timeout 1"))
    assert res.out == "" and time.monotonic() - started < 10

    watch = spawn(addr, "watch --announce", "subscribed")  # into the stream
    os.kill(watch.pid, signal.SIGINT)
    assert watch.popen.wait(timeout=10) == 0
    watch.stop()
    # The one line: subscribed, and the seq it is complete after (what to resume from).
    assert len(watch.lines) == 1, watch.lines
    assert re.fullmatch(r"subscribed: watching every host( after seq \d+)?\n", watch.lines[0])


def test_ptrace_pokes_persist_until_flushed(addr: str) -> None:
    """PTRACE_DETACH keeps the task's breakpoints (the kernel's flush_ptrace_hw_breakpoint
    runs only at exit and exec): `ptrace detach` keeps them, `ptrace flush` drops them."""
    task = f"--host {HOST} --task 777"
    ok(run(addr, f"ptrace poke {task} --reg 0 --value 0x6000"))
    ok(run(addr, f"ptrace poke {task} --reg 7 --value 0x1"))  # L0: enable DR0
    assert ok(run(addr, f"ptrace peek {task} --reg 0")).json() == {"value": 0x6000}
    assert ok(run(addr, f"ptrace peek {task} --reg 0", as_json=False)).out.strip() == "0x6000"
    assert any(r["task"] == 777 for r in ok(run(addr, "ls")).json())
    assert "stay until" in ok(run(addr, f"ptrace detach {task}", as_json=False)).out
    assert any(r["task"] == 777 for r in ok(run(addr, "ls")).json())
    assert run(addr, f"ptrace peek {task} --reg 0").code == 6  # not traced any more
    ok(run(addr, f"ptrace poke {task} --reg 1 --value 0x7000"))  # attaches again ...
    assert ok(run(addr, f"ptrace peek {task} --reg 0")).json() == {"value": 0x6000}  # ... as was
    assert ok(run(addr, f"ptrace flush {task}")).json() == {"released": 2}
    assert not any(r["task"] == 777 for r in ok(run(addr, "ls")).json())
    assert run(addr, f"ptrace flush {task}").code == 6  # nothing left to flush


def test_changes_say_where_they_are_applied_and_nothing_is_pending_on_a_live_fleet(
    addr: str,
) -> None:
    """Every change's JSON carries applied_cpus and pending_cpus (integers); with every
    agent live nothing is pending, so no warning is printed."""
    r = reserve(addr, "--system --addr 0x3000 --len 8 --type w --owner ann")
    m = ok(run(addr, f"modify {r['id']} --disable --expect-owner ann")).json()
    rel = ok(run(addr, f"release {r['id']} --expect-owner ann")).json()
    for doc in (r, m, rel):
        assert doc["pending_cpus"] == []
        assert all(type(c) is int for c in doc["applied_cpus"])
        assert set(doc["applied_cpus"]) <= {0, 1}
    assert rel["released"] is True and rel["id"] == r["id"]


def test_cpus_shows_the_link_of_each_cpu(addr: str) -> None:
    cpus = ok(run(addr, "cpus")).json()
    assert {(c["cpu"], c["link"], c["link_reason"], c["pending"]) for c in cpus} == {
        (0, "live", "", False),
        (1, "live", "", False),
    }
    header, *rows = ok(run(addr, "cpus", as_json=False)).out.strip().splitlines()
    col = header.split().index("LINK")
    assert [r.split()[col] for r in rows] == ["live", "live"]
    wide = ok(run(addr, "cpus --wide", as_json=False)).out.splitlines()[0].split()
    assert {"LINK", "PENDING", "BACKEND", "REASON"} <= set(wide)
