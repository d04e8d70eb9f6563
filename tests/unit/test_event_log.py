"""The change log's numbering, its kept window and what a resuming watch is answered."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwbp.errors import ErrorClass, SeqCompacted, SeqOutOfRange
from hwbp.server.event_log import EventLog
from hwbp.server.store import Batch, MemoryStore
from hwbp.v1 import types_pb2


def change(rid: str) -> types_pb2.Event:
    return types_pb2.Event(
        kind=types_pb2.EVENT_KIND_RELEASED, host="h1", reservation_ids=[rid], owner="ann"
    )


def commit(log: EventLog, store: MemoryStore, *rids: str, fail: bool = False) -> list[int]:
    """What the fleet does with one batch: number, write with it, keep once durable."""
    events = [change(r) for r in rids]
    records, trimmed = log.number(events)
    if not fail:
        store.commit(Batch(events=records, events_trimmed_through=trimmed))
        log.committed(events, trimmed)
    return [e.seq for e in events]


def seqs(events: list[types_pb2.Event]) -> list[int]:
    return [e.seq for e in events]


def test_numbers_grow_and_since_answers_what_came_after() -> None:
    log, store = EventLog(keep=100), MemoryStore()
    assert commit(log, store, "r1", "r2") == [1, 2]
    assert commit(log, store, "r3") == [3]
    assert seqs(log.since(0)) == [1, 2, 3]
    assert seqs(log.since(2)) == [3]
    assert log.since(3) == []
    assert log.last == 3


def test_only_the_last_keep_seqs_are_kept_in_memory_and_in_the_store() -> None:
    log, store = EventLog(keep=3), MemoryStore()
    for i in range(1, 8):
        commit(log, store, f"r{i}")
    assert seqs(log.since(4)) == [5, 6, 7] and len(log) == 3 and log.oldest == 5
    assert sorted(store.events) == [5, 6, 7] and store.events_trimmed_through == 4


def test_a_since_before_the_window_names_the_oldest_kept_event() -> None:
    log, store = EventLog(keep=2), MemoryStore()
    for i in range(1, 6):
        commit(log, store, f"r{i}")
    with pytest.raises(SeqCompacted) as err:
        log.since(2)
    assert err.value.error_class is ErrorClass.OUT_OF_RANGE
    assert "oldest kept is 4" in err.value.message and err.value.metadata["oldest"] == "4"
    assert seqs(log.since(3)) == [4, 5]  # the window's edge still resumes exactly


def test_a_since_never_issued_is_refused() -> None:
    log, store = EventLog(), MemoryStore()
    commit(log, store, "r1")
    with pytest.raises(SeqOutOfRange, match="ahead of this arbiter's last event 1"):
        log.since(2)


def test_a_failed_write_leaves_a_gap_never_a_reused_number() -> None:
    log, store = EventLog(), MemoryStore()
    commit(log, store, "r1")
    assert commit(log, store, "r2", fail=True) == [2]
    assert commit(log, store, "r3") == [3]
    assert seqs(log.since(0)) == [1, 3] and seqs(log.since(1)) == [3]


def test_a_restart_continues_the_numbering_and_keeps_the_window() -> None:
    log, store = EventLog(keep=2), MemoryStore()
    for i in range(1, 5):
        commit(log, store, f"r{i}")
    snap = store.load()
    again = EventLog(keep=2)
    again.restore(snap.events, snap.events_trimmed_through)
    assert seqs(again.since(2)) == [3, 4] and again.last == 4
    assert again.since(2)[0].reservation_ids == ["r3"]  # the body, not just the number
    with pytest.raises(SeqCompacted):
        again.since(1)
    assert commit(again, store, "r5") == [5]


def test_a_restart_of_an_empty_log_after_everything_was_trimmed_continues_after_it() -> None:
    again = EventLog()
    again.restore((), 40)
    assert again.last == 40 and again.since(40) == []
    assert commit(again, MemoryStore(), "r1") == [41]


@given(
    keep=st.integers(1, 6),
    batches=st.lists(st.tuples(st.integers(0, 3), st.booleans()), max_size=30),
)
def test_since_is_exact_or_refused_whatever_the_batches(
    keep: int, batches: list[tuple[int, bool]]
) -> None:
    """For every since in range: exactly the committed events after it, in order, or
    SeqCompacted when it is before the kept window (events after it may be gone); a
    restart answers the same."""
    log, store = EventLog(keep=keep), MemoryStore()
    committed: list[int] = []
    for n, fails in batches:
        got = commit(log, store, *[f"r{i}" for i in range(n)], fail=fails)
        if not fails:
            committed += got
    snap = store.load()
    again = EventLog(keep=keep)
    again.restore(snap.events, snap.events_trimmed_through)
    for view in (log, again):
        assert len(view) <= keep
        for since in range(view.last + 1):
            want = [s for s in committed if s > since]
            if since < view.trimmed_through:
                with pytest.raises(SeqCompacted):
                    view.since(since)
            else:
                assert seqs(view.since(since)) == want
        with pytest.raises(SeqOutOfRange):
            view.since(view.last + 1)
