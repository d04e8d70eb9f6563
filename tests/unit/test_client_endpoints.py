"""Which replica a client or agent talks to next: client/endpoints.py, pure."""

from __future__ import annotations

import pytest

from hwbp.client.endpoints import DEFAULT_ENDPOINT, EndpointError, Endpoints, parse


def test_endpoints_come_from_the_argument_then_the_environment_then_the_default() -> None:
    assert parse("a:1, b:2,a:1") == ["a:1", "b:2"]
    assert parse(["a:1", "c:3"]) == ["a:1", "c:3"]
    assert parse(None, env={"HWBP_ARBITER": "x:1,y:2"}) == ["x:1", "y:2"]
    assert parse("", env={}) == [DEFAULT_ENDPOINT]
    assert parse("[::1]:5") == ["[::1]:5"]


@pytest.mark.parametrize("bad", ["a", "a:", ":1", "a:b", "a:1,,b:2"])
def test_a_malformed_endpoint_is_named(bad: str) -> None:
    with pytest.raises(EndpointError, match="not HOST:PORT"):
        parse(bad)


def test_a_not_leader_hint_is_followed_even_to_a_replica_not_listed() -> None:
    e = Endpoints.of("a:1,b:2,c:3")
    assert e.after("NOT_LEADER", {"leader": "c:3"}) == "c:3" and e.current == "c:3"
    assert e.after("NOT_LEADER", {"leader": "c:3"}) is None  # already there
    assert e.after("NOT_LEADER", {"leader": "d:4"}) == "d:4"
    assert e.learned == ["d:4"] and e.addresses[-1] == "d:4"


def test_without_a_hint_the_next_replica_is_tried_in_turn() -> None:
    e = Endpoints.of("a:1,b:2")
    assert e.after("NOT_LEADER", {"leader": ""}) == "b:2"
    assert e.after("", {}) == "a:1"  # a transport failure: that replica may be down
    assert e.after("LEADERSHIP_LOST", {}) == "b:2"


def test_an_answer_on_the_merits_keeps_the_replica() -> None:
    e = Endpoints.of("a:1,b:2")
    for reason in ("NO_FREE_SLOT", "LEDGER_WRITE_FAILED", "INVALID_ARGUMENT"):
        assert e.after(reason, {"leader": "b:2"}) is None and e.current == "a:1"


def test_a_single_endpoint_never_moves_unless_told_where_the_leader_is() -> None:
    e = Endpoints.of("a:1")
    assert e.after("", {}) is None and not e.several
    assert e.after("NOT_LEADER", {"leader": "b:2"}) == "b:2"


def test_hwbpctl_names_a_malformed_endpoint_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    from hwbp.client.cli import main

    assert main(["--arbiter", "a:1,b", "ls"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "hwbpctl: arbiter endpoint 'b' is not HOST:PORT"
