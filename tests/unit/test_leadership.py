"""The leadership machine, example by example: events in, actions out."""

from __future__ import annotations

import pytest

from hwbp.leadership import (
    Campaign,
    Fenced,
    Follow,
    GrantLease,
    KeepAlive,
    KeptAlive,
    Leadership,
    LeaseGranted,
    LeaseLost,
    Lost,
    Resign,
    Restored,
    RestoreFailed,
    Role,
    Serve,
    Start,
    StepDown,
    Stop,
    StoreFailed,
    TakeOver,
    Tick,
    Won,
)

TTL = 3.0


def leader(now: float = 0.0) -> Leadership:
    m = Leadership("a:1", ttl=TTL, poll=0.25)
    assert m.handle(Start(now)) == [GrantLease(TTL)]
    assert m.handle(LeaseGranted(7, now, now)) == [Campaign(7)]
    assert m.handle(Won(7, 42, now)) == [TakeOver(42)]
    assert m.handle(Restored(42, now)) == [Follow("a:1"), Serve(42)]
    m.validate()
    return m


def test_a_replica_leads_only_after_it_restored_the_ledger() -> None:
    m = Leadership("a:1", ttl=TTL)
    m.handle(Start(0.0))
    m.handle(LeaseGranted(7, 0.0, 0.0))
    m.handle(Won(7, 42, 0.0))
    assert m.role is Role.TAKING_OVER and not m.serving
    m.handle(Restored(41, 0.0))  # a restore of another term is not ours
    assert not m.serving
    m.handle(Restored(42, 0.0))
    assert m.serving and m.leader == "a:1"


def test_a_follower_campaigns_every_poll_and_follows_the_hint() -> None:
    m = Leadership("b:2", ttl=TTL, poll=0.25)
    m.handle(Start(0.0))
    assert m.handle(LeaseGranted(9, 0.0, 0.0)) == [Campaign(9)]
    assert m.handle(Lost(9, "a:1", 0.01)) == [Follow("a:1")]
    assert m.handle(Tick(0.1)) == []
    assert m.handle(Tick(0.26)) == [Campaign(9)]
    assert m.handle(Lost(9, "a:1", 0.27)) == []  # same hint: nothing to tell
    assert m.role is Role.FOLLOWER


def test_keepalives_every_third_of_the_ttl_extend_validity_from_when_they_were_sent() -> None:
    m = leader()
    assert m.handle(Tick(1.0)) == [KeepAlive(7)]
    assert m.handle(Tick(1.5)) == []  # one keepalive out at a time
    m.handle(KeptAlive(7, 1.0, 1.9))
    assert m.valid_until == 1.0 + TTL
    assert m.handle(Tick(2.9)) == [KeepAlive(7)]


def test_a_leader_whose_lease_cannot_be_renewed_steps_down_before_it_expires() -> None:
    m = leader()
    m.handle(Tick(1.0))  # keepalive out...
    m.handle(StoreFailed("keepalive", 7, "unreachable", 1.5))  # ...and lost
    assert m.serving
    out = m.handle(Tick(TTL))  # validity: granted at 0 + ttl
    assert StepDown in {type(a) for a in out} and Resign(7) in out
    assert not m.serving and m.leader == ""
    assert GrantLease(TTL) not in out  # not at once: after a pause
    assert m.handle(Tick(TTL + 0.3)) == [GrantLease(TTL)]


def test_a_paused_leader_steps_down_on_its_first_tick() -> None:
    m = leader()
    out = m.handle(Tick(100.0))  # SIGCONT long after the lease expired
    assert isinstance(out[0], StepDown) and m.role is Role.STARTING


def test_a_fenced_write_steps_down_at_once() -> None:
    m = leader()
    assert m.handle(Fenced(41, 0.5)) == []  # an old term's write
    out = m.handle(Fenced(42, 0.5))
    assert isinstance(out[0], StepDown) and Resign(7) in out and Follow("") in out
    m.validate()


def test_a_lost_lease_or_failed_restore_gives_leadership_up() -> None:
    m = leader()
    out = m.handle(LeaseLost(7, "expired", 1.0))
    assert isinstance(out[0], StepDown) and m.role is Role.STARTING
    m2 = Leadership("a:1", ttl=TTL)
    m2.handle(Start(0.0))
    m2.handle(LeaseGranted(7, 0.0, 0.0))
    m2.handle(Won(7, 5, 0.0))
    out = m2.handle(RestoreFailed(5, "ledger corrupt", 0.1))
    assert StepDown("taking over failed: ledger corrupt") in out and Resign(7) in out


def test_answers_for_an_old_lease_are_ignored_or_resigned() -> None:
    m = leader()
    m.handle(LeaseLost(7, "expired", 1.0))
    m.handle(LeaseGranted(8, 1.0, 1.0))
    assert m.handle(Won(7, 50, 1.1)) == [Resign(7)]
    assert m.handle(KeptAlive(7, 1.0, 1.1)) == []
    assert m.role is Role.FOLLOWER and m.lease == 8


def test_stop_resigns_and_ignores_everything_after() -> None:
    m = leader()
    out = m.handle(Stop(1.0))
    assert out == [StepDown("stopping"), Resign(7)]
    assert m.handle(Tick(5.0)) == [] and m.next_deadline() is None
    assert m.handle(LeaseGranted(9, 5.0, 5.0)) == [Resign(9)]


def test_a_failed_grant_is_retried_after_a_pause() -> None:
    m = Leadership("a:1", ttl=TTL, poll=0.25)
    m.handle(Start(0.0))
    assert m.handle(LeaseLost(0, "unreachable", 0.1)) == []
    assert m.next_deadline() == pytest.approx(0.35)
    assert m.handle(Tick(0.35)) == [GrantLease(TTL)]


def test_a_bad_ttl_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        Leadership("a:1", ttl=0)
