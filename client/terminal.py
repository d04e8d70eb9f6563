"""The terminal under ``hwbpctl top``: its width, and keys read without Enter.

A live view quits on ``q`` as top, less and htop do; Ctrl-C still works (cbreak mode
leaves signals alone). The terminal's settings are restored however the view ends.
"""

from __future__ import annotations

import contextlib
import os
import select
import termios
import tty
from collections.abc import Callable, Iterator
from typing import TextIO

QUIT_KEYS = frozenset(b"qQ")

# Waits up to S seconds; True when the person asked to quit meanwhile.
Wait = Callable[[float], bool]


def width(out: TextIO) -> int | None:
    """Columns of the terminal ``out`` writes to; None for a pipe or a file (no limit)."""
    try:
        if not out.isatty():
            return None
        return os.get_terminal_size(out.fileno()).columns or None
    except (OSError, ValueError):  # no fileno (a StringIO), or not a terminal after all
        return None


def _is_tty(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except ValueError:  # closed
        return False


@contextlib.contextmanager
def keys(stream: TextIO | None, sleep: Callable[[float], None]) -> Iterator[Wait]:
    """A ``Wait`` that returns early when ``q`` is typed on ``stream`` (a terminal, put in
    cbreak mode until the block ends); without a terminal it only sleeps."""
    if stream is None or not _is_tty(stream):

        def nap(seconds: float) -> bool:
            sleep(seconds)
            return False

        yield nap
        return
    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd, termios.TCSANOW)

    gone = False  # the terminal hung up: nothing more will be typed

    def wait(seconds: float) -> bool:
        nonlocal gone
        if not gone and select.select([fd], [], [], seconds)[0]:
            try:
                typed = os.read(fd, 64)
            except OSError:  # EIO: the terminal is gone
                typed = b""
            gone = not typed
            return bool(QUIT_KEYS.intersection(typed))  # another key: refresh now
        if gone:
            sleep(seconds)
        return False

    try:
        yield wait
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
