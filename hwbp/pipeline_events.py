"""What goes into and comes out of a host's change pipeline (``hwbp.pipeline``).

A change (``Change``) and its committed ``Outcome``; the *events* the shell feeds the
pipeline (a submission, an agent's answer, a deadline, a durable write) and the
*instructions* it gets back (send a reload, persist, answer a caller, fence an agent).
All are frozen values: the pipeline decides, the shell only carries them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

from hwbp.errors import HwbpError
from hwbp.model import Assignment

ENOSPC = 28

# apply() changes the ledger (and the shell's host state) and returns (result, CPUs it
# touches); undo() reverts what apply() did outside the ledger (the ledger has a journal).
Apply = Callable[[], tuple[object, Iterable[int]]]
Undo = Callable[[], None]
R_co = TypeVar("R_co", covariant=True)  # what a change's apply() returned


class Link(Enum):
    """What the pipeline knows of a CPU's agent; it decides who is waited for."""

    OFFLINE = "offline"  # no agent (never connected, or gone)
    RESYNCING = "resyncing"  # connected, its first full state is out
    LIVE = "live"  # answering
    FENCED = "fenced"  # missed an ack deadline; not waited for until it reconnects


WAITED = (Link.RESYNCING, Link.LIVE)


@dataclass(frozen=True, slots=True)
class Change:
    request_id: str
    apply: Apply
    undo: Undo | None = None
    key: str = ""  # idempotency key, already scoped to the caller; "" for none
    fingerprint: str = ""  # of the request body the key was first used with


@dataclass(frozen=True, slots=True)
class Outcome(Generic[R_co]):
    """A committed change: its apply()'s result and where it is applied. The pipeline
    holds changes of every kind (``Outcome[object]``); each caller's is typed."""

    result: R_co
    generation: int  # the generation that committed it
    applied: tuple[int, ...]  # CPUs whose agent acknowledged it
    pending: tuple[int, ...]  # CPUs it reaches when their agent resyncs


# --- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submitted:
    waiter: int  # the shell's handle for whoever waits for the answer
    change: Change
    now: float


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The waiter gave up (deadline, dropped connection); its change still runs."""

    waiter: int
    now: float


@dataclass(frozen=True, slots=True)
class AgentConnected:
    cpu: int
    link: int  # unique per connection, so answers on an old stream are recognised
    now: float
    deltas: bool = False  # the agent applies delta reloads (else: full state every time)


@dataclass(frozen=True, slots=True)
class AgentGone:
    cpu: int
    link: int
    reason: str
    now: float
    fenced: bool = False  # the shell closed it (it does not read its stream)


@dataclass(frozen=True, slots=True)
class Answered:
    cpu: int
    link: int
    generation: int
    ok: bool
    now: float
    reason: str = ""
    errno: int = 0
    # A refusal of a delta because the agent does not hold its base: not a refusal of
    # the change; the CPU is sent its full state instead.
    needs_full: bool = False


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: deadlines up to ``now`` have expired."""

    now: float


@dataclass(frozen=True, slots=True)
class Persisted:
    generation: int
    now: float


@dataclass(frozen=True, slots=True)
class PersistFailed:
    generation: int
    error: HwbpError
    now: float


Event = (
    Submitted | Cancelled | AgentConnected | AgentGone | Answered | Tick | Persisted | PersistFailed
)

# --- instructions ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendReload:
    """The CPU's state at ``generation``: whole (``base`` None), or as a delta on ``base``:
    ``assignments`` added or changed, ``removed`` gone (or never there: removing is
    idempotent)."""

    cpu: int
    link: int
    generation: int
    request_id: str
    assignments: tuple[Assignment, ...]
    base: int | None = None
    removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Persist:
    """Make the batch durable, then answer Persisted or PersistFailed."""

    generation: int
    touched: frozenset[str]  # reservation ids to write or delete
    keys: tuple[tuple[str, str, Outcome[object]], ...]  # (key, fingerprint, outcome) to remember


@dataclass(frozen=True, slots=True)
class Resolve:
    waiter: int
    outcome: Outcome[object]


@dataclass(frozen=True, slots=True)
class Fail:
    waiter: int
    error: HwbpError


@dataclass(frozen=True, slots=True)
class Fence:
    cpu: int
    link: int
    reason: str


@dataclass(frozen=True, slots=True)
class Committed:
    generation: int
    request_ids: str


@dataclass(frozen=True, slots=True)
class RolledBack:
    generation: int  # the refused one
    restored: int  # the generation that carries the restored state
    request_ids: str
    error: HwbpError


@dataclass(frozen=True, slots=True)
class ResyncRefused:
    """An agent refused a state that was not a change's (a resync or a rollback)."""

    cpu: int
    generation: int
    reason: str
    errno: int


@dataclass(frozen=True, slots=True)
class Fault:
    """Foreign code (an apply or undo) raised something unexpected: log it."""

    request_id: str
    error: BaseException


Instruction = (
    SendReload | Persist | Resolve | Fail | Fence | Committed | RolledBack | ResyncRefused | Fault
)
