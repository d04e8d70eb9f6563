"""Durable state of the arbiter behind one small interface (see base.py)."""

from hwbp.server.store.base import Batch, Snapshot, Store
from hwbp.server.store.memory import MemoryStore
from hwbp.server.store.sqlite import SqliteStore

# The arbiter's default --db: its directory is made on a first run (``make run``); any
# other ledger's directory must already exist.
DEFAULT_LEDGER = "var/hwbp.db"


def open_store(spec: str, *, sync: str = "normal") -> Store:
    """``:memory:`` for a throwaway run, else a SQLite file path in an existing directory."""
    if spec == ":memory:":
        return MemoryStore()
    return SqliteStore(spec, sync=sync, create_parent=spec == DEFAULT_LEDGER)


__all__ = [
    "DEFAULT_LEDGER",
    "Batch",
    "MemoryStore",
    "Snapshot",
    "SqliteStore",
    "Store",
    "open_store",
]
