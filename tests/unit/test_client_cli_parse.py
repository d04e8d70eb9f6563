"""hwbpctl argument validation: usage errors exit 2 before any server is contacted."""

from __future__ import annotations

import argparse
import socket

import pytest

from hwbp.client import cli
from hwbp.client.cli_args import parse, parse_number
from hwbp.client.errors import UsageError


def closed_port() -> str:
    """An address nobody listens on, so reaching the network would fail with exit 5."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("42", 42), ("0x1000", 0x1000), ("0XfF", 255), ("007", 7), (" 12 ", 12)],
)
def test_numbers_are_decimal_or_hex(text: str, value: int) -> None:
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["", "zz", "0x", "-1", "1.5", "0o17", "0b1", "1_000", "12k"])
def test_bad_numbers_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="decimal or 0x-hex"):
        parse_number(text)


def reserve(*extra: str) -> argparse.Namespace:
    return parse(["reserve", "--host", "h1", "--addr", "0x1000", *extra])


def test_exec_length_defaults_to_8() -> None:
    assert reserve("--cpu", "0", "--type", "x").len == 8


@pytest.mark.parametrize("kind", ["w", "rw"])
def test_data_breakpoints_need_a_length(kind: str) -> None:
    with pytest.raises(UsageError, match="--len is required"):
        reserve("--cpu", "0", "--type", kind)
    assert reserve("--cpu", "0", "--type", kind, "--len", "4").len == 4


@pytest.mark.parametrize(
    "extra",
    [
        ["--type", "x"],  # no scope at all
        ["--system", "--cpu", "0", "--type", "x"],
        ["--system", "--task", "7", "--type", "x"],
        ["--cpu", "0", "--type", "r", "--len", "4"],  # read-only is not a reserve type
        ["--cpu", "-1", "--type", "x"],
        ["--cpu", "0", "--task", "0", "--type", "x"],  # pid 0 is not a task
        ["--cpu", "0", "--type", "x", "--addr", "0x1" + "0" * 16],  # above 2**64
    ],
)
def test_reserve_usage_errors(extra: list[str]) -> None:
    with pytest.raises(UsageError):
        reserve(*extra)


def test_scopes_parse() -> None:
    assert reserve("--system", "--type", "x").system
    a = reserve("--task", "7", "--cpu", "1", "--type", "w", "--len", "8", "--disabled")
    assert (a.task, a.cpu, a.disabled) == (7, 1, True)


def test_modify_needs_something_to_change_and_one_of_enable_disable() -> None:
    with pytest.raises(UsageError, match="nothing to change"):
        parse(["modify", "r-1"])
    with pytest.raises(UsageError):
        parse(["modify", "r-1", "--enable", "--disable"])
    assert parse(["modify", "r-1", "--disable"]).enabled is False
    assert parse(["modify", "r-1", "--addr", "0x20"]).addr == 0x20


def test_sim_switch_needs_task_or_idle() -> None:
    with pytest.raises(UsageError):
        parse(["sim", "switch", "--host", "h1", "--cpu", "0"])
    with pytest.raises(UsageError):
        parse(["sim", "switch", "--host", "h1", "--cpu", "0", "--task", "5", "--idle"])
    assert parse(["sim", "switch", "--host", "h1", "--cpu", "0", "--idle"]).idle


@pytest.mark.parametrize(
    "argv",
    [
        ["reserve", "--host", "h1", "--cpu", "0", "--addr", "zz", "--type", "x"],
        ["reserve", "--host", "h1", "--cpu", "0", "--addr", "0x10", "--type", "w"],
        ["bogus"],
        [],
        ["watch", "--count", "0"],
        ["watch", "--timeout", "-1"],
        ["ptrace", "poke", "--host", "h1", "--task", "7", "--reg", "7"],  # no --value
    ],
)
def test_main_exits_2_with_one_line_without_contacting_a_server(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--arbiter", closed_port(), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("hwbpctl")
    assert "Traceback" not in captured.err


def test_bad_number_message_names_the_argument(capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["reserve", "--host", "h1", "--cpu", "0", "--addr", "0xZZ", "--type", "x"])
    assert "--addr" in capsys.readouterr().err
