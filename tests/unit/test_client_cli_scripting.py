"""hwbpctl for scripts, without a server: where options go, -o, the default owner, errors as
JSON documents, and the sessions listing as a table and as JSON."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from hwbp.client import cli
from hwbp.client.cli_args import default_owner, parse, wants_json
from hwbp.client.cli_errors import error_json
from hwbp.client.cli_render import session_json, sessions_table
from hwbp.client.errors import ExitCode, UsageError, from_status
from hwbp.client.values import SessionSummary
from tests.unit.test_client_cli_parse import closed_port


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "--arbiter", "a:1", "ls", "--host", "h1"],
        ["ls", "--host", "h1", "--json", "--arbiter", "a:1"],
        ["--arbiter", "a:1", "ls", "-o", "json", "--host", "h1"],
        ["ls", "--output=json", "--arbiter=a:1", "--host", "h1"],
    ],
)
def test_global_options_go_before_or_after_the_command(argv: list[str]) -> None:
    a = parse(argv)
    assert (a.command, a.host, a.arbiter, a.json) == ("ls", "h1", "a:1", True)


def test_an_option_given_before_the_command_is_kept_when_not_repeated_after() -> None:
    a = parse(["--arbiter", "a:1", "--tls-ca", "ca.pem", "cpus", "--host", "h1"])
    assert (a.arbiter, a.tls_ca, a.json, a.wide) == ("a:1", "ca.pem", False, False)
    a = parse(["--arbiter", "a:1", "cpus", "--arbiter", "b:2"])  # the later one wins
    assert a.arbiter == "b:2"
    nested = parse(["ptrace", "peek", "--host", "h", "--task", "7", "--reg", "0", "--json"])
    assert nested.json is True


def test_output_wide_is_the_wide_table_where_there_is_one() -> None:
    assert parse(["cpus", "-o", "wide"]).wide is True
    assert parse(["sessions", "-o", "wide"]).wide is True
    assert parse(["ls", "-o", "wide"]).json is False  # no wide table: the plain one
    with pytest.raises(UsageError, match="contradicts"):
        parse(["cpus", "--json", "-o", "wide"])
    with pytest.raises(UsageError):
        parse(["ls", "-o", "yaml"])


@pytest.mark.parametrize(
    ("argv", "asked"),
    [
        (["ls", "--json"], True),
        (["-o", "json", "ls"], True),
        (["ls", "-ojson"], True),
        (["ls", "--output=json"], True),
        (["ls", "-o", "wide"], False),
        (["ls"], False),
        (["reserve", "--", "--json"], False),
    ],
)
def test_json_is_seen_before_parsing(argv: list[str], asked: bool) -> None:
    assert wants_json(argv) is asked


def test_the_owner_defaults_to_user_at_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "alice")
    expected = f"alice@{socket.gethostname()}"
    assert default_owner() == expected
    args = parse(["reserve", "--host", "h1", "--cpu", "0", "--addr", "0x10", "--type", "x"])
    assert args.owner == expected
    monkeypatch.delenv("USER")
    monkeypatch.delenv("LOGNAME", raising=False)
    assert default_owner().endswith(f"@{socket.gethostname()}")  # from the password file
    with pytest.raises(UsageError, match="--owner needs a name"):
        parse(
            [
                "reserve",
                "--host",
                "h1",
                "--cpu",
                "0",
                "--addr",
                "0x10",
                "--type",
                "x",
                "--owner",
                " ",
            ]
        )


def test_release_takes_several_ids_once_each() -> None:
    assert parse(["release", "r1", "r2", "r1", "r3"]).ids == ["r1", "r2", "r3"]
    with pytest.raises(UsageError):
        parse(["release"])


def test_version_is_printed_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("hwbpctl ")


# --- errors as JSON -------------------------------------------------------------------------


def test_a_usage_error_with_json_is_one_document_on_stdout_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = cli.main(["--arbiter", closed_port(), "watch", "--count", "0", "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1
    doc = json.loads(out)
    assert (doc["error"], doc["reason"], doc["code"]) == ("USAGE", "USAGE", 2)
    assert "--count" in doc["message"] and doc["message"] in err


def test_without_json_stdout_stays_empty(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--arbiter", closed_port(), "watch", "--count", "0"]) == 2
    assert capsys.readouterr().out == ""


def rich(code: int, message: str, reason: str, **metadata: str) -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(domain="hwbp.dev", reason=reason, metadata=metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(code=code, message=message, details=[detail])


def test_a_remote_error_carries_its_reason_status_and_details() -> None:
    st = rich(code_pb2.NOT_FOUND, "reservation 'r9' does not exist", "RESERVATION_NOT_FOUND")
    err = from_status(grpc.StatusCode.NOT_FOUND, st.message, st)
    doc = error_json(err, ExitCode.NOT_FOUND, str(err))
    assert doc["reason"] == doc["error"] == "RESERVATION_NOT_FOUND"
    assert (doc["code"], doc["status"], doc["message"]) == (6, "NOT_FOUND", str(err))
    assert "holders" not in doc


def test_a_refusal_that_names_holders_gives_them_as_objects() -> None:
    st = rich(
        code_pb2.RESOURCE_EXHAUSTED,
        "the kernel refused",
        "KERNEL_NO_FREE_SLOT",
        host="h1",
        cpu="2",
        errno="ENOSPC",
        holders="r1 (alice, cpu 2);r2 (bob, task 7)",
    )
    err = from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, st.message, st)
    doc = error_json(err, ExitCode.NO_FREE_SLOT, "the kernel refused")
    assert (doc["host"], doc["cpu"], doc["errno"]) == ("h1", 2, "ENOSPC")
    assert [(h["reservation_id"], h["owner"]) for h in doc["holders"]] == [
        ("r1", "alice"),
        ("r2", "bob"),
    ]
    assert json.loads(json.dumps(doc)) == doc  # a plain document


def test_local_failures_have_reasons_too() -> None:
    assert error_json(KeyboardInterrupt(), ExitCode.UNEXPECTED, "interrupted")["reason"] == (
        "INTERRUPTED"
    )
    assert error_json(RuntimeError("x"), ExitCode.UNEXPECTED, "x")["reason"] == "UNEXPECTED"


# --- sessions ---------------------------------------------------------------------------------

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
OPEN = SessionSummary("s-1", "alice@web1", 10.0, 8.25, 3, False, ("h1", "h2"))
ENDING = SessionSummary("s-2", "", 0.5, 0.0, 0, True, ())


def test_sessions_table_says_owner_ttl_expiry_and_holdings() -> None:
    header, first, second = sessions_table([OPEN, ENDING], NOW).splitlines()
    assert header.split() == ["SESSION", "OWNER", "TTL", "EXPIRES", "RESERVATIONS", "STATE"]
    assert first.split() == ["s-1", "alice@web1", "10s", "in", "8.2s", "(03:04:13Z)", "3", "open"]
    assert second.split()[:3] == ["s-2", "-", "0.5s"] and second.split()[-1] == "ending"
    wide = sessions_table([OPEN], NOW, wide=True).splitlines()
    assert wide[0].split()[-1] == "HOSTS" and wide[1].split()[-1] == "h1,h2"
    assert sessions_table([], NOW) == "no sessions"


def test_session_json_has_an_absolute_expiry() -> None:
    doc = session_json(OPEN, NOW)
    assert doc["expires_at"] == "2026-01-02T03:04:13Z"
    assert (doc["session_id"], doc["reservations"], doc["hosts"]) == ("s-1", 3, ["h1", "h2"])
    assert type(doc["reservations"]) is int
