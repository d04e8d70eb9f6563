"""SIGHUP's policy reload: what it says changed, and that a bad file changes nothing."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hwbp.server.authz import Authz, Policy, Role
from hwbp.server.reload import changes, reload_policy

OLD = """
[agents]
hosts = ["h*"]
[identities]
"admin:alice" = { role = "admin" }
"debugger:bob" = { role = "debugger", hosts = ["h1"] }
"viewer:carol" = { role = "viewer" }
"""
NEW = """
[agents]
hosts = ["h*", "web*"]
[identities]
"admin:alice" = { role = "admin" }
"debugger:bob" = { role = "debugger", hosts = ["h1", "h2"] }
"debugger:dave" = { role = "debugger", hosts = ["web*"] }
"""


def test_every_change_is_named() -> None:
    said = changes(Policy.parse(OLD), Policy.parse(NEW))
    assert said == [
        "debugger:bob: debugger on h1 -> debugger on h1, h2",
        "added debugger:dave (debugger on web*)",
        "removed viewer:carol (was viewer)",
        "agents.hosts: ['h*'] -> ['h*', 'web*']",
    ]
    assert changes(Policy.parse(OLD), Policy.parse(OLD)) == []


def test_a_reload_replaces_the_policy_and_a_bad_file_keeps_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(OLD)
    authz = Authz(Policy.load(path), tls=True)
    path.write_text(NEW)
    with caplog.at_level(logging.INFO, logger="hwbp.server"):
        assert reload_policy(authz, path)
    assert authz.policy.principal("debugger:dave").role is Role.DEBUGGER
    assert "added debugger:dave" in caplog.text

    kept = authz.policy
    path.write_text('[identities]\n"x:y" = { role = "pirate" }\n')
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hwbp.server"):
        assert not reload_policy(authz, path)
    assert authz.policy is kept
    assert "not reloaded" in caplog.text and "role must be" in caplog.text
    assert not reload_policy(authz, None)
