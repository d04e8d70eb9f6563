"""What only the etcd store does: fencing, the id counter, its schema, an unreachable etcd."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hwbp.errors import LeadershipLost, LedgerCorrupt, LedgerWriteFailed
from hwbp.load.etcd import Etcd, EtcdTls, free_port
from hwbp.model import BpType, Breakpoint, Reservation, Scope, Target
from hwbp.server.store import Batch
from hwbp.server.store.base import HostRecord, ReservationRecord
from hwbp.server.store.etcd import EtcdStore
from hwbp.server.store.etcd_io import EtcdConfig, StoreConfigError, parse_url


def res(rid: str) -> ReservationRecord:
    return ReservationRecord(
        Reservation(rid, "h1", Target(Scope.CPU, cpu=0), Breakpoint(0x1000, 8, BpType.WRITE))
    )


@pytest.fixture
def config(etcd: Etcd) -> EtcdConfig:
    return parse_url(etcd.url, f"/t-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def store(config: EtcdConfig) -> Iterator[EtcdStore]:
    s = EtcdStore(config)
    yield s
    s.close()


def _lead(store: EtcdStore, value: bytes = b"a:1") -> int:
    """Create the leader key as a campaign would; its create revision."""

    async def put() -> int:
        client = store.io.client
        await client.put(store.leader_key, value)
        got = await client.get(store.leader_key)
        return int(got.create_revision)

    return store.io.call(put())


def test_a_fenced_write_commits_only_while_the_leader_key_is_ours(store: EtcdStore) -> None:
    lost: list[tuple[int, str]] = []
    store.on_lost = lambda rev, why: lost.append((rev, why))
    mine = _lead(store)
    store.fence(mine)
    store.commit(Batch(reservations=[res("r1")]))
    # The key expires and another replica creates it: a new create revision.
    store.io.call(store.io.client.delete(store.leader_key))
    _lead(store, b"b:2")
    with pytest.raises(LeadershipLost) as exc:
        store.commit(Batch(reservations=[res("r2")], hosts=[HostRecord("h1", 2, 5)]))
    assert "no longer the leader" in str(exc.value) and lost and lost[0][0] == mine
    snap = store.load()
    assert [r.reservation.id for r in snap.reservations] == ["r1"] and snap.hosts == ()
    # Refused from then on without asking etcd, until it leads again.
    with pytest.raises(LeadershipLost):
        store.commit(Batch(reservations=[res("r3")]))
    store.fence(_lead_again(store))
    store.commit(Batch(reservations=[res("r3")]))
    assert {r.reservation.id for r in store.load().reservations} == {"r1", "r3"}


def _lead_again(store: EtcdStore) -> int:
    store.io.call(store.io.client.delete(store.leader_key))
    return _lead(store)


def test_the_id_counter_survives_releasing_the_highest_id(
    store: EtcdStore, config: EtcdConfig
) -> None:
    store.commit(Batch(reservations=[res("r1"), res("r7")]))
    store.commit(Batch(deleted_reservations=["r7"]))
    again = EtcdStore(config)
    try:
        assert again.load().next_id == 8  # r7 is never handed out twice
    finally:
        again.close()


def test_commit_async_does_not_block_the_callers_loop(store: EtcdStore) -> None:
    async def main() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        t = asyncio.create_task(ticker())
        await store.commit_async(Batch(reservations=[res("r1")]))
        t.cancel()
        assert ticks > 0

    asyncio.run(main())
    assert [r.reservation.id for r in store.load().reservations] == ["r1"]


def test_another_schema_is_refused(store: EtcdStore, config: EtcdConfig) -> None:
    store.io.call(store.io.client.put(store.key("schema"), b"99"))
    with pytest.raises(LedgerCorrupt, match="schema"):
        EtcdStore(config)


def test_an_unreadable_record_is_refused(store: EtcdStore) -> None:
    store.io.call(store.io.client.put(store.key("reservations", "r1"), b"{not json"))
    with pytest.raises(LedgerCorrupt, match="unreadable"):
        store.load()


def test_an_unreachable_etcd_is_a_clear_error() -> None:
    config = parse_url(f"etcd://127.0.0.1:{free_port()}", "/x")
    with pytest.raises(LedgerCorrupt, match="unreachable"):
        EtcdStore(config)


def test_a_write_with_no_answer_is_never_acknowledged(etcd: Etcd, tmp_path: object) -> None:
    """etcd goes away under a fenced store: the write fails, and the fence is dropped
    (the outcome is unknown, so memory must be reloaded before writing again)."""
    config = parse_url(etcd.url, f"/t-{uuid.uuid4().hex[:8]}")
    store = EtcdStore(config)
    try:
        store.fence(_lead(store))
        etcd.stop()
        with pytest.raises(LedgerWriteFailed) as exc:
            store.commit(Batch(reservations=[res("r1")]))
        assert "rolled back" in str(exc.value) and store.fence_revision is None
    finally:
        etcd.start()
        store.close()
    again = EtcdStore(config)
    try:
        assert again.load().reservations == ()
    finally:
        again.close()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:2379", "must look like"),
        ("etcd://127.0.0.1", "not HOST:PORT"),
        ("etcd://127.0.0.1:0", "not HOST:PORT"),
        ("etcd://:2379", "not HOST:PORT"),
    ],
)
def test_malformed_store_urls_are_named(url: str, problem: str) -> None:
    with pytest.raises(StoreConfigError, match=problem):
        parse_url(url)


def test_store_tls_flags_are_checked(tmp_path: object) -> None:
    with pytest.raises(StoreConfigError, match="go together"):
        parse_url("etcd://127.0.0.1:2379", cert="c.pem")
    with pytest.raises(StoreConfigError, match="not a readable file"):
        parse_url("etcd://127.0.0.1:2379", ca="/nonexistent/ca.pem")
    with pytest.raises(StoreConfigError, match="prefix"):
        parse_url("etcd://127.0.0.1:2379", "hwbp/")
    assert parse_url("etcd://a:1,[::1]:2").endpoints == (("a", 1), ("::1", 2))


@pytest.fixture(scope="module")
def etcd_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Etcd, dict[str, Path]]]:
    from scripts.make_certs import issue, make_ca, write

    d = tmp_path_factory.mktemp("etcd-tls")
    ca = make_ca()
    files = {"ca": write(ca, d, "ca").cert}
    server = write(issue(ca, "etcd", server=True), d, "etcd")
    client = write(issue(ca, "arbiter"), d, "arbiter")
    files.update(cert=client.cert, key=client.key)
    tls = EtcdTls(files["ca"], server.cert, server.key, client.cert, client.key)
    server_proc = Etcd(d / "data", tls=tls).start()
    try:
        yield server_proc, files
    finally:
        server_proc.stop()


def test_tls_to_etcd_with_a_client_certificate(etcd_tls: tuple[Etcd, dict[str, Path]]) -> None:
    server, f = etcd_tls
    config = parse_url(server.url, "/tls", ca=str(f["ca"]), cert=str(f["cert"]), key=str(f["key"]))
    store = EtcdStore(config)
    try:
        store.commit(Batch(reservations=[res("r1")]))
        assert [r.reservation.id for r in store.load().reservations] == ["r1"]
    finally:
        store.close()
    # Plain text, or TLS without the client certificate etcd requires: refused, clearly.
    for bad in (parse_url(server.url, "/tls"), parse_url(server.url, "/tls", ca=str(f["ca"]))):
        with pytest.raises(LedgerCorrupt, match="unreachable"):
            EtcdStore(bad)


def test_a_key_written_again_later_outlives_its_old_expiry(store: EtcdStore) -> None:
    from hwbp.server.store.base import KeyRecord

    def key(expires: float) -> KeyRecord:
        return KeyRecord("bob\0k", "h1", "fp", res("r1").reservation, 3, (0,), (), expires)

    store.commit(Batch(keys=[key(100.0)]))
    store.commit(Batch(keys=[key(500.0)]))  # the old index entry (100) is still there
    store.commit(Batch(keys_expired_before=200.0))
    assert [k.expires for k in store.load().keys] == [500.0]
    store.commit(Batch(keys_expired_before=600.0))
    assert store.load().keys == ()
