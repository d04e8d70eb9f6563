"""SIGHUP: read the policy file again, say what changed, keep the old one if it is bad.

Granting or revoking a role must not need a restart (that would drop every agent's
stream and every session). The new policy applies to the next call; calls already
decided stand. A file that does not parse is reported and ignored: an operator's typo
must not lock everyone out, nor open the arbiter to everyone.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hwbp.server.authz import Authz, Policy, PolicyError, Principal

log = logging.getLogger("hwbp.server")


def _show(who: Principal) -> str:
    hosts = f" on {', '.join(who.hosts)}" if who.hosts else ""
    return f"{who.role.value}{hosts}"


def changes(old: Policy, new: Policy) -> list[str]:
    """What ``new`` changes from ``old``, one phrase per identity or setting."""
    out: list[str] = []
    for name in sorted(set(old.identities) | set(new.identities)):
        before, after = old.identities.get(name), new.identities.get(name)
        if before is None and after is not None:
            out.append(f"added {name} ({_show(after)})")
        elif after is None and before is not None:
            out.append(f"removed {name} (was {_show(before)})")
        elif before is not None and after is not None and before != after:
            out.append(f"{name}: {_show(before)} -> {_show(after)}")
    if old.agent_hosts != new.agent_hosts:
        out.append(f"agents.hosts: {list(old.agent_hosts)} -> {list(new.agent_hosts)}")
    if old.strict != new.strict:
        out.append("unknown identities are now " + ("refused" if new.strict else "admins"))
    return out


def reload_policy(authz: Authz, path: str | Path | None) -> bool:
    """Replace ``authz``'s policy with the file's; False (and a logged error) if it is bad."""
    if path is None:
        log.info("SIGHUP: no --policy file was given; nothing to reload")
        return False
    try:
        new = Policy.load(path)
    except PolicyError as err:
        log.error("SIGHUP: policy not reloaded, the previous one stays in force: %s", err)
        return False
    said = changes(authz.policy, new)
    authz.policy = new
    log.info("SIGHUP: policy %s reloaded: %s", path, "; ".join(said) or "no change")
    return True
