"""Deadlines and the retry policy for calls that are safe to repeat.

Only transport failures (UNAVAILABLE, DEADLINE_EXCEEDED) are retried, and only for calls
where a repeat cannot do harm: reads, releases (a repeat that finds the reservation gone
means the first one worked) and reserves (they carry an idempotency key). Which call is
which is ``client.calls``'s table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from hwbp.client.errors import RemoteError, UsageError

# Reads are answered from the arbiter's memory: anything slower means it is in trouble.
READ_TIMEOUT = 5.0
# Mutations wait until every connected agent of the host acknowledged the reload. The
# arbiter's own ack deadline is shorter, so its precise ACK_TIMEOUT error reaches us
# before this client-side deadline cuts the call off with a vaguer one.
MUTATE_TIMEOUT = 15.0
# Opening and closing a session touch only the arbiter, but closing releases what the
# session holds (a reload per host), so it gets the mutation budget too.
SESSION_TIMEOUT = MUTATE_TIMEOUT


@dataclass(frozen=True, slots=True)
class Deadlines:
    """Seconds each kind of call may take (``calls.Deadline``); streams have none unless
    their caller asks. Shorter ones suit a caller that would rather retry sooner."""

    read: float = READ_TIMEOUT
    mutate: float = MUTATE_TIMEOUT
    session: float = SESSION_TIMEOUT

    def __post_init__(self) -> None:
        for name in ("read", "mutate", "session"):
            value = getattr(self, name)
            if not value > 0:
                raise UsageError(f"deadline {name} must be > 0 seconds, got {value!r}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try again: few attempts, jittered exponential backoff."""

    attempts: int = 3
    initial: float = 0.1  # seconds; the jitter spreads clients that failed together
    maximum: float = 2.0
    when: Callable[[BaseException], bool] = field(default=lambda e: is_transient(e))  # retry?

    def sync(self) -> Retrying:
        return Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_random_exponential(multiplier=self.initial, max=self.maximum),
            retry=retry_if_exception(self.when),
            reraise=True,
        )

    def aio(self) -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_random_exponential(multiplier=self.initial, max=self.maximum),
            retry=retry_if_exception(self.when),
            reraise=True,
        )


NO_RETRY = RetryPolicy(attempts=1)
# Several replicas: a failover takes up to a lease ttl (5 s by default) and an election;
# these attempts (jittered backoff up to 1 s) span about 13 s on average.
FAILOVER_RETRY = RetryPolicy(attempts=30, initial=0.05, maximum=1.0)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, RemoteError) and exc.transient
