"""The fleet: one id counter and one idempotency key table for every host."""

from __future__ import annotations

from hwbp.server.fleet import Fleet


def test_every_host_consults_the_fleets_one_key_table() -> None:
    """An empty table is falsy (it has a length): hosts created while no key was bound
    once got a private table each, so one key could make a reservation on every host."""
    fleet = Fleet(ack_timeout=1.0)
    hosts = [fleet.ensure_host(name, 1) for name in ("a", "b")]
    assert all(h.pipeline.keys is fleet.keys for h in hosts)


def test_ids_come_from_one_counter_that_never_goes_back() -> None:
    fleet = Fleet(ack_timeout=1.0)
    assert [fleet.new_id(), fleet.new_id()] == ["r1", "r2"]
    fleet.reseed_ids(10)
    fleet.reseed_ids(5)  # an older counter never takes ids back
    assert fleet.new_id() == "r10" and fleet.next_id == 11
