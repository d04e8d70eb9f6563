"""Who may do what: identities from client certificates, roles from a policy file.

Three steps, the first two pure (no gRPC, no clock, no I/O) so they are tested alone:
``Policy.principal`` turns a certificate's name into a ``Principal`` (or refuses it as
unauthenticated), ``decide`` answers allow or deny for one action on one target, naming
the rule. ``Authz.check`` is the one hook the servicers call at the top of each RPC: it
reads the peer certificate, decides, writes the audit line and raises the typed error
that the servicer's error table turns into PERMISSION_DENIED or UNAUTHENTICATED.

Without a policy file every caller is an admin, as before security existed; with TLS
the certificate still names the caller, so owners are recorded truthfully and an agent
stays bound to the host its certificate names.
"""

from __future__ import annotations

import datetime
import json
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Protocol, TextIO

from hwbp.errors import PermissionDenied, Unauthenticated
from hwbp.model import Reservation
from hwbp.server import outcomes
from hwbp.v1 import arbiter_pb2, types_pb2
from hwbp.validate import is_kernel_address

AGENT_PREFIX = "agent:"


class Role(Enum):
    ADMIN = "admin"  # anything: system scope, kernel addresses, anyone's reservations
    DEBUGGER = "debugger"  # task scopes, ptrace and simulation on its hosts; only its own
    VIEWER = "viewer"  # inventory, list and watch
    AGENT = "agent"  # the agent link of the one host its certificate names


class Action(Enum):
    RESERVE = "reserve"
    RELEASE = "release"
    MODIFY = "modify"
    READ = "read"  # list, inventory, watch
    PTRACE = "ptrace"  # attach, detach, poke
    PTRACE_READ = "ptrace.read"  # peek, traps
    SIMULATE = "simulate"  # context switch, memory access
    TASK_EXIT = "task.exit"  # ends everything a task holds, whoever holds it
    SESSION_OPEN = "session.open"
    SESSION_CLOSE = "session.close"
    SESSION_KEEPALIVE = "session.keepalive"
    AGENT_HELLO = "agent.hello"
    AGENT_REPORT = "agent.report"  # acks, NACKs, hits, exits on a registered stream
    HOST_FORGET = "host.forget"  # retire a host from the inventory and the ledger

    @property
    def audited(self) -> bool:
        """Allowed reads and the chatter of live streams are not worth an audit line."""
        return self not in _QUIET


_READS = frozenset({Action.READ, Action.PTRACE_READ})
_QUIET = _READS | {Action.SESSION_KEEPALIVE, Action.AGENT_REPORT}
_AGENT_ACTIONS = frozenset({Action.AGENT_HELLO, Action.AGENT_REPORT})


