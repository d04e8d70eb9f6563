"""Durable state of the arbiter behind one small interface (see base.py)."""

from hwbp.server.store.base import Batch, Snapshot, Store
from hwbp.server.store.memory import MemoryStore
from hwbp.server.store.sqlite import SqliteStore


def open_store(spec: str, *, sync: str = "normal") -> Store:
    """``:memory:`` for a throwaway run, else a SQLite file path."""
    if spec == ":memory:":
        return MemoryStore()
    return SqliteStore(spec, sync=sync)


__all__ = ["Batch", "MemoryStore", "Snapshot", "SqliteStore", "Store", "open_store"]
