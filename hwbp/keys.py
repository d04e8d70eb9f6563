"""Idempotency keys: a retried request joins, or repeats, the outcome of the first.

A key is bound when its change is *submitted*, not when it commits, so a retry that
arrives while the first attempt still waits for acknowledgements (or after its caller
gave up: a cancelled caller's change still runs) joins that attempt instead of making a
second one. Once the change commits, the key remembers the outcome and a retry gets the
same answer; if the change fails, the key is freed and a retry runs afresh.

Keys are scoped by the caller (the shell prefixes the caller's identity) and bound to a
fingerprint of the request body: the same key with a different request is refused, so
a key can never hand one caller's reservation to another request. Remembered outcomes
expire ``keep`` seconds after commit and at most ``limit`` are kept (oldest first out);
the clock is whatever the caller passes in (time is never read here).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from hwbp.errors import IdempotencyKeyReused

KEEP_SECONDS = 3600.0  # a retry comes within seconds; an hour covers any client backoff
KEEP_LIMIT = 100_000

T = TypeVar("T")  # the remembered outcome
P = TypeVar("P")  # what an in-flight key is bound to (the pipeline's change)


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    """A committed outcome, remembered for retries until ``expires``."""

    host: str
    fingerprint: str
    outcome: T
    expires: float


@dataclass(frozen=True, slots=True)
class Pending(Generic[P]):
    """A key whose change is admitted or queued but not yet resolved."""

    host: str
    fingerprint: str
    change: P


class KeyTable(Generic[T, P]):
    """Every live idempotency key of the fleet (keys are global: a key names one request)."""

    def __init__(self, *, keep: float = KEEP_SECONDS, limit: int = KEEP_LIMIT) -> None:
        self.keep = keep
        self.limit = limit
        self._pending: dict[str, Pending[P]] = {}
        self._done: OrderedDict[str, Done[T]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending) + len(self._done)

    def lookup(self, key: str, fingerprint: str, now: float) -> Pending[P] | Done[T] | None:
        """What ``key`` is bound to; raise if it is bound to a different request."""
        self.expire(now)
        found: Pending[P] | Done[T] | None = self._pending.get(key) or self._done.get(key)
        if found is not None and found.fingerprint != fingerprint:
            raise IdempotencyKeyReused(
                f"idempotency key {key.rpartition(chr(0))[2]!r} was already used for a "
                "different request; use a new key for a new request",
                idempotency_key=key.rpartition(chr(0))[2],
            )
        return found

    def bind(self, key: str, host: str, fingerprint: str, change: P) -> None:
        if key in self._pending or key in self._done:
            raise ValueError(f"key {key!r} is already bound")  # lookup() first
        self._pending[key] = Pending(host, fingerprint, change)

    def resolve(self, key: str, outcome: T, now: float) -> None:
        """The change bound to ``key`` committed: remember its outcome."""
        pending = self._pending.pop(key)
        self.remember(key, pending.host, pending.fingerprint, outcome, now)

    def remember(self, key: str, host: str, fingerprint: str, outcome: T, now: float) -> None:
        """Record a committed outcome (also: restored from the durable ledger)."""
        self._done[key] = Done(host, fingerprint, outcome, now + self.keep)
        self._done.move_to_end(key)
        while len(self._done) > self.limit:
            self._done.popitem(last=False)

    def free(self, key: str) -> None:
        """The change bound to ``key`` failed: a retry may try again."""
        self._pending.pop(key, None)

    def expire(self, now: float) -> None:
        while self._done:
            key, done = next(iter(self._done.items()))
            if done.expires > now:
                break
            del self._done[key]

    def pending_for(self, host: str) -> set[str]:
        return {k for k, p in self._pending.items() if p.host == host}

    def done(self) -> list[tuple[str, Done[T]]]:
        return list(self._done.items())
