"""One replica's leadership as a pure state machine: ``handle(event) -> actions``.

Replicas share one etcd. Exactly one of them is leader: it created the leader key, and
the key is attached to the replica's etcd lease, which it keeps alive. The shell
(``server/leader.py``) talks to etcd and turns every answer, failure and timer into an
event; this module decides, and knows nothing of etcd, asyncio, clocks or threads (every
event carries ``now``, read from one monotonic clock).

- **Lease.** A replica first gets a lease (``GrantLease``). Once granted it is kept alive
  every ``ttl / 3`` (``KeepAlive``). etcd restarts the lease's countdown when a keepalive
  *arrives*, so the lease is certainly alive until ``sent_at + ttl`` of the newest
  answered keepalive: that is the replica's *validity*. A keepalive answered with a
  dead lease (``LeaseLost``), or validity running out, ends the lease; a new one is asked
  for.
- **Campaign.** A replica with a lease that is not leader tries, every ``poll`` seconds,
  to create the leader key if it does not exist (``Campaign``: the shell reads the key,
  and only when it is gone makes the create-if-absent transaction). ``Won(revision)``
  means it created the key at that revision; ``Lost`` names the leader's advertised
  address (or none) for the followers' hint.
- **Takeover.** After ``Won`` the replica loads the ledger from etcd and re-admits it
  (``TakeOver``: the shell also sets the store's fence to the revision). Only on
  ``Restored`` does it serve (``Serve``). A failed restore gives the lease up
  (``StepDown`` + ``Resign``), so another replica may try.
- **Fencing.** Every write the leader makes compares the leader key's create revision
  with its own. A write that fails that compare (``Fenced``) means the key is gone or
  another's: the replica steps down at once. The same happens when its validity runs
  out (it can no longer be sure it holds the key; a paused process finds this out on
  its first tick) or its lease is reported lost. ``StepDown`` makes the shell refuse
  every call, answer waiting callers UNAVAILABLE and drop its in-memory ledger.
- **Stop.** A leader that stops resigns (revokes its lease) so another takes over at
  once instead of after ``ttl``.

Results of old requests are recognised by the lease they name and ignored: a
``Won`` for a lease that is no longer current is resigned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum


class Role(Enum):
    STARTING = "starting"  # no lease yet
    FOLLOWER = "follower"  # a lease, not the leader key
    TAKING_OVER = "taking_over"  # holds the leader key, loading the ledger
    LEADER = "leader"  # serving
    STOPPED = "stopped"


# --- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    now: float


@dataclass(frozen=True, slots=True)
class Tick:
    now: float


@dataclass(frozen=True, slots=True)
class LeaseGranted:
    lease: int
    sent_at: float  # when the grant was asked for: the lease lives at least ttl from then
    now: float


@dataclass(frozen=True, slots=True)
class KeptAlive:
    lease: int
    sent_at: float
    now: float


@dataclass(frozen=True, slots=True)
class LeaseLost:
    """etcd says the lease is gone (expired, revoked), or granting one failed."""

    lease: int  # 0: a grant failed
    reason: str
    now: float


@dataclass(frozen=True, slots=True)
class StoreFailed:
    """A keepalive or a campaign got no answer from etcd: nothing is known."""

    call: str  # "keepalive" or "campaign"
    lease: int
    reason: str
    now: float


@dataclass(frozen=True, slots=True)
class Won:
    lease: int
    revision: int  # the leader key's create revision
    now: float


@dataclass(frozen=True, slots=True)
class Lost:
    lease: int
    leader: str  # the leader's advertised address, "" if the key vanished meanwhile
    now: float


@dataclass(frozen=True, slots=True)
class Restored:
    revision: int
    now: float


@dataclass(frozen=True, slots=True)
class RestoreFailed:
    revision: int
    reason: str
    now: float


@dataclass(frozen=True, slots=True)
class Fenced:
    """A write was refused by etcd: the leader key's revision is not ours."""

    revision: int
    now: float


@dataclass(frozen=True, slots=True)
class Stop:
    now: float


Event = (
    Start
    | Tick
    | LeaseGranted
    | KeptAlive
    | LeaseLost
    | StoreFailed
    | Won
    | Lost
    | Restored
    | RestoreFailed
    | Fenced
    | Stop
)

