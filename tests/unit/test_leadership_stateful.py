"""Three replicas' leadership machines against a model of etcd, under every order of
events Hypothesis finds, with faults: calls that fail, answers that come late, time
that jumps, and replicas paused (SIGSTOP) for any length of time.

The model keeps etcd's rules: a lease dies ``ttl`` after the last keepalive *reached*
it, and takes its keys with it; the leader key is created only if absent; a write
commits only if the leader key's create revision is the writer's fence. After every
step:

- each machine's ``validate()`` holds;
- **safety:** a running replica that believes it leads (role leader, validity not past)
  truly holds the leader key, so at most one does at any instant;
- every write etcd accepted was sent by a replica that had restored the ledger for
  that very revision (a follower or a replica still taking over never writes);
- a write refused for its fence makes its replica stop leading.

At the end, with faults gone and everyone running, exactly one replica leads within a
bounded time (liveness).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hwbp.leadership import (
    Action,
    Campaign,
    Event,
    Fenced,
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
    StoreFailed,
    TakeOver,
    Tick,
    Won,
)

TTL = 2.0
N = 3


@dataclass
class Etcd:
    now: float = 0.0
    leases: dict[int, float] = field(default_factory=dict)  # id -> expires at
    key: tuple[str, int, int] | None = None  # (value, create revision, lease)
    revision: int = 1
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(100))
    accepted: list[tuple[int, int]] = field(default_factory=list)  # (replica, fence)

    def expire(self) -> None:
        for lease, at in list(self.leases.items()):
            if at <= self.now:
                del self.leases[lease]
                if self.key is not None and self.key[2] == lease:
                    self.key = None
                    self.revision += 1


@dataclass
class Call:
    action: Action | str  # "write" for a leader's write
    sent_at: float
    fence: int = 0


@dataclass
class Replica:
    index: int
    m: Leadership
    calls: list[Call] = field(default_factory=list)
    inbox: list[Event] = field(default_factory=list)  # answers on their way back
    paused: bool = False
    restored: set[int] = field(default_factory=set)  # revisions whose Serve was emitted
    fence: int = 0


class LeadershipMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.etcd = Etcd()
        self.replicas = [Replica(i, Leadership(f"r{i}:1", ttl=TTL, poll=0.25)) for i in range(N)]
        for r in self.replicas:
            self._feed(r, Start(0.0))
        # Begin where faults matter: every replica has a lease and one leads.
        for _ in range(3):
            for r in self.replicas:
                self.round_trip(r.index)
        assert self.replicas[0].m.serving

    # --- plumbing --------------------------------------------------------------------

    def _feed(self, r: Replica, event: Event) -> None:
        assert not r.paused
        for action in r.m.handle(event):
            self._act(r, action)
        r.m.validate()
        if isinstance(event, Fenced):
            assert r.m.revision != event.revision, f"replica {r.index} kept a fenced revision"

    def _act(self, r: Replica, action: Action) -> None:
        if isinstance(action, TakeOver):
            r.fence = action.revision
        if isinstance(action, Serve):
            assert action.revision == r.fence, "serving a revision it did not take over"
            r.restored.add(action.revision)
        if isinstance(action, GrantLease | KeepAlive | Campaign | TakeOver | Resign):
            r.calls.append(Call(action, self.etcd.now))

    def _answer(self, r: Replica, call: Call) -> Event | None:
        """etcd processes ``call`` now; what the replica hears back."""
        e, now = self.etcd, self.etcd.now
        a = call.action
        if isinstance(a, GrantLease):
            lease = next(e.ids)
            e.leases[lease] = now + a.ttl
            return LeaseGranted(lease, call.sent_at, now)
        if isinstance(a, KeepAlive):
            if a.lease not in e.leases:
                return LeaseLost(a.lease, "lease not found", now)
            e.leases[a.lease] = now + TTL
            return KeptAlive(a.lease, call.sent_at, now)
        if isinstance(a, Campaign):
            if a.lease not in e.leases:
                return LeaseLost(a.lease, "lease not found", now)
            if e.key is None:
                e.revision += 1
                e.key = (r.m.advertise, e.revision, a.lease)
                return Won(a.lease, e.revision, now)
            return Lost(a.lease, e.key[0], now)
        if isinstance(a, TakeOver):
            return Restored(a.revision, now)
        if isinstance(a, Resign):
            if e.leases.pop(a.lease, None) is not None and e.key and e.key[2] == a.lease:
                e.key = None
                e.revision += 1
            return None
        assert a == "write"
        if e.key is not None and e.key[1] == call.fence:
            assert call.fence in r.restored, "etcd accepted a write of a replica not restored"
            e.accepted.append((r.index, call.fence))
            e.revision += 1
            return None
        return Fenced(call.fence, now)

    # --- rules -----------------------------------------------------------------------

    @rule(dt=st.sampled_from([0.05, 0.3, 0.7, 1.0, TTL, 3 * TTL]))
    def time_passes(self, dt: float) -> None:
        self.etcd.now += dt
        self.etcd.expire()
        for r in self.replicas:
            if not r.paused:
                self._feed(r, Tick(self.etcd.now))

    @rule(i=st.integers(0, N - 1), data=st.data())
    def deliver(self, i: int, data: st.DataObject) -> None:
        """etcd processes one of the replica's calls; the answer is on its way back."""
        r = self.replicas[i]
        if not r.calls:
            return
        call = r.calls.pop(data.draw(st.integers(0, len(r.calls) - 1)))
        self.etcd.expire()
        answer = self._answer(r, call)
        if answer is not None:
            r.inbox.append(answer)

    @rule(i=st.integers(0, N - 1))
    def round_trip(self, i: int) -> None:
        """The common case: the oldest call is answered at once."""
        r = self.replicas[i]
        if r.calls and not r.paused:
            self.deliver(i, _First())
            while r.inbox:
                self.receive(i)

    @rule(i=st.integers(0, N - 1))
    def receive(self, i: int) -> None:
        """The oldest answer reaches a running replica, which reads its clock then."""
        r = self.replicas[i]
        if r.inbox and not r.paused:
            self._feed(r, dataclasses.replace(r.inbox.pop(0), now=self.etcd.now))

    @rule(i=st.integers(0, N - 1), data=st.data())
    def call_fails(self, i: int, data: st.DataObject) -> None:
        r = self.replicas[i]
        if not r.calls or r.paused:
            return
        call = r.calls.pop(data.draw(st.integers(0, len(r.calls) - 1)))
        now, a = self.etcd.now, call.action
        if isinstance(a, GrantLease):
            self._feed(r, LeaseLost(0, "unreachable", now))
        elif isinstance(a, KeepAlive):
            self._feed(r, StoreFailed("keepalive", a.lease, "unreachable", now))
        elif isinstance(a, Campaign):
            self._feed(r, StoreFailed("campaign", a.lease, "unreachable", now))
        elif isinstance(a, TakeOver):
            self._feed(r, RestoreFailed(a.revision, "unreachable", now))
        # a lost Resign or write: nothing comes back (the write's caller times out)

    @rule(i=st.integers(0, N - 1))
    def write(self, i: int) -> None:
        r = self.replicas[i]
        if r.m.serving and not r.paused:
            r.calls.append(Call("write", self.etcd.now, fence=r.fence))

    @rule(i=st.integers(0, N - 1))
    def pause(self, i: int) -> None:
        self.replicas[i].paused = True

    @precondition(lambda self: any(r.paused for r in self.replicas))
    @rule(i=st.integers(0, N - 1))
    def resume(self, i: int) -> None:
        r = self.replicas[i]
        if not r.paused:
            return
        r.paused = False
        while r.inbox:  # what arrived while it slept is read before its first tick
            self.receive(i)

    @rule(i=st.integers(0, N - 1))
    def paused_past_its_lease(self, i: int) -> None:
        """SIGSTOP for longer than the lease: the others may elect a new leader."""
        self.pause(i)
        self.time_passes(2 * TTL)

    @rule(i=st.integers(0, N - 1), others_first=st.booleans())
    def write_reaches_etcd_after_a_pause(self, i: int, others_first: bool) -> None:
        """A leader sends a write and is paused past its lease; the write reaches etcd
        late, perhaps after another replica took over (the others run meanwhile)."""
        r = self.replicas[i]
        if not r.m.serving or r.paused:
            return
        self.write(i)
        write = r.calls.pop()
        self.paused_past_its_lease(i)
        if others_first:
            for other in self.replicas:
                for _ in range(6):
                    if other is not r:
                        self.round_trip(other.index)
        r.calls.append(write)
        self.deliver(i, _Last())

    # --- checks ----------------------------------------------------------------------

    @invariant()
    def at_most_one_believes_it_leads(self) -> None:
        e = self.etcd
        e.expire()
        # What the shell's gate checks on every call: leader, and validity not past.
        believers = [
            r
            for r in self.replicas
            if not r.paused and r.m.role is Role.LEADER and r.m.valid_until > e.now
        ]
        for r in believers:
            assert e.key is not None and e.key[1] == r.m.revision and e.key[2] == r.m.lease, (
                f"replica {r.index} believes it leads at {e.now} but etcd holds {e.key}"
            )
        assert len(believers) <= 1

    def teardown(self) -> None:
        for r in self.replicas:
            if r.paused:
                self.resume(r.index)
        # No more faults: answer everything promptly, let time pass in small steps.
        for _ in range(int(4 * TTL / 0.05)):
            for r in self.replicas:
                while r.calls or r.inbox:
                    while r.calls:
                        self.deliver(r.index, _First())
                    while r.inbox:
                        self.receive(r.index)
            if sum(r.m.serving for r in self.replicas) == 1:
                break
            self.time_passes(0.05)
        leaders = [r.index for r in self.replicas if r.m.serving]
        assert len(leaders) == 1, f"no single leader after faults stopped: {leaders}"
        self.at_most_one_believes_it_leads()


class _First:
    """Stands in for Hypothesis' data in teardown: always the oldest call."""

    def draw(self, strategy: object) -> int:
        return 0


class _Last:
    def draw(self, strategy: object) -> int:
        return -1


TestLeadership = LeadershipMachine.TestCase
TestLeadership.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
