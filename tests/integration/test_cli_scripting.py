"""hwbpctl as a script drives it: JSON errors, options anywhere, the default owner, releasing
several ids, filtered listings and open sessions. A real arbiter, a real fleet of 2
simulated CPUs, and the CLI as its own process."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from hwbp.client import Client
from tests.integration import procs
from tests.integration.procs import CliResult

pytestmark = pytest.mark.timeout(90)

HOST = "h1"
USER = "tester"
OWNER = f"{USER}@{socket.gethostname()}"


@pytest.fixture(scope="module")
def addr() -> Iterator[str]:
    with procs.arbiter_with_fleet(HOST, 2) as address:
        yield address


@pytest.fixture(autouse=True)
def clean(addr: str) -> Iterator[None]:
    """Every test starts and ends with no reservations."""
    yield
    for r in hwbpctl("--arbiter", addr, "ls", "--json").json():
        hwbpctl("--arbiter", addr, "release", r["id"])


def hwbpctl(*args: str, user: str = USER) -> CliResult:
    """hwbpctl exactly as given (no options added), run as ``user``."""
    env = {**procs._env(), "USER": user}
    done = subprocess.run(
        [procs.PY, "-m", "hwbp.client", *args],
        cwd=procs.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def cli(addr: str, command: str) -> CliResult:
    """A command line as one string, the arbiter given after the command."""
    return hwbpctl(*command.split(), "--arbiter", addr)


def ok(res: CliResult) -> CliResult:
    assert (res.code, res.err) == (0, ""), (res.code, res.out, res.err)
    return res


def reserve(addr: str, args: str) -> dict[str, Any]:
    doc: dict[str, Any] = ok(cli(addr, f"reserve --host {HOST} {args} --json")).json()
    return doc


def error_doc(res: CliResult, code: int) -> dict[str, Any]:
    """The one JSON document of a failed --json command, with the same exit code and the
    same one line on stderr as without --json."""
    assert res.code == code, (res.code, res.out, res.err)
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hwbpctl"), res.err
    doc: dict[str, Any] = res.json()  # the whole of stdout is one document
    assert doc["code"] == code and doc["error"] == doc["reason"]
    assert doc["message"] and doc["message"] in lines[0]
    return doc


# --- errors as JSON -----------------------------------------------------------------------


def test_not_found_is_a_json_document_with_the_same_exit_code(addr: str) -> None:
    plain = cli(addr, "release r-none")
    doc = error_doc(cli(addr, "release r-none --json"), plain.code)
    assert plain.code == 6 and plain.out == ""
    assert doc["reason"] == "RESERVATION_NOT_FOUND" and doc["status"] == "NOT_FOUND"
    assert "r-none" in doc["message"]


def test_a_usage_error_is_json_too_wherever_json_was_asked(addr: str) -> None:
    for words in (
        ["--json", "reserve", "--host", HOST, "--cpu", "0", "--addr", "0xZZ", "--type", "x"],
        ["reserve", "--host", HOST, "--cpu", "0", "--addr", "0xZZ", "--type", "x", "-o", "json"],
    ):
        doc = error_doc(hwbpctl(*words, "--arbiter", addr), 2)
        assert doc["reason"] == "USAGE" and "--addr" in doc["message"]
    plain = hwbpctl("reserve", "--host", HOST, "--cpu", "0", "--addr", "0xZZ", "--type", "x")
    assert (plain.code, plain.out) == (2, "")


def test_a_refusal_names_its_holders_as_objects_with_exit_3(addr: str) -> None:
    ids = [
        reserve(addr, f"--cpu 0 --addr {0x1000 + 8 * i} --len 8 --type w")["id"] for i in range(4)
    ]
    res = cli(addr, f"reserve --host {HOST} --cpu 0 --addr 0x2000 --type x -o json")
    doc = error_doc(res, 3)
    assert (doc["reason"], doc["host"], doc["cpu"], doc["used"]) == ("NO_FREE_SLOT", HOST, 0, 4)
    assert [h["reservation_id"] for h in doc["holders"]] == ids
    assert {h["owner"] for h in doc["holders"]} == {OWNER}  # never "anonymous"
    assert "anonymous" not in res.err and OWNER in res.err


def test_an_unreachable_arbiter_is_json_with_exit_5() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    doc = error_doc(hwbpctl("ls", "--arbiter", closed, "--json"), 5)
    assert doc["reason"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and closed in doc["message"]


# --- options anywhere, -o, --version ------------------------------------------------------


def test_global_options_before_or_after_the_command_mean_the_same(addr: str) -> None:
    r = reserve(addr, "--cpu 1 --addr 0x3000 --len 8 --type w --owner ann")
    before = ok(hwbpctl("--arbiter", addr, "--json", "ls", "--host", HOST)).json()
    after = ok(hwbpctl("ls", "--host", HOST, "--json", "--arbiter", addr)).json()
    split = ok(hwbpctl("--arbiter", addr, "ls", "-o", "json")).json()
    assert before == after == split and [x["id"] for x in after] == [r["id"]]
    nested = ok(hwbpctl("sim", "switch", "--host", HOST, "--cpu", "0", "--idle", "--arbiter", addr))
    assert nested.out.startswith("idle:")


def test_output_wide_is_the_wide_table(addr: str) -> None:
    narrow = ok(cli(addr, "cpus")).out.splitlines()[0].split()
    wide = ok(cli(addr, "cpus -o wide")).out.splitlines()[0].split()
    assert "BACKEND" not in narrow and {"PENDING", "BACKEND", "REASON"} <= set(wide)
    ok(cli(addr, "ls -o wide"))  # no wide table: the plain one
    assert cli(addr, "cpus --json -o wide").code == 2


def test_version_comes_from_the_installed_package() -> None:
    from importlib import metadata

    res = ok(hwbpctl("--version"))
    assert res.out.strip() == f"hwbpctl {metadata.version('hwbp-arbiter')}"


# --- the owner ----------------------------------------------------------------------------


def test_the_owner_defaults_to_user_at_hostname(addr: str) -> None:
    r = reserve(addr, "--cpu 0 --addr 0x4000 --len 4 --type w")
    assert r["owner"] == OWNER
    named = reserve(addr, "--cpu 0 --addr 0x4008 --len 4 --type w --owner bob")
    assert named["owner"] == "bob"
    res = cli(addr, f"reserve --host {HOST} --cpu 0 --addr 0x4010 --len 4 --type w --owner=")
    assert res.code == 2 and "--owner" in res.err


# --- release ID [ID...] -------------------------------------------------------------------


def test_release_several_says_what_happened_to_each(addr: str) -> None:
    a, b = (
        reserve(addr, f"--cpu 0 --addr {0x5000 + 8 * i} --len 8 --type w")["id"] for i in (0, 1)
    )
    res = cli(addr, f"release {a} r-none {b}")
    assert res.code == 6, (res.code, res.out, res.err)
    assert res.out.splitlines() == [f"released {a}", f"released {b}"]
    [line] = res.err.splitlines()
    assert line.startswith("hwbpctl: release r-none:") and "does not exist" in line
    assert ok(cli(addr, "ls --json")).json() == []


def test_release_several_with_json_is_a_list_of_outcomes(addr: str) -> None:
    a, b = (
        reserve(addr, f"--cpu 1 --addr {0x6000 + 8 * i} --len 8 --type w")["id"] for i in (0, 1)
    )
    res = cli(addr, f"release {a} {b} --json")
    docs = ok(res).json()
    assert [(d["id"], d["released"]) for d in docs] == [(a, True), (b, True)]
    res = cli(addr, f"release {a} --json --expect-owner {OWNER}")  # one id: one object
    assert res.code == 6 and res.json()["reason"] == "RESERVATION_NOT_FOUND"
    c = reserve(addr, "--cpu 1 --addr 0x6100 --len 8 --type w")["id"]
    res = cli(addr, f"release r-gone {c} --json --expect-owner someone-else")
    assert res.code == 6, (res.code, res.out, res.err)
    gone, kept = res.json()
    assert (gone["id"], gone["released"], gone["error"]["code"]) == ("r-gone", False, 6)
    assert (kept["id"], kept["released"], kept["error"]["code"]) == (c, False, 2)
    assert kept["error"]["reason"] == "FAILED_PRECONDITION"
    assert "someone-else" in kept["error"]["message"]
    assert len(res.err.strip().splitlines()) == 2
    assert [x["id"] for x in ok(cli(addr, "ls --json")).json()] == [c]


def test_release_several_stops_trying_once_the_arbiter_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    res = hwbpctl("release", "r1", "r2", "r3", "--arbiter", closed, "--json")
    assert res.code == 5, (res.code, res.out, res.err)
    first, *rest = res.err.strip().splitlines()
    assert first.startswith("hwbpctl: release r1:") and "not tried" not in first
    assert [line.split(":")[1] for line in rest] == [" release r2", " release r3"]
    assert all("not tried" in line for line in rest)
    docs = res.json()
    assert [(d["id"], d["released"], d["error"]["code"]) for d in docs] == [
        ("r1", False, 5),
        ("r2", False, 5),
        ("r3", False, 5),
    ]


# --- ls filters and sessions --------------------------------------------------------------


def test_ls_filters_by_owner_and_session_across_pages(addr: str) -> None:
    with Client(addr) as client, client.session(ttl=30, owner="sess-owner") as s:
        mine = [s.reserve(HOST, task=700 + i, addr=0x7000, len=8, type="w").id for i in range(3)]
        for i in range(3):
            reserve(addr, f"--task {800 + i} --addr 0x7000 --len 8 --type w --owner other")
            reserve(addr, f"--task {900 + i} --addr 0x7000 --len 8 --type w")
        by_session = ok(cli(addr, f"ls --session {s.id} --json")).json()
        assert [r["id"] for r in by_session] == mine
        assert {r["owner"] for r in ok(cli(addr, "ls --owner other --json")).json()} == {"other"}
        assert len(ok(cli(addr, f"ls --owner {OWNER} --host {HOST} --json")).json()) == 3
        assert ok(cli(addr, "ls --owner nobody")).out.strip() == "no reservations"
        # The filter is the arbiter's, page by page: small pages still find every one.
        paged = client.list(owner="other", page_size=2)
        assert [r.owner for r in paged] == ["other"] * 3
        assert [r.id for r in client.list(session_id=s.id, page_size=1)] == mine


def test_sessions_lists_each_open_session_with_its_lease_and_holdings(addr: str) -> None:
    with (
        Client(addr) as client,
        client.session(ttl=20, owner="alice") as a,
        client.session(ttl=5, owner="bob") as b,
    ):
        for i in range(2):
            a.reserve(HOST, cpu=i, addr=0x8000, len=8, type="w")
        docs = {d["session_id"]: d for d in ok(cli(addr, "sessions --json")).json()}
        assert {a.id, b.id} <= set(docs)
        da, db = docs[a.id], docs[b.id]
        assert (da["owner"], da["ttl"], da["reservations"], da["hosts"]) == ("alice", 20, 2, [HOST])
        assert (db["owner"], db["ttl"], db["reservations"], db["hosts"]) == ("bob", 5, 0, [])
        assert 0 < da["lease_left"] <= 20 and da["expires_at"].endswith("Z")
        assert da["ending"] is False
        only = ok(cli(addr, "sessions --owner bob --json")).json()
        assert [d["session_id"] for d in only] == [b.id]
        paged = [x.session_id for x in client.sessions(page_size=1)]  # one per page
        assert paged == sorted(docs) and len(paged) == len(set(paged))
        assert [x.reservations for x in client.sessions("alice", page_size=1)] == [2]
        header, *rows = ok(cli(addr, "sessions -o wide")).out.splitlines()
        assert header.split() == [
            "SESSION", "OWNER", "TTL", "EXPIRES", "RESERVATIONS", "STATE", "HOSTS"
        ]  # fmt: skip
        row = next(r for r in rows if r.startswith(a.id)).split()
        assert row[1:3] == ["alice", "20s"] and row[-3:] == ["2", "open", HOST]
        sid_a = a.id
    assert sid_a not in json.dumps(ok(cli(addr, "sessions --json")).json())