# --- actions --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GrantLease:
    ttl: float


@dataclass(frozen=True, slots=True)
class KeepAlive:
    lease: int


@dataclass(frozen=True, slots=True)
class Campaign:
    lease: int


@dataclass(frozen=True, slots=True)
class TakeOver:
    """Fence the store to ``revision``, load and re-admit the ledger, then Restored."""

    revision: int


@dataclass(frozen=True, slots=True)
class Serve:
    revision: int


@dataclass(frozen=True, slots=True)
class StepDown:
    """Stop serving: refuse calls, fail waiting callers, forget the in-memory ledger."""

    reason: str


@dataclass(frozen=True, slots=True)
class Resign:
    """Revoke the lease (best effort): its leader key, if any, goes with it."""

    lease: int


@dataclass(frozen=True, slots=True)
class Follow:
    """The leader as far as we know ("" unknown): the hint followers give callers."""

    leader: str


Action = GrantLease | KeepAlive | Campaign | TakeOver | Serve | StepDown | Resign | Follow


class Leadership:
    """One replica's view. ``handle`` is the only way its state changes."""

    def __init__(self, advertise: str, *, ttl: float, poll: float | None = None) -> None:
        if ttl <= 0:
            raise ValueError(f"the leader ttl must be positive, got {ttl}")
        self.advertise = advertise
        self.ttl = ttl
        self.poll = poll if poll is not None else min(0.25, ttl / 8)
        self.role = Role.STARTING
        self.lease = 0
        self.valid_until = -math.inf  # the lease is certainly alive before this
        self.revision = 0  # the leader key's create revision while we hold it
        self.leader = ""  # the hint
        self.granting = False  # a GrantLease is out
        self.keepalive_due = math.inf
        self.keepalive_out = False
        self.campaign_due = math.inf
        self.campaign_out = False
        self.retry_at = -math.inf  # no new lease before this (after a failure)
        self._out: list[Action] = []

    # --- reading ---------------------------------------------------------------------

    @property
    def serving(self) -> bool:
        return self.role is Role.LEADER

    def next_deadline(self) -> float | None:
        """When the shell must send the next Tick (None: only events move it)."""
        if self.role is Role.STOPPED:
            return None
        times = [self.keepalive_due, self.campaign_due, self.retry_at]
        if self.lease:
            times.append(self.valid_until)
        future = [t for t in times if not math.isinf(t)]
        return min(future) if future else None

    # --- the one entry point ---------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        self._out = []
        if self.role is Role.STOPPED:
            if isinstance(event, LeaseGranted | Won):
                return [Resign(event.lease)]  # answers to calls made before the stop
            return []
        if isinstance(event, Stop):
            self._stop()
            return self._flush()
        if isinstance(event, LeaseGranted):
            self._granted(event)
        elif isinstance(event, KeptAlive):
            if event.lease == self.lease:
                self.keepalive_out = False
                self.valid_until = max(self.valid_until, event.sent_at + self.ttl)
                self.keepalive_due = event.now + self.ttl / 3
        elif isinstance(event, LeaseLost):
            if event.lease == 0:
                self.granting = False
                self.retry_at = event.now + self.poll
            elif event.lease == self.lease:
                self._lose_lease(f"lease lost: {event.reason}", event.now)
        elif isinstance(event, StoreFailed):
            # Nothing is known: validity decides. Try again after a pause.
            if event.lease == self.lease and event.call == "keepalive" and self.keepalive_out:
                self.keepalive_out = False
                self.keepalive_due = event.now + self.poll
            elif event.lease == self.lease and event.call == "campaign" and self.campaign_out:
                self.campaign_out = False
                self.campaign_due = event.now + self.poll
        elif isinstance(event, Won):
            self._won(event)
        elif isinstance(event, Lost):
            if event.lease == self.lease and self.role is Role.FOLLOWER:
                self.campaign_out = False
                self.campaign_due = event.now + self.poll
                self._hint(event.leader)
        elif isinstance(event, Restored):
            if self.role is Role.TAKING_OVER and event.revision == self.revision:
                self.role = Role.LEADER
                self._hint(self.advertise)
                self._out.append(Serve(self.revision))
        elif isinstance(event, RestoreFailed):
            if self.role is Role.TAKING_OVER and event.revision == self.revision:
                self._lose_lease(f"taking over failed: {event.reason}", event.now, resign=True)
        elif isinstance(event, Fenced) and self.revision and event.revision == self.revision:
            self._lose_lease(
                "a write was fenced: the leader key is no longer ours", event.now, resign=True
            )
        self._timers(event.now)
        return self._flush()

    # --- transitions -----------------------------------------------------------------

    def _granted(self, ev: LeaseGranted) -> None:
        self.granting = False
        if self.lease or self.role is not Role.STARTING:
            self._out.append(Resign(ev.lease))  # a grant we no longer want
            return
        self.lease = ev.lease
        self.valid_until = ev.sent_at + self.ttl
        self.keepalive_due = ev.now + self.ttl / 3
        self.role = Role.FOLLOWER
        self.campaign_due = ev.now

    def _won(self, ev: Won) -> None:
        if ev.lease != self.lease or self.role is not Role.FOLLOWER:
            # Our key exists on a lease we no longer keep alive: give it up now rather
            # than make everyone wait for it to expire.
            if ev.lease != self.lease:
                self._out.append(Resign(ev.lease))
            return
        self.campaign_out = False
        self.campaign_due = math.inf
        self.role = Role.TAKING_OVER
        self.revision = ev.revision
        self._out.append(TakeOver(ev.revision))

    def _lose_lease(self, reason: str, now: float, *, resign: bool = False) -> None:
        if self.role in (Role.TAKING_OVER, Role.LEADER):
            self._out.append(StepDown(reason))
        if resign and self.lease:
            self._out.append(Resign(self.lease))
        self.role = Role.STARTING
        self.lease = 0
        self.revision = 0
        self.valid_until = -math.inf
        self.keepalive_due = self.campaign_due = math.inf
        self.keepalive_out = self.campaign_out = False
        self._hint("")
        self.retry_at = now + self.poll if resign else now

    def _stop(self) -> None:
        if self.role in (Role.TAKING_OVER, Role.LEADER):
            self._out.append(StepDown("stopping"))
        if self.lease:
            self._out.append(Resign(self.lease))
        self.role = Role.STOPPED
        self.lease = 0

    def _timers(self, now: float) -> None:
        """Whatever is due at ``now``: validity, keepalives, campaigns, a new lease."""
        if self.lease and now >= self.valid_until:
            self._lose_lease(
                f"the lease could not be renewed within {self.ttl:g}s (etcd unreachable, "
                "or this process was paused)",
                now,
                resign=True,
            )
        if self.role is Role.STARTING and not self.granting and now >= self.retry_at:
            self.granting = True
            self.retry_at = math.inf
            self._out.append(GrantLease(self.ttl))
        if self.lease and not self.keepalive_out and now >= self.keepalive_due:
            self.keepalive_out = True
            self.keepalive_due = math.inf
            self._out.append(KeepAlive(self.lease))
        if self.role is Role.FOLLOWER and not self.campaign_out and now >= self.campaign_due:
            self.campaign_out = True
            self.campaign_due = math.inf
            self._out.append(Campaign(self.lease))

    def _hint(self, leader: str) -> None:
        if leader != self.leader:
            self.leader = leader
            self._out.append(Follow(leader))

    def _flush(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    # --- invariants ------------------------------------------------------------------

    def validate(self) -> None:
        """Raise AssertionError naming a broken invariant (tests call it each step)."""
        if self.role in (Role.FOLLOWER, Role.TAKING_OVER, Role.LEADER):
            assert self.lease, f"{self.role.value} without a lease"
        if self.role in (Role.TAKING_OVER, Role.LEADER):
            assert self.revision > 0, f"{self.role.value} without a leader key revision"
        else:
            assert self.revision == 0, "a revision kept without the leader key"
        if self.role is Role.LEADER:
            assert self.leader == self.advertise, "a leader that hints at another"
        if self.role is Role.STARTING:
            assert not self.lease and not self.keepalive_out and not self.campaign_out
