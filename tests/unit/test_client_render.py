"""What hwbpctl and the SDK make of the arbiter's honest answers (pure, no server):
applied and pending CPUs of a change, the link state of each CPU, the fencing events,
and ``expect_owner`` on release and modify."""

from __future__ import annotations

import pytest

from hwbp.client import cli_render as render
from hwbp.client import wire
from hwbp.client.cli_args import parse
from hwbp.client.errors import UsageError
from hwbp.client.values import Change, CpuInfo, EventKind
from hwbp.v1 import arbiter_pb2, types_pb2


def reservation(rid: str = "r3", host: str = "web1") -> types_pb2.Reservation:
    return types_pb2.Reservation(
        id=rid,
        target=types_pb2.Target(host=host, scope=types_pb2.SCOPE_SYSTEM),
        spec=types_pb2.BreakpointSpec(addr=0x1000, len=8, type=types_pb2.BREAKPOINT_TYPE_WRITE),
        owner="bob",
        generation=7,
        ptrace_index=-1,
    )


def change(applied: list[int], pending: list[int]) -> Change:
    resp = arbiter_pb2.ReserveResponse(
        reservation=reservation(), generation=7, applied_cpus=applied, pending_cpus=pending
    )
    return wire.change(resp)


# --- applied and pending CPUs ---------------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [arbiter_pb2.ReserveResponse, arbiter_pb2.ReleaseResponse, arbiter_pb2.ModifyResponse],
)
def test_every_change_response_decodes_applied_and_pending_cpus(response: type) -> None:
    got = wire.change(
        response(reservation=reservation(), generation=7, applied_cpus=[0, 2], pending_cpus=[1])
    )
    assert (got.applied_cpus, got.pending_cpus) == ((0, 2), (1,))
    assert got.reservation.id == "r3" and got.pending
    # It reads like the reservation it changed, as the SDK's results always have.
    assert (got.id, got.addr, got.owner, got.generation) == ("r3", 0x1000, "bob", 7)


def test_a_change_applied_everywhere_is_not_pending() -> None:
    got = change([0, 1], [])
    assert not got.pending and render.pending_warning("reserve", got) is None


def test_the_warning_names_host_cpu_and_what_happens_next() -> None:
    line = render.pending_warning("reserve", change([0], [1]))
    assert line == (
        "hwbpctl: warning: r3 is committed but pending on web1 cpu 1 (agent offline or "
        "fenced): it is applied when the agent resyncs"
    )


def test_the_warning_for_several_cpus_and_for_release_and_modify() -> None:
    several = render.pending_warning("reserve", change([], [1, 3]))
    assert several is not None
    assert "pending on web1 cpus 1, 3 (agents offline or fenced)" in several
    assert several.endswith("when the agents resync")
    release = render.pending_warning("release", change([0], [1]))
    modify = render.pending_warning("modify", change([0], [1]))
    assert release is not None and release.startswith("hwbpctl: warning: the release of r3 ")
    assert modify is not None and modify.startswith("hwbpctl: warning: the change to r3 ")


def test_change_json_carries_the_reservation_and_cpu_lists_as_ints() -> None:
    doc = render.change_json(change([0, 2], [1]))
    assert (doc["id"], doc["addr"], doc["generation"]) == ("r3", 0x1000, 7)
    assert (doc["applied_cpus"], doc["pending_cpus"]) == ([0, 2], [1])
    assert all(type(c) is int for c in doc["applied_cpus"] + doc["pending_cpus"])


# --- expect_owner ---------------------------------------------------------------------


def test_release_and_modify_take_expect_owner() -> None:
    assert parse(["release", "r3", "--expect-owner", "bob"]).expect_owner == "bob"
    assert parse(["release", "r3"]).expect_owner == ""
    m = parse(["modify", "r3", "--disable", "--expect-owner", "bob"])
    assert (m.expect_owner, m.enabled) == ("bob", False)


def test_expect_owner_alone_is_not_a_modification_and_must_name_someone() -> None:
    with pytest.raises(UsageError, match="nothing to change"):
        parse(["modify", "r3", "--expect-owner", "bob"])
    with pytest.raises(UsageError, match="expect-owner"):
        parse(["release", "r3", "--expect-owner", ""])


def test_requests_carry_expect_owner() -> None:
    rel = wire.release_request("r3", session_id="", request_id="q", expect_owner="bob")
    assert (rel.reservation_id, rel.expect_owner, rel.request_id) == ("r3", "bob", "q")
    mod = wire.modify_request(
        "r3",
        addr=None,
        len=None,
        type=None,
        enabled=True,
        session_id="",
        request_id=None,
        expect_owner="bob",
    )
    assert (mod.expect_owner, mod.enabled) == ("bob", True)


# --- link state in the inventory ------------------------------------------------------


def inventory(cpu: int, link: str, reason: str = "", *, pending: bool = False) -> CpuInfo:
    return wire.cpu_inventory(
        types_pb2.CpuInventory(
            host="web1",
            cpu=cpu,
            online=link in ("live", "resyncing"),
            slots=4,
            backend="sim",
            link=link,
            link_reason=reason,
            pending=pending,
        )
    )


def test_inventory_decodes_link_reason_and_pending() -> None:
    c = inventory(1, "fenced", "missed the ack deadline of generation 4", pending=True)
    assert (c.link, c.link_reason, c.pending) == (
        "fenced",
        "missed the ack deadline of generation 4",
        True,
    )
    doc = render.cpu_json(c)
    assert (doc["link"], doc["link_reason"], doc["pending"]) == (c.link, c.link_reason, True)


