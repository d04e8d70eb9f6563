"""``--config FILE``: a TOML file holding a program's flags, shared by the arbiter and agent.

Every long flag of a program is a key, spelled as on the command line without its
dashes (``ack-timeout = 2.0``, ``tls-cert = "/etc/hwbp/arbiter.pem"``); a switch such as
``--insecure`` is ``insecure = true``. The file only changes the parser's defaults, so a
flag given on the command line always wins over its key, and the program's own checks
run on the merged result. An unknown key, or a value of the wrong type, is an error
naming the key: a typo in a deployment file must stop the program, not be ignored.

Precedence: command line, then the file, then the environment (``HWBP_*``), then the
built-in default.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ConfigError", "Key", "add_argument", "apply", "keys", "load"]

FLAG = "--config"


class ConfigError(ValueError):
    """The configuration file cannot be read, or one of its keys is wrong."""


@dataclass(frozen=True)
class Key:
    """One key of the file: the flag it stands for and how its value is checked."""

    name: str  # the long flag without its dashes
    action: argparse.Action

    @property
    def switch(self) -> bool:
        """A flag taking no value (store_true / store_false): the key is a boolean."""
        return self.action.nargs == 0

    def value(self, raw: object, source: str) -> object:
        """The parser default this key's TOML value sets; ConfigError if it does not fit."""
        where = f"{source}: key {self.name!r}"
        if self.switch:
            if not isinstance(raw, bool):
                raise ConfigError(f"{where}: expected true or false, got {_show(raw)}")
            # ``no-kprobes = true`` means the switch was given: store its constant.
            const = self.action.const
            return const if raw else (not const if isinstance(const, bool) else None)
        kind = self.action.type
        if kind is float:
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise ConfigError(f"{where}: expected a number, got {_show(raw)}")
            value: object = float(raw)
        elif kind is int:
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise ConfigError(f"{where}: expected an integer, got {_show(raw)}")
            value = raw
        elif kind is None or kind is str:
            if not isinstance(raw, str):
                raise ConfigError(f"{where}: expected a string, got {_show(raw)}")
            value = raw
        elif isinstance(raw, int) and not isinstance(raw, bool):
            value = raw  # e.g. an address: a TOML integer (0x1000 is one) is taken as is
        elif isinstance(raw, str):
            try:
                value = kind(raw) if callable(kind) else raw
            except (TypeError, ValueError) as err:
                raise ConfigError(f"{where}: {_show(raw)} is not valid: {err}") from None
        else:
            raise ConfigError(f"{where}: expected a string or an integer, got {_show(raw)}")
        choices = self.action.choices
        if choices is not None and value not in choices:
            listed = ", ".join(str(c) for c in choices)
            raise ConfigError(f"{where}: {_show(raw)} is not one of {listed}")
        return value


def _show(raw: object) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    kind = kinds.get(type(raw), f"a {type(raw).__name__}")
    return f"{kind} ({raw!r})"


def add_argument(p: argparse.ArgumentParser) -> None:
    """The ``--config FILE`` flag itself."""
    p.add_argument(
        FLAG,
        metavar="FILE",
        help="TOML file of settings: each key is a long flag without its dashes "
        "(flags given here win over the file)",
    )


def keys(p: argparse.ArgumentParser) -> dict[str, Key]:
    """Every key ``p`` accepts: one per long flag, except --help and --config."""
    out: dict[str, Key] = {}
    for action in p._actions:  # argparse offers no public list of its actions
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        for opt in action.option_strings:
            if opt.startswith("--") and opt != FLAG:
                out[opt[2:]] = Key(opt[2:], action)
    return out


def load(path: str | Path) -> dict[str, object]:
    """The file's table; ConfigError when it cannot be read or is not TOML."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config {path}: not valid TOML: {err}") from None
    return doc


def defaults(
    p: argparse.ArgumentParser, doc: Mapping[str, object], source: str
) -> dict[str, object]:
    """The parser defaults ``doc`` sets (by dest); ConfigError naming the first bad key."""
    known = keys(p)
    out: dict[str, object] = {}
    for name, raw in doc.items():
        key = known.get(name)
        if key is None:
            hint = ""
            underscored = known.get(name.replace("_", "-"))
            if underscored is not None:
                hint = f" (did you mean {underscored.name!r}?)"
            elif isinstance(raw, dict):
                hint = " (sections are not used: every key is at the top level)"
            raise ConfigError(f"{source}: unknown key {name!r}{hint}")
        out[key.action.dest] = key.value(raw, source)
    return out


def apply(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> Path | None:
    """If ``argv`` names ``--config FILE``, make the file's keys ``p``'s defaults.

    Call before ``p.parse_args(argv)``; a bad file ends the program through ``p.error``
    (exit 2, the message naming the file and the key). Returns the file, if any.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument(FLAG)
    known, _ = pre.parse_known_args(argv)
    if known.config is None:
        return None
    try:
        p.set_defaults(**defaults(p, load(known.config), f"config {known.config}"))
    except ConfigError as err:
        p.error(str(err))
    return Path(known.config)
