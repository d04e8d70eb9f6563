"""Ending sessions: a failed write is reported and retried, never half-forgotten."""

from __future__ import annotations

import pytest

from hwbp.errors import LedgerWriteFailed
from hwbp.server.fleet import Fleet
from hwbp.server.sessions import RETRY_END, SessionTable, end_session


async def test_a_session_whose_end_cannot_be_written_stays_and_is_retried() -> None:
    now = [100.0]
    table = SessionTable(clock=lambda: now[0])
    writes: list[str] = []
    refuse = [True]

    async def ended(sid: str) -> None:
        if refuse[0]:
            raise LedgerWriteFailed("ledger x: disk full (SQLITE_FULL)")
        writes.append(sid)

    table.on_end = ended
    session = await table.open(5.0, "ann")
    with pytest.raises(LedgerWriteFailed):
        await end_session(Fleet(ack_timeout=1.0), table, session.id, "closed")
    assert session.id in table.sessions and session.ending  # keep-alives refused
    assert session.expires_at == now[0] + RETRY_END  # the reaper tries again soon
    assert not table.ending  # nothing left running
    refuse[0] = False
    assert await end_session(Fleet(ack_timeout=1.0), table, session.id, "lease expired") == 0
    assert writes == [session.id] and session.id not in table.sessions


async def test_a_session_is_durable_before_it_exists() -> None:
    table = SessionTable()

    async def refused(_: object) -> None:
        raise LedgerWriteFailed("ledger x: read-only")

    table.on_open = refused
    with pytest.raises(LedgerWriteFailed):
        await table.open(5.0, "ann")
    assert not table.sessions
