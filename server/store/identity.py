"""Noticing that the ledger file was deleted, replaced or truncated under a running arbiter.

SQLite keeps writing into the file it opened: if someone deletes the ledger, commits
still succeed, into an inode nobody can reach, and the next start finds nothing. So
before and after each write the store compares what is at the ledger's path with what
it opened: the same device and inode, for the ledger and for its write-ahead log, and a
ledger file no smaller than it has been (in WAL mode, with auto-vacuum off, SQLite
never shrinks it: only someone else can). Only ``os.stat`` is used: opening and closing
the ledger file here would drop SQLite's own POSIX locks on it.
"""

from __future__ import annotations

import contextlib
import os


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


class FileWatch:
    """What the ledger's files were when opened; ``problem()`` says what changed."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.wal = path + "-wal"
        st = os.stat(path)
        self.identity = (st.st_dev, st.st_ino)
        self.size = st.st_size
        self.wal_identity = _identity(self.wal)

    def problem(self) -> str:
        """Why the file at the ledger's path is no longer the ledger ("" if it is)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return f"the ledger file {self.path} was deleted while the arbiter runs"
        except OSError as err:
            return f"the ledger file {self.path} cannot be checked: {err.strerror}"
        if (st.st_dev, st.st_ino) != self.identity:
            return f"the ledger file {self.path} was replaced by another file"
        if st.st_size < self.size:
            return (
                f"the ledger file {self.path} was truncated "
                f"({st.st_size} bytes, it had {self.size})"
            )
        if self.wal_identity is None:
            self.wal_identity = _identity(self.wal)
        elif _identity(self.wal) != self.wal_identity:
            return f"the ledger's write-ahead log {self.wal} was deleted or replaced"
        return ""

    def wrote(self) -> None:
        """A write succeeded: the file may have grown (a checkpoint)."""
        with contextlib.suppress(OSError):  # the next problem() says what happened
            self.size = max(self.size, os.stat(self.path).st_size)
        if self.wal_identity is None:
            self.wal_identity = _identity(self.wal)