@dataclass(frozen=True)
class Target:
    """What an action touches; only the fields a rule looks at are filled in."""

    host: str = ""
    scope: str = ""  # reserve: system, cpu, task, task+cpu or process
    kernel: bool = False  # a kernel address, or a request for one
    owner: str | None = None  # holder of what is changed; None: nothing is held yet
    name: str = ""  # reservation id, task or session: for the audit line only
    session_owner: str | None = None  # owner of the session added to; None: no session

    def describe(self) -> str:
        what = self.name or (f"{self.scope} scope" if self.scope else "")
        where = f"on host {self.host}" if self.host else ""
        return " ".join(p for p in (what, where) if p) or "the arbiter"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. ``name`` is "" when TLS is off and nobody is identified."""

    name: str
    role: Role
    hosts: tuple[str, ...] = ()  # debugger: host patterns it may use; agent: its one host

    def may_use(self, host: str) -> bool:
        return any(fnmatchcase(host, pattern) for pattern in self.hosts)


ANONYMOUS = Principal("", Role.ADMIN)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: str  # the rule that decided, in words a person can look up in the policy docs


def _allow(rule: str) -> Decision:
    return Decision(True, rule)


def _deny(rule: str) -> Decision:
    return Decision(False, rule)


def decide(who: Principal, action: Action, target: Target) -> Decision:
    """Allow or deny ``action`` on ``target`` for ``who``; pure, so tests need no server."""
    joining = target.session_owner is not None and action not in _READS
    if who.name and joining and target.session_owner != who.name:
        # A session is one identity's lease: what is in it ends when *its* client stops.
        return _deny("only a session's owner may add to it")
    if who.role is Role.ADMIN:
        return _allow("admin may do anything")
    if who.role is Role.AGENT:
        if action not in _AGENT_ACTIONS and action is not Action.TASK_EXIT:
            return _deny("an agent may only serve its host's cpus")
        if target.host != who.hosts[0]:
            return _deny("an agent may only speak for the host its certificate names")
        return _allow("agent of its own host")
    if action in _AGENT_ACTIONS:
        return _deny("only an agent certificate may connect as an agent")
    if action in _READS:
        return _allow(f"{who.role.value} may read")
    if who.role is Role.VIEWER:
        return _deny("viewer may not change anything")
    if action is Action.HOST_FORGET:
        return _deny("only an admin may forget a host")
    return _decide_debugger(who, action, target)


def _decide_debugger(who: Principal, action: Action, target: Target) -> Decision:
    if action is Action.SESSION_OPEN:
        return _allow("debugger may open sessions")
    if action is Action.TASK_EXIT:
        # It releases whatever the task holds, anyone's: a fact only its host can report.
        return _deny("a task exit is reported by its host's agent or drilled by an admin")
    if target.owner is not None and target.owner != who.name:
        return _deny("debugger may only change what it owns")
    if action in (Action.SESSION_CLOSE, Action.SESSION_KEEPALIVE):
        return _allow("debugger may end or renew its own sessions")
    if not who.may_use(target.host):
        return _deny("debugger may only use the hosts its policy lists")
    if action is Action.RESERVE and target.scope in ("system", "cpu"):
        return _deny(f"debugger may not reserve {target.scope} scope")
    if target.kernel:
        return _deny("debugger may not watch kernel addresses")
    return _allow("debugger on a host its policy lists")


# --- the policy file --------------------------------------------------------------------


class PolicyError(ValueError):
    """The policy file is malformed; the arbiter refuses to start rather than guess."""


@dataclass(frozen=True)
class Policy:
    """Identities and their roles. ``strict``: an identity not named here is refused."""

    identities: Mapping[str, Principal] = field(default_factory=dict)
    agent_hosts: tuple[str, ...] = ("*",)
    strict: bool = False

    def principal(self, name: str | None) -> Principal:
        """The caller behind a certificate name (None: no TLS); Unauthenticated if unknown."""
        if name is None:
            if self.strict:
                raise Unauthenticated("no client certificate names the caller")
            return ANONYMOUS
        if name.startswith(AGENT_PREFIX):
            host = name.removeprefix(AGENT_PREFIX)
            if host and any(fnmatchcase(host, p) for p in self.agent_hosts):
                return Principal(name, Role.AGENT, (host,))
            raise Unauthenticated(f"the policy admits no agent for host {host!r}", identity=name)
        known = self.identities.get(name)
        if known is not None:
            return known
        if self.strict:
            raise Unauthenticated(f"identity {name!r} is not in the policy", identity=name)
        return Principal(name, Role.ADMIN)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise PolicyError(f"cannot read policy {path}: {err.strerror}") from None
        return cls.parse(text, str(path))

    @classmethod
    def parse(cls, text: str, source: str = "policy") -> Policy:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise PolicyError(f"{source}: {err}") from None
        agents = _strings(doc.get("agents", {}).get("hosts", ["*"]), f"{source}: agents.hosts")
        identities: dict[str, Principal] = {}
        for name, entry in doc.get("identities", {}).items():
            where = f"{source}: identities.{name!r}"
            if name.startswith(AGENT_PREFIX):
                raise PolicyError(f"{where}: agents are admitted by [agents], not listed")
            if not isinstance(entry, dict):
                raise PolicyError(f'{where}: expected a table such as {{ role = "viewer" }}')
            try:
                role = Role(entry.get("role"))
            except ValueError:
                raise PolicyError(f"{where}: role must be admin, debugger or viewer") from None
            if role is Role.AGENT:
                raise PolicyError(f"{where}: role must be admin, debugger or viewer")
            hosts = _strings(entry.get("hosts", []), f"{where}.hosts")
            if role is Role.DEBUGGER and not hosts:
                raise PolicyError(f'{where}: a debugger needs hosts (["*"] for every host)')
            identities[name] = Principal(name, role, hosts)
        return cls(identities, agents, strict=True)


def _strings(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"{where}: expected a list of names")
    return tuple(value)


# --- the hook ---------------------------------------------------------------------------


class AuditLog:
    """JSON lines, one per decision on a change (and per refusal), flushed as written."""

    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._out: TextIO = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives with the server

    def write(self, record: Mapping[str, object]) -> None:
        self._out.write(json.dumps(record, sort_keys=True) + "\n")
        self._out.flush()

    def close(self) -> None:
        self._out.close()


class Peer(Protocol):
    """What authorization reads of a call: its peer's TLS identity (a servicer context)."""

    def auth_context(self) -> Mapping[str, Iterable[bytes]]: ...


