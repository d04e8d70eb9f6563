"""The event bus: fan-out touches only subscribers that could accept, and watchers are
capped per identity and in total (issue 13, item 11).

2,000 idle Watch streams once pushed reserve+release p50 from 5 ms to 1 s because every
publish (and every ``wants``) looked at every subscriber. The work is asserted by counting
predicate calls and kind-set lookups, never by timing.
"""

from __future__ import annotations

from typing import Any

import pytest

from hwbp.errors import HwbpError, TooManyWatchers, WatcherTooSlow
from hwbp.server.events import QUEUE_LIMIT, TRAPS_ONLY, EventBus, Subscription
from hwbp.v1 import ptrace_pb2, types_pb2

HIT, RELOAD, NACK = types_pb2.EVENT_KIND_HIT, types_pb2.EVENT_KIND_RELOAD, types_pb2.EVENT_KIND_NACK
IDLE = 2000


class Counter:
    """A predicate that accepts everything and counts how often it was asked."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, item: Any) -> bool:
        self.calls += 1
        return True


class CountingKinds(frozenset[int]):
    """A kinds set that counts membership tests: the work ``wants`` does per subscriber."""

    lookups = 0

    def __contains__(self, item: object) -> bool:
        CountingKinds.lookups += 1
        return super().__contains__(item)


def event(host: str, kind: types_pb2.EventKind.ValueType) -> types_pb2.Event:
    return types_pb2.Event(host=host, kind=kind, seq=1)


def test_publish_touches_none_of_the_idle_watchers_of_other_hosts_and_kinds() -> None:
    bus = EventBus()
    other_host, other_kind = Counter(), Counter()
    for _ in range(IDLE // 2):
        bus.subscribe(other_host, None, host="h2")
        bus.subscribe(other_kind, frozenset({RELOAD}), host="h1")
    mine = Counter()
    sub = bus.subscribe(mine, frozenset({HIT}), host="h1")

    bus.publish(event("h1", HIT))

    assert (other_host.calls, other_kind.calls) == (0, 0)
    assert mine.calls == 1 and sub.queue.qsize() == 1


def test_watchers_of_any_host_or_any_kind_still_get_their_events() -> None:
    bus = EventBus()
    any_host, any_kind, everything = Counter(), Counter(), Counter()
    subs = [
        bus.subscribe(any_host, frozenset({HIT})),
        bus.subscribe(any_kind, None, host="h1"),
        bus.subscribe(everything),
    ]
    bus.publish(event("h1", HIT))
    bus.publish(event("h2", RELOAD))  # only "everything" may take it
    assert [s.queue.qsize() for s in subs] == [1, 1, 2]
    assert (any_host.calls, any_kind.calls, everything.calls) == (1, 1, 2)


def test_the_predicate_still_decides_for_the_rest() -> None:
    bus = EventBus()
    sub = bus.subscribe(lambda ev: ev.task == 7, frozenset({HIT}), host="h1")
    bus.publish(types_pb2.Event(host="h1", kind=HIT, task=8))
    bus.publish(types_pb2.Event(host="h1", kind=HIT, task=7))
    got = sub.queue.get_nowait()
    assert sub.queue.empty() and isinstance(got, types_pb2.Event) and got.task == 7


def test_wants_asks_no_subscriber() -> None:
    bus = EventBus()
    for _ in range(IDLE):
        bus.subscribe(lambda ev: True, CountingKinds({RELOAD}), host="h1")
    CountingKinds.lookups = 0
    assert bus.wants(RELOAD) and not bus.wants(HIT)
    assert bus.wants(RELOAD, host="h1") and not bus.wants(RELOAD, host="h2")
    assert CountingKinds.lookups == 0


def test_traps_reach_trap_streams_of_their_host_and_never_event_watchers() -> None:
    bus = EventBus()
    traps = bus.subscribe(lambda item: True, TRAPS_ONLY, host="h1")
    legacy = bus.subscribe(lambda item: True, frozenset(), host="h1")  # the old spelling
    watcher = Counter()
    bus.subscribe(watcher, frozenset({HIT}), host="h1")
    bus.publish(ptrace_pb2.Trap(host="h1", task=5))
    bus.publish(ptrace_pb2.Trap(host="h2", task=5))
    bus.publish(event("h1", RELOAD))
    assert (traps.queue.qsize(), legacy.queue.qsize(), watcher.calls) == (1, 1, 0)
    assert not bus.wants(HIT, host="h2") and bus.wants(HIT, host="h1")


def test_unsubscribe_removes_all_work_and_is_idempotent() -> None:
    bus = EventBus()
    gone = Counter()
    sub = bus.subscribe(gone, frozenset({HIT, NACK}), host="h1", identity="bob")
    bus.unsubscribe(sub)
    bus.unsubscribe(sub)
    bus.publish(event("h1", HIT))
    assert gone.calls == 0 and not bus.wants(HIT) and not bus.wants(NACK)
    assert bus.count() == 0 and bus.count("bob") == 0


def test_watchers_are_capped_per_identity() -> None:
    bus = EventBus(max_total=100, max_per_identity=3)
    subs = [bus.subscribe(Counter(), identity="debugger:bob") for _ in range(3)]
    with pytest.raises(TooManyWatchers) as refused:
        bus.subscribe(Counter(), identity="debugger:bob")
    assert "debugger:bob" in str(refused.value) and "3" in str(refused.value)
    assert refused.value.metadata["identity"] == "debugger:bob"
    bus.subscribe(Counter(), identity="viewer:carol")  # someone else is not refused
    bus.unsubscribe(subs[0])
    bus.subscribe(Counter(), identity="debugger:bob")  # a freed place can be taken again
    assert bus.count("debugger:bob") == 3 and bus.count() == 4


def test_watchers_are_capped_in_total_but_internal_subscribers_are_not() -> None:
    bus = EventBus(max_total=4, max_per_identity=3)
    for who in ("a", "a", "b", "b"):
        bus.subscribe(Counter(), identity=who)
    with pytest.raises(TooManyWatchers) as refused:
        bus.subscribe(Counter(), identity="c")
    assert "4" in str(refused.value)
    internal = bus.subscribe(Counter(), frozenset({HIT}))  # identity None: the arbiter's own
    assert isinstance(internal, Subscription) and bus.count() == 4


def test_default_caps() -> None:
    bus = EventBus()
    assert (bus.max_total, bus.max_per_identity) == (4096, 256)


async def test_a_watcher_that_falls_behind_is_cut_off_with_a_resource_exhausted_error() -> None:
    bus = EventBus()
    slow = bus.subscribe(lambda ev: True, frozenset({HIT}), host="h1")
    for _ in range(QUEUE_LIMIT + 5):
        bus.publish(event("h1", HIT))
    for _ in range(QUEUE_LIMIT - 1):
        await slow.get()
    with pytest.raises(WatcherTooSlow) as cut:
        await slow.get()
    assert cut.value.reason == "WATCHER_TOO_SLOW"


async def test_a_failing_predicate_cuts_off_only_its_own_watcher() -> None:
    bus = EventBus()

    def broken(ev: Any) -> bool:
        raise KeyError("bug in a filter")

    bad = bus.subscribe(broken, frozenset({HIT}), host="h1")
    good = bus.subscribe(lambda ev: True, frozenset({HIT}), host="h1")
    bus.publish(event("h1", HIT))  # must not raise into the publisher (a commit path)
    bus.publish(event("h1", HIT))
    assert good.queue.qsize() == 2
    with pytest.raises(HwbpError, match="filter"):
        await bad.get()
