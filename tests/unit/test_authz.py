"""The permission rules alone: policy parsing, principals and decide(), no gRPC."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hwbp.errors import PermissionDenied, Unauthenticated
from hwbp.server.authz import (
    ANONYMOUS,
    Action,
    AuditLog,
    Authz,
    Policy,
    PolicyError,
    Principal,
    Role,
    Target,
    decide,
)

POLICY = """
[agents]
hosts = ["h1", "rack-*"]

[identities]
"admin:alice" = { role = "admin" }
"debugger:bob" = { role = "debugger", hosts = ["h1", "lab-*"] }
"viewer:carol" = { role = "viewer" }
"""

ALICE = Principal("admin:alice", Role.ADMIN)
BOB = Principal("debugger:bob", Role.DEBUGGER, ("h1", "lab-*"))
CAROL = Principal("viewer:carol", Role.VIEWER)
AGENT_H1 = Principal("agent:h1", Role.AGENT, ("h1",))


def rule(who: Principal, action: Action, target: Target) -> str:
    d = decide(who, action, target)
    return ("allow: " if d.allowed else "deny: ") + d.rule


def test_policy_maps_identities_and_admits_agents_by_host() -> None:
    policy = Policy.parse(POLICY)
    assert policy.principal("admin:alice") == ALICE
    assert policy.principal("debugger:bob") == BOB
    assert policy.principal("agent:rack-7") == Principal("agent:rack-7", Role.AGENT, ("rack-7",))
    with pytest.raises(Unauthenticated, match="not in the policy"):
        policy.principal("debugger:mallory")
    with pytest.raises(Unauthenticated, match="no agent for host 'h2'"):
        policy.principal("agent:h2")
    with pytest.raises(Unauthenticated):
        policy.principal(None)


def test_without_a_policy_everyone_is_admin_but_agents_stay_bound() -> None:
    open_policy = Policy()
    assert open_policy.principal(None) is ANONYMOUS
    assert open_policy.principal("someone").role is Role.ADMIN
    assert open_policy.principal("agent:h1") == AGENT_H1


@pytest.mark.parametrize(
    "text, problem",
    [
        ('[identities]\n"x" = { role = "root" }', "role must be"),
        ('[identities]\n"x" = { role = "agent" }', "role must be"),
        ('[identities]\n"x" = { role = "debugger" }', "needs hosts"),
        ('[identities]\n"agent:h1" = { role = "admin" }', "admitted by"),
        ('[identities]\n"x" = "admin"', "expected a table"),
        ("[agents]\nhosts = 3", "list of names"),
        ("not toml =", "policy"),
    ],
)
def test_malformed_policies_are_refused(text: str, problem: str) -> None:
    with pytest.raises(PolicyError, match=problem):
        Policy.parse(text)


def test_admin_may_do_anything() -> None:
    for action in Action:
        assert decide(ALICE, action, Target("h9", scope="system", kernel=True, owner="x")).allowed


def test_debugger_reserves_task_scopes_on_its_hosts_only() -> None:
    assert rule(BOB, Action.RESERVE, Target("h1", scope="task")).startswith("allow")
    assert rule(BOB, Action.RESERVE, Target("lab-3", scope="task+cpu")).startswith("allow")
    assert rule(BOB, Action.RESERVE, Target("h1", scope="process")).startswith("allow")
    assert rule(BOB, Action.RESERVE, Target("h1", scope="system")) == (
        "deny: debugger may not reserve system scope"
    )
    assert rule(BOB, Action.RESERVE, Target("h1", scope="cpu")) == (
        "deny: debugger may not reserve cpu scope"
    )
    assert rule(BOB, Action.RESERVE, Target("h1", scope="task", kernel=True)) == (
        "deny: debugger may not watch kernel addresses"
    )
    assert rule(BOB, Action.RESERVE, Target("h2", scope="task")) == (
        "deny: debugger may only use the hosts its policy lists"
    )


def test_debugger_changes_only_what_it_owns() -> None:
    mine = Target("h1", scope="task", owner="debugger:bob", name="r1")
    theirs = Target("h1", scope="task", owner="admin:alice", name="r2")
    for action in (Action.RELEASE, Action.MODIFY):
        assert decide(BOB, action, mine).allowed
        assert rule(BOB, action, theirs) == "deny: debugger may only change what it owns"
    assert not decide(BOB, Action.MODIFY, Target("h1", owner="debugger:bob", kernel=True)).allowed
    assert not decide(BOB, Action.SESSION_CLOSE, Target(owner="admin:alice")).allowed
    assert decide(BOB, Action.SESSION_OPEN, Target()).allowed
    assert decide(BOB, Action.SESSION_KEEPALIVE, Target(owner="debugger:bob")).allowed


def test_debugger_traces_and_simulates_on_its_hosts() -> None:
    assert decide(BOB, Action.PTRACE, Target("h1")).allowed
    assert not decide(BOB, Action.PTRACE, Target("h2")).allowed
    assert not decide(BOB, Action.PTRACE, Target("h1", owner="debugger:eve")).allowed
    assert decide(BOB, Action.SIMULATE, Target("lab-1")).allowed
    assert not decide(BOB, Action.SIMULATE, Target("h2")).allowed
    assert decide(BOB, Action.READ, Target("h2")).allowed  # reading is not using


def test_viewer_reads_and_changes_nothing() -> None:
    for action in Action:
        d = decide(CAROL, action, Target("h1", scope="task"))
        if action in (Action.READ, Action.PTRACE_READ):
            assert d.allowed
        elif action in (Action.AGENT_HELLO, Action.AGENT_REPORT):
            assert d.rule == "only an agent certificate may connect as an agent"
        else:
            assert d == decide(CAROL, Action.RESERVE, Target())
            assert d.rule == "viewer may not change anything"


def test_agent_serves_only_its_own_host() -> None:
    assert decide(AGENT_H1, Action.AGENT_HELLO, Target("h1")).allowed
    assert decide(AGENT_H1, Action.AGENT_REPORT, Target("h1")).allowed
    assert rule(AGENT_H1, Action.AGENT_HELLO, Target("h2")) == (
        "deny: an agent may only speak for the host its certificate names"
    )
    assert not decide(AGENT_H1, Action.AGENT_REPORT, Target("h2")).allowed
    for action in (Action.RESERVE, Action.READ, Action.PTRACE, Action.SESSION_OPEN):
        assert rule(AGENT_H1, action, Target("h1")) == (
            "deny: an agent may only serve its host's cpus"
        )
    assert not decide(BOB, Action.AGENT_HELLO, Target("h1")).allowed


class FakeContext:
    def __init__(self, name: str | None) -> None:
        self.name = name

    def auth_context(self) -> dict[str, list[bytes]]:
        if self.name is None:
            return {"transport_security_type": [b"insecure"]}
        return {"x509_common_name": [self.name.encode()]}


def test_hook_raises_typed_errors_and_audits_changes_and_refusals(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    audit = AuditLog(log)
    authz = Authz(Policy.parse(POLICY), tls=True, audit=audit, clock=lambda: "T")
    who = authz.check(FakeContext("debugger:bob"), "q1", Action.RESERVE, Target("h1", "task"))
    assert who == BOB
    authz.check(FakeContext("viewer:carol"), "q2", Action.READ, Target("h1"))  # not audited
    with pytest.raises(PermissionDenied) as denied:
        authz.check(FakeContext("debugger:bob"), "q3", Action.RESERVE, Target("h1", "system"))
    assert denied.value.metadata["rule"] == "debugger may not reserve system scope"
    assert denied.value.metadata["identity"] == "debugger:bob"
    with pytest.raises(Unauthenticated):
        authz.check(FakeContext("debugger:mallory"), "q4", Action.READ, Target())
    audit.close()
    lines: list[dict[str, Any]] = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(x["request_id"], x["decision"]) for x in lines] == [
        ("q1", "allow"),
        ("q3", "deny"),
        ("q4", "deny"),
    ]
    assert lines[0] == {
        "time": "T",
        "identity": "debugger:bob",
        "role": "debugger",
        "request_id": "q1",
        "action": "reserve",
        "target": {"host": "h1", "scope": "task"},
        "decision": "allow",
        "rule": "debugger on a host its policy lists",
    }
    assert lines[2]["identity"] == "debugger:mallory"


def test_without_tls_the_hook_allows_everything_and_names_nobody() -> None:
    who = Authz().check(FakeContext(None), "q", Action.RESERVE, Target("h1", "system", True))
    assert who is ANONYMOUS and who.name == ""


def test_a_task_exit_is_the_hosts_agent_or_an_admin_never_a_debugger() -> None:
    """A task exit releases whatever the task holds, anyone's (issue 13, item 6)."""
    h1 = Target("h1", name="task 7")
    assert rule(ALICE, Action.TASK_EXIT, h1) == "allow: admin may do anything"
    assert rule(AGENT_H1, Action.TASK_EXIT, h1) == "allow: agent of its own host"
    assert rule(AGENT_H1, Action.TASK_EXIT, Target("h2")).startswith("deny: an agent may only")
    assert rule(BOB, Action.TASK_EXIT, h1) == (
        "deny: a task exit is reported by its host's agent or drilled by an admin"
    )
    assert rule(CAROL, Action.TASK_EXIT, h1) == "deny: viewer may not change anything"
    assert rule(BOB, Action.SIMULATE, h1).startswith("allow")  # switches and accesses