def peer_identity(context: Peer) -> str | None:
    """The certificate's common name, else its first subject alternative name."""
    auth = context.auth_context() or {}
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for value in auth.get(key, ()):
            return bytes(value).decode("utf-8", "replace")
    return None


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


class Authz:
    """The servicers' hook: identify the peer, decide, audit, raise on a refusal."""

    def __init__(
        self,
        policy: Policy | None = None,
        *,
        tls: bool = False,
        audit: AuditLog | None = None,
        clock: Callable[[], str] = _now,
    ) -> None:
        self.policy = policy or Policy()
        self.tls = tls
        self.audit = audit
        self.clock = clock

    def identify(self, context: Peer) -> Principal:
        return self.policy.principal(peer_identity(context) if self.tls else None)

    def check(self, context: Peer, request_id: str, action: Action, target: Target) -> Principal:
        """Who is calling, if ``action`` on ``target`` is allowed; else raise and audit."""
        try:
            who = self.identify(context)
        except Unauthenticated as err:
            name = err.metadata.get("identity", "")
            self._record(name, "", request_id, action, target, False, err.message)
            raise
        return self.authorize(who, request_id, action, target)

    def authorize(
        self, who: Principal, request_id: str, action: Action, target: Target
    ) -> Principal:
        decision = decide(who, action, target)
        if action.audited or not decision.allowed:
            self._record(
                who.name,
                who.role.value,
                request_id,
                action,
                target,
                decision.allowed,
                decision.rule,
            )
        if decision.allowed:
            return who
        # Not logged here: whoever catches the refusal logs it, once (the servicers'
        # guard for calls, the agent link for hellos and reports).
        raise PermissionDenied(
            f"{who.name or 'anonymous'} ({who.role.value}) may not {action.value} "
            f"{target.describe()}: {decision.rule}",
            rule=decision.rule,
            identity=who.name,
            action=action.value,
            host=target.host or None,
        )

    def _record(
        self,
        identity: str,
        role: str,
        request_id: str,
        action: Action,
        target: Target,
        allowed: bool,
        rule: str,
    ) -> None:
        if self.audit is None:
            return
        where = {k: v for k, v in vars(target).items() if v not in ("", None, False)}
        call: dict[str, object] = {
            "identity": identity,
            "role": role,
            "request_id": request_id,
            "action": action.value,
            "target": where,
        }
        call["decision"], call["rule"] = ("allow" if allowed else "deny"), rule
        self.audit.write({"time": self.clock(), **call})
        if allowed:  # how the call ends is a line of its own (server.outcomes)
            outcomes.allowed(self.audit, self.clock, call)


# --- targets from requests --------------------------------------------------------------

_SCOPES = {
    types_pb2.SCOPE_SYSTEM: "system",
    types_pb2.SCOPE_CPU: "cpu",
    types_pb2.SCOPE_TASK: "task",
    types_pb2.SCOPE_TASK_CPU: "task+cpu",
    types_pb2.SCOPE_PROCESS: "process",
}


def reserve_target(request: arbiter_pb2.ReserveRequest, session_owner: str | None = None) -> Target:
    """A ReserveRequest's target, read before validation so refusals leak nothing;
    ``session_owner``: who owns the session it asks to join, if that session exists."""
    spec = request.spec
    kernel = spec.kernel or is_kernel_address(spec.addr, max(spec.len, 1))
    return Target(
        host=request.target.host,
        scope=_SCOPES.get(request.target.scope, "unspecified"),
        kernel=kernel,
        session_owner=session_owner,
    )


def reservation_target(res: Reservation, addr: int | None = None) -> Target:
    """An existing reservation (``addr``: the address a modify moves it to)."""
    kernel = res.bp.kernel or is_kernel_address(
        res.bp.addr if addr is None else addr, res.bp.length
    )
    return Target(
        host=res.host, scope=res.target.scope.value, kernel=kernel, owner=res.owner, name=res.id
    )