def test_an_arbiter_that_sends_no_link_state_is_read_from_online() -> None:
    assert inventory(0, "").link == "offline"
    old = wire.cpu_inventory(types_pb2.CpuInventory(host="web1", cpu=0, online=True))
    assert old.link == "live"


def test_cpus_table_has_a_link_column_and_the_wide_form_says_why() -> None:
    cpus = [inventory(0, "live"), inventory(1, "fenced", "missed ack deadline", pending=True)]
    header, live, fenced = render.cpus_table(cpus).splitlines()
    cols = header.split()
    assert "LINK" in cols and "REASON" not in cols
    assert live.split()[cols.index("LINK")] == "live"
    assert fenced.split()[cols.index("LINK")] == "fenced"
    wide = render.cpus_table(cpus, wide=True)
    assert "REASON" in wide.splitlines()[0] and "PENDING" in wide.splitlines()[0]
    assert "missed ack deadline" in wide
    assert parse(["cpus", "--wide"]).wide and not parse(["cpus"]).wide


# --- the fencing events ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected", "word"),
    [
        (types_pb2.EVENT_KIND_AGENT_FENCED, EventKind.AGENT_FENCED, "agent_fenced"),
        (types_pb2.EVENT_KIND_RESYNC_REFUSED, EventKind.RESYNC_REFUSED, "resync_refused"),
    ],
)
def test_watch_renders_the_fencing_events(kind: int, expected: EventKind, word: str) -> None:
    ev = wire.event(
        types_pb2.Event(kind=kind, host="web1", cpu=1, generation=4, seq=12, reason="why")  # type: ignore[arg-type]
    )
    assert ev.kind is expected
    # Not a change: live only, so no "#seq" to resume after is shown for it.
    assert render.event_line(ev) == f"{word} web1 cpu 1 gen 4 - why"
    assert render.jsonable(ev)["kind"] == word
    assert wire.watch_request(None, None, [expected], "q").kinds == [kind]


# --- change events: who, what was released, the seq to resume after ---------------------


def test_lease_expired_names_the_session_the_owner_and_what_was_released() -> None:
    ev = wire.event(
        types_pb2.Event(
            kind=types_pb2.EVENT_KIND_LEASE_EXPIRED,
            host="web1",
            generation=9,
            seq=41,
            session="s-7f3a",
            owner="ann@lab",
            reservation_ids=["r3", "r12"],
            reason="lease expired after 10s",
        )
    )
    assert render.event_line(ev) == (
        "#41 lease_expired web1 owner ann@lab session s-7f3a released r3, r12 gen 9 "
        "- lease expired after 10s"
    )
    doc = render.jsonable(ev)
    assert doc["seq"] == 41 and doc["session"] == "s-7f3a" and doc["owner"] == "ann@lab"
    assert doc["reservation_ids"] == ["r3", "r12"]


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        (types_pb2.Target(host="web1", scope=types_pb2.SCOPE_CPU, cpu=12), "cpu 12"),
        (types_pb2.Target(host="web1", scope=types_pb2.SCOPE_TASK, task=4242), "task 4242"),
        (
            types_pb2.Target(host="web1", scope=types_pb2.SCOPE_TASK_CPU, task=7, cpu=10),
            "task 7 cpu 10",
        ),
        (types_pb2.Target(host="web1", scope=types_pb2.SCOPE_SYSTEM), "system"),
    ],
)
def test_a_released_event_names_whose_it_was_and_never_shows_a_cpu_in_hex(
    target: types_pb2.Target, shown: str
) -> None:
    msg = types_pb2.Event(
        kind=types_pb2.EVENT_KIND_RELEASED,
        host="web1",
        generation=3,
        seq=7,
        session="s1",
        owner="bob@box",
        reservation_ids=["r5"],
    )
    if target.HasField("cpu"):
        msg.cpu = target.cpu
    msg.reservation.id = "r5"
    msg.reservation.owner = "bob@box"
    msg.reservation.session_id = "s1"
    msg.reservation.target.CopyFrom(target)
    msg.reservation.spec.addr, msg.reservation.spec.len = 0x10, 4
    msg.reservation.spec.type = types_pb2.BREAKPOINT_TYPE_WRITE
    line = render.event_line(wire.event(msg))
    assert line.startswith("#7 released web1")
    assert f"r5 (owner bob@box session s1, {shown} 0x10 len 4 w)" in line
    assert "0xc" not in line and "0xa" not in line  # cpus 12 and 10 stay decimal


def test_live_only_events_show_no_seq_and_subscribed_says_where_it_resumes() -> None:
    hit = types_pb2.Event(kind=types_pb2.EVENT_KIND_RELOAD, host="web1", generation=3, seq=7)
    assert render.event_line(wire.event(hit)) == "reload web1 gen 3"
    sub = types_pb2.Event(kind=types_pb2.EVENT_KIND_SUBSCRIBED, seq=7)
    assert render.event_line(wire.event(sub)) == "subscribed: watching every host after seq 7"


def test_watch_since_is_parsed_and_checked() -> None:
    args = parse(["watch", "--since", "12"])
    assert args.since == 12 and args.reconnect
    assert parse(["watch"]).since is None
    assert not parse(["watch", "--no-reconnect"]).reconnect
    with pytest.raises(UsageError):
        parse(["watch", "--since", "-1"])
    assert wire.watch_request(None, None, [], "q", since=5).since == 5
    assert not wire.watch_request(None, None, [], "q").HasField("since")
