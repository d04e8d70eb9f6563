"""Every option of hwbpctl, hwbp-agent and hwbp-arbiter has help text, and the help of
each one that has a default says what it is."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Sequence

import pytest

from hwbp.agent import main as agent_main
from hwbp.client.cli_args import build_parser
from hwbp.server import main as server_main
from hwbp.wire.helpformat import DefaultsHelpFormatter, has_default, walk


class _Built(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def built_by(parse_args: Callable[[Sequence[str] | None], object]) -> argparse.ArgumentParser:
    """The parser a program's ``parse_args`` builds, caught as it is about to parse."""

    def grab(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Built(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(argparse.ArgumentParser, "parse_args", grab)
        with pytest.raises(_Built) as built:
            parse_args([])
    return built.value.parser


PROGRAMS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "hwbpctl": build_parser,
    "hwbp-agent": lambda: built_by(agent_main.parse_args),
    "hwbp-arbiter": lambda: built_by(server_main.parse_args),
}


def options(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.Action, str]]:
    """(where, action, its help as --help prints it) for every option and argument of every
    command of ``parser``."""
    for sub in walk(parser):
        formatter = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            if isinstance(action, argparse._SubParsersAction):
                continue
            name = "/".join(action.option_strings) or action.dest
            text = formatter._expand_help(action) if action.help else ""
            yield f"{sub.prog} {name}", action, text


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_every_option_has_help_and_states_its_default(program: str) -> None:
    parser = PROGRAMS[program]()
    seen = 0
    for where, action, text in options(parser):
        seen += 1
        assert text.strip() and action.help is not argparse.SUPPRESS, f"{where}: no help text"
        if has_default(action):
            assert "default" in text.lower(), f"{where}: help does not say its default: {text!r}"
    assert seen > 10


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_every_command_uses_the_defaults_formatter(program: str) -> None:
    for sub in walk(PROGRAMS[program]()):
        assert sub.formatter_class is DefaultsHelpFormatter, sub.prog


def test_the_formatter_adds_a_default_only_where_one_is_worth_stating() -> None:
    p = argparse.ArgumentParser(formatter_class=DefaultsHelpFormatter)
    p.add_argument("--interval", type=float, default=1.5, help="seconds")
    p.add_argument("--owner", default="x", help="who (default: you)")
    p.add_argument("--flag", action="store_true", help="a switch")
    p.add_argument("--host", help="a host")
    text = " ".join(p.format_help().split())
    assert "seconds (default: 1.5)" in text
    assert "who (default: you)" in text and "(default: x)" not in text  # said once
    assert "a switch (default" not in text and "a host (default" not in text


def test_hwbpctl_help_shows_real_defaults() -> None:
    top = next(s for s in walk(build_parser()) if s.prog == "hwbpctl top")
    assert "(default: 1.0)" in " ".join(top.format_help().split())
    reserve = next(s for s in walk(build_parser()) if s.prog == "hwbpctl reserve")
    assert "$USER@hostname" in reserve.format_help()


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_every_program_says_its_version(program: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = PROGRAMS[program]()
    with pytest.raises(SystemExit) as done:
        parser.parse_args(["--version"])
    assert done.value.code == 0
    name, _, number = capsys.readouterr().out.strip().partition(" ")
    assert name == program and number and number != "unknown"
