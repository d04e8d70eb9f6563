"""``hwbp-arbiter ledger check|backup|restore``: the operator's tools for a SQLite ledger.

``backup`` is online: it reads through SQLite's backup API on a read-only connection,
so it takes a consistent copy while an arbiter writes (a reader never blocks the WAL
writer, and never checkpoints or truncates its files, which the arbiter watches).
``check`` reads the same kind of copy and re-admits every reservation through the core
ledger, as the arbiter does at start, but names every conflict instead of stopping at
the first. ``restore`` puts a backup in place under the ledger's lock, so never under a
running arbiter; the ledger it replaces is kept beside it, and the id counter never goes
back (an id issued after the backup is not issued again).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hwbp.arch import UNREPORTED_FEATURES, X86_64, ArchProfile
from hwbp.errors import HwbpError, LedgerInUse, LedgerWriteFailed, NoFreeSlot
from hwbp.ledger import HostLedger
from hwbp.server.store import DEFAULT_LEDGER
from hwbp.server.store.base import Snapshot, id_order
from hwbp.server.store.lock import LedgerLock
from hwbp.server.store.sqlite import bring_up_to_date, read_snapshot

OK, CONFLICTS, USAGE, IN_USE = 0, 1, 2, 3  # exit codes


class ToolError(Exception):
    """What stops a ledger tool, in words, with its exit code."""

    def __init__(self, message: str, code: int = USAGE) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Summary:
    hosts: int
    reservations: int
    attachments: int
    sessions: int
    next_id: int

    def __str__(self) -> str:
        return (
            f"{self.hosts} hosts, {self.reservations} reservations, {self.attachments} "
            f"ptrace attachments, {self.sessions} sessions, next id r{self.next_id}"
        )


def summary(snap: Snapshot) -> Summary:
    return Summary(
        len(snap.hosts),
        len(snap.reservations),
        len(snap.attachments),
        len(snap.sessions),
        next_id(snap),
    )


def next_id(snap: Snapshot) -> int:
    """The counter as the arbiter would restore it: never below an id in the ledger."""
    ids = [id_order(r.reservation.id)[0] for r in snap.reservations]
    return max([snap.next_id, *(i + 1 for i in ids if i < 1 << 62)])


# --- the check (pure: a snapshot in, every conflict out) ------------------------------


def conflicts(snap: Snapshot, profile: ArchProfile = X86_64) -> list[str]:
    """Every reason the arbiter would refuse this ledger at start, one line each.

    Reservations are re-admitted in id order into one core ``HostLedger`` per host
    (features as at a restart: none held against them), so a conflict names the
    reservation that no longer fits and the holders it collides with."""
    problems: list[str] = []
    restored = profile.with_features(UNREPORTED_FEATURES)
    ledgers: dict[str, HostLedger] = {}
    for h in snap.hosts:
        try:
            ledgers[h.name] = HostLedger(h.name, h.ncpus, restored)
        except HwbpError as err:
            problems.append(f"host {h.name}: {err}")
    sessions = {s.id for s in snap.sessions}
    for rec in snap.reservations:
        res = rec.reservation
        ledger = ledgers.get(res.host)
        if ledger is None:
            problems.append(f"{res.describe()} names host {res.host!r}, not in the ledger")
            continue
        try:
            ledger.reserve(res)
        except NoFreeSlot as err:
            problems.append(f"{res.describe()} on {res.host} does not fit: {err}")
        except HwbpError as err:
            problems.append(f"{res.describe()} on {res.host} cannot be re-admitted: {err}")
        if res.session and res.session not in sessions:
            problems.append(f"{res.describe()} belongs to session {res.session}, not in the ledger")
    for a in snap.attachments:
        where = f"ptrace attachment of task {a.task} on {a.host}"
        traced = ledgers.get(a.host)
        if traced is None:
            problems.append(f"{where} names a host not in the ledger")
            continue
        missing = sorted({rid for _, rid in a.reservations if rid not in traced})
        if missing:
            problems.append(f"{where} names reservations not in the ledger: {', '.join(missing)}")
        if a.session and a.session not in sessions:
            problems.append(f"{where} belongs to session {a.session}, not in the ledger")
    for ledger in ledgers.values():
        try:
            ledger.validate()
        except HwbpError as err:
            problems.append(str(err))
    return problems


# --- reading a ledger, online ---------------------------------------------------------


def _source(path: str) -> sqlite3.Connection:
    """A read-only connection to a ledger file that must exist."""
    if not os.path.isfile(path):
        raise ToolError(f"ledger {path} does not exist")
    try:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as err:
        raise ToolError(f"ledger {path} cannot be opened: {err}", CONFLICTS) from None


def _copy(path: str, into: sqlite3.Connection) -> None:
    """A consistent copy of ``path`` through the backup API, while writers go on."""
    src = _source(path)
    try:
        src.backup(into)
    except sqlite3.Error as err:
        raise ToolError(f"ledger {path} cannot be read: {err}", CONFLICTS) from None
    finally:
        src.close()


def _intact(db: sqlite3.Connection, what: str) -> None:
    try:
        rows = [r[0] for r in db.execute("PRAGMA integrity_check")]
    except sqlite3.Error as err:
        raise ToolError(f"{what} cannot be read: {err}", CONFLICTS) from None
    if rows != ["ok"]:
        raise ToolError(f"{what} is damaged: {'; '.join(map(str, rows[:8]))}", CONFLICTS)


def read(path: str) -> Snapshot:
    """The ledger at ``path`` as the arbiter would load it (an online copy in memory)."""
    with contextlib.closing(sqlite3.connect(":memory:")) as mem:
        _copy(path, mem)
        _intact(mem, f"ledger {path}")
        try:
            bring_up_to_date(mem)
            return read_snapshot(mem)
        except (sqlite3.Error, ValueError, KeyError, TypeError, IndexError) as err:
            raise ToolError(f"ledger {path} is unreadable: {err}", CONFLICTS) from None


# --- the commands ---------------------------------------------------------------------


def check(path: str) -> tuple[Summary, list[str]]:
    snap = read(path)
    return summary(snap), conflicts(snap)


def backup(path: str, dest: str) -> Summary:
    """An online copy of the ledger at ``dest`` (a new file), checked once written."""
    if os.path.lexists(dest):
        raise ToolError(f"backup {dest} already exists; name a new file")
    _directory(dest, "backup")
    tmp = f"{dest}.tmp-{os.getpid()}"
    try:
        with contextlib.closing(sqlite3.connect(tmp)) as out:
            _copy(path, out)
            _intact(out, f"backup {dest}")
            # One self-contained file (the arbiter turns WAL back on when it opens one).
            out.execute("PRAGMA journal_mode=DELETE")
        _durable(tmp)
        os.replace(tmp, dest)
        _durable(str(Path(dest).parent))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return summary(read(dest))


def restore(path: str, source: str, *, stamp: str | None = None) -> tuple[Summary, str | None]:
    """Put the backup ``source`` in place of the ledger at ``path``: refused while an
    arbiter holds the ledger, or if the backup itself has conflicts. Returns what was
    restored and where the replaced ledger was kept (None: there was none)."""
    snap = read(source)
    found = conflicts(snap)
    if found:
        raise ToolError(
            f"backup {source} has {len(found)} conflicts, not restored: " + "; ".join(found),
            CONFLICTS,
        )
    _directory(path, "ledger")
    try:
        lock = LedgerLock.acquire(path)  # no arbiter starts on it while we replace it
    except LedgerInUse as err:
        raise ToolError(f"{err}; stop it before restoring", IN_USE) from None
    except LedgerWriteFailed as err:
        raise ToolError(str(err)) from None
    try:
        counter = next_id(snap)
        kept = None
        if os.path.exists(path):
            with contextlib.suppress(ToolError):  # an unreadable ledger keeps no counter
                counter = max(counter, next_id(read(path)))
            kept = f"{path}.replaced-{stamp or time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            for suffix in ("", "-wal"):  # a ledger killed mid-run has changes in its log
                if os.path.exists(path + suffix):
                    os.replace(path + suffix, kept + suffix)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + "-shm")
        tmp = f"{path}.restoring-{os.getpid()}"
        try:
            with contextlib.closing(sqlite3.connect(tmp)) as out:
                _copy(source, out)
                out.execute("INSERT OR REPLACE INTO meta VALUES ('next_id', ?)", (str(counter),))
                out.commit()
            _durable(tmp)
            os.replace(tmp, path)
            _durable(str(Path(path).parent))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    finally:
        lock.release()
    return summary(read(path)), kept


def _directory(path: str, what: str) -> None:
    """A file is written only into a directory that exists (as the arbiter's --db)."""
    parent = Path(path).parent
    if not parent.is_dir():
        raise ToolError(f"{what} {path}: its directory {parent} does not exist; create it first")


def _durable(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the command line -----------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="hwbp-arbiter ledger",
        description="Check, back up and restore an arbiter's SQLite ledger. Exit codes: "
        "0 ok, 1 conflicts or a damaged file, 2 usage, 3 an arbiter holds the ledger.",
    )
    cmds = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument("--db", default=DEFAULT_LEDGER, help="the ledger file (default: %(default)s)")
    cmds.add_parser(
        "check",
        parents=[db],
        help="re-admit the ledger through the core and name every conflict (exit 1 if any)",
    )
    b = cmds.add_parser(
        "backup", parents=[db], help="an online copy (safe while an arbiter runs) to a new file"
    )
    b.add_argument("dest", metavar="BACKUP", help="the file to write; must not exist")
    r = cmds.add_parser(
        "restore",
        parents=[db],
        help="put a backup in place of the ledger (refused while an arbiter runs on it)",
    )
    r.add_argument("source", metavar="BACKUP", help="a file written by `ledger backup`")
    return p.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    try:
        if args.command == "check":
            found, problems = check(args.db)
            print(f"ledger {args.db}: {found}")
            for line in problems:
                print(f"conflict: {line}")
            if problems:
                print(
                    f"{len(problems)} conflicts: an arbiter refuses to start on this ledger "
                    "(see README: Backups and a corrupt ledger)"
                )
                return CONFLICTS
            print("no conflicts")
        elif args.command == "backup":
            print(f"backed up {args.db} to {args.dest}: {backup(args.db, args.dest)}")
        else:
            restored, kept = restore(args.db, args.source)
            print(f"restored {args.source} into {args.db}: {restored}")
            if kept is not None:
                print(f"the ledger it replaced is kept as {kept}")
    except ToolError as err:
        print(f"hwbp-arbiter ledger {args.command}: {err}", file=sys.stderr)
        return err.code
    except OSError as err:
        print(f"hwbp-arbiter ledger {args.command}: {err}", file=sys.stderr)
        return USAGE
    return OK
