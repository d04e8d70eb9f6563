"""Help text that states every option's default, and ``--version``, for hwbpctl,
hwbp-agent and hwbp-arbiter.

argparse's own ``ArgumentDefaultsHelpFormatter`` prints "(default: None)" for options
that have no default and "(default: False)" for every flag, which says nothing. This one
adds "(default: X)" only where an option takes a value when it is not given, and leaves
alone a help text that already names its default (such as "default $HWBP_ARBITER").
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from importlib import metadata

__all__ = ["DefaultsHelpFormatter", "add_version", "has_default", "version", "walk"]


def has_default(action: argparse.Action) -> bool:
    """Whether an option has a default worth stating: a value it takes when absent.

    Flags (``store_true``, ``store_const``, help, version) take no value, so their
    default is only "off"; None and SUPPRESS mean there is none.
    """
    if not action.option_strings or action.nargs == 0:
        return False
    return action.default is not None and action.default is not argparse.SUPPRESS


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to each option that has one and does not say it already."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not has_default(action) or "default" in text.lower():
            return action.help
        return f"{text} (default: %(default)s)".lstrip()


def walk(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and every subcommand's parser below it, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield from walk(sub)


def version() -> str:
    """The installed package's version (its metadata), or "unknown" outside an install."""
    try:
        return metadata.version("hwbp-arbiter")
    except metadata.PackageNotFoundError:
        return "unknown"


def add_version(p: argparse.ArgumentParser) -> None:
    """``--version``: the program's name and the installed version."""
    p.add_argument("--version", action="version", version=f"{p.prog} {version()}")
