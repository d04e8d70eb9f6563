"""The follower gate's decision and its refusal (the interceptor runs in test_ha.py)."""

from __future__ import annotations

from hwbp.errors import ErrorClass, NotLeader
from hwbp.server.gate import Gate


def test_a_follower_refuses_naming_the_leader() -> None:
    g = Gate("b:2")
    g.leader = "a:1"
    assert not g.open
    err = g.refusal()
    assert isinstance(err, NotLeader) and err.error_class is ErrorClass.UNAVAILABLE
    assert err.metadata == {"leader": "a:1", "member": "b:2"}
    assert "follower" in err.message and "a:1" in err.message


def test_no_leader_known_is_an_empty_hint_never_ourselves() -> None:
    g = Gate("b:2")
    assert g.refusal().metadata["leader"] == ""
    g.leader = "b:2"  # our own key from an old lease, still in etcd
    assert g.refusal().metadata["leader"] == ""


def test_a_leader_is_open_only_while_its_lease_is_certainly_alive() -> None:
    g = Gate("a:1")
    g.leading = True
    alive = [True]
    g.valid = lambda: alive[0]
    assert g.open
    alive[0] = False  # a paused process woke up past its validity
    assert not g.open
    err = g.refusal()
    assert err.metadata["leader"] == "" and "lapsed" in err.message
