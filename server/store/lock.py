"""One arbiter per ledger: an exclusive ``flock`` on a lock file beside the ledger.

Two arbiters on one SQLite file would each grant the same slots (SQLite serialises their
transactions, not their view of the ledger). Why a lock file rather than SQLite's
``locking_mode=EXCLUSIVE``: the kernel drops a ``flock`` when its process dies, however it
dies (kill -9 included), so no stale lock ever needs cleaning up; the file names the pid
that holds it, so the second arbiter can say who; and it is taken before SQLite opens
anything, so the loser touches nothing. An EXCLUSIVE SQLite connection would make the
second arbiter fail only at its first read, with "database is locked" and no holder, and
would keep even read-only inspection tools out of the ledger.

The lock file is never deleted (deleting it would let a third arbiter lock a new file
while the second still waits on the old one); ``problem()`` notices if someone else
deleted or replaced it, since from then on it no longer keeps a second arbiter out.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from hwbp.errors import LedgerInUse, LedgerWriteFailed


class LedgerLock:
    """Held from ``acquire`` until the process exits (or ``release``)."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        st = os.fstat(fd)
        self.identity = (st.st_dev, st.st_ino)

    @classmethod
    def acquire(cls, ledger: str) -> LedgerLock:
        """Lock ``ledger``'s lock file, or raise LedgerInUse naming the holder's pid."""
        path = ledger + ".lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise LedgerWriteFailed(
                f"ledger {ledger}: cannot create its lock file {path}: {err.strerror}",
                path=ledger,
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "a process that has not yet written its pid"
            raise LedgerInUse(
                f"ledger {ledger} is in use by another arbiter ({who}, holding {path}); "
                "one ledger serves one arbiter",
                path=ledger,
                pid=holder or None,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def problem(self) -> str:
        """Why the lock no longer protects the ledger ("" while it does)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return f"its lock file {self.path} was deleted"
        except OSError as err:
            return f"its lock file {self.path} cannot be checked: {err.strerror}"
        if (st.st_dev, st.st_ino) != self.identity:
            return f"its lock file {self.path} was replaced"
        return ""

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _read(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""