def test_only_a_sessions_owner_adds_to_it_whatever_the_role() -> None:
    """Reserve and attach into another identity's session (issue 13, item 8)."""
    alices = Target("h1", scope="task", session_owner="admin:alice")
    for action in (Action.RESERVE, Action.PTRACE):
        assert rule(BOB, action, alices) == "deny: only a session's owner may add to it"
        assert rule(ALICE, action, alices).startswith("allow")
        bobs = Target("h1", scope="task", session_owner="debugger:bob")
        assert rule(BOB, action, bobs).startswith("allow")
        assert rule(ALICE, action, bobs) == "deny: only a session's owner may add to it"
    # Reading with someone's session named adds nothing to it.
    assert rule(CAROL, Action.PTRACE_READ, alices) == "allow: viewer may read"
    # Without TLS nobody is identified: the owner a client named cannot be checked.
    assert decide(ANONYMOUS, Action.RESERVE, Target("h1", session_owner="gdb")).allowed


def test_only_an_admin_may_forget_a_host() -> None:
    where = Target("h1", name="host h1")
    assert decide(ALICE, Action.HOST_FORGET, where).allowed
    for who in (BOB, CAROL, Principal("agent:h1", Role.AGENT, ("h1",))):
        assert not decide(who, Action.HOST_FORGET, where).allowed
    assert decide(BOB, Action.HOST_FORGET, where).rule == "only an admin may forget a host"
