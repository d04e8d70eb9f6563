"""High availability on etcd, wired into ``hwbp-arbiter`` (flags, store, gate, leader).

Every replica runs the same command with the same ``--store etcd://...`` and prefix and
its own ``--advertise``. ``server/main.py`` calls this module at four points: flags,
opening the store, the gate's interceptor, and starting / stopping the leader loop.
Without ``--store`` nothing here runs and ``--db`` (SQLite) is the ledger as before.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from hwbp.leadership import Leadership
from hwbp.server.gate import Gate, GateInterceptor
from hwbp.server.health import Health
from hwbp.server.leader import HaMetrics, Leader
from hwbp.server.metrics import Metrics
from hwbp.server.persist import Persistence
from hwbp.server.store.etcd import EtcdStore
from hwbp.server.store.etcd_io import StoreConfigError, parse_url

__all__ = ["Replication", "StoreConfigError", "add_arguments", "enabled", "open_store"]

log = logging.getLogger("hwbp.server")


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("high availability on etcd (see README: High availability)")
    g.add_argument(
        "--store",
        metavar="etcd://HOST:PORT[,HOST:PORT...]",
        help="keep the ledger in etcd and elect one leader among the replicas (not --db)",
    )
    g.add_argument("--store-prefix", default="/hwbp", help="key prefix in etcd (default /hwbp)")
    g.add_argument("--store-ca", metavar="PEM", help="CA of etcd's certificate: TLS to etcd")
    g.add_argument("--store-cert", metavar="PEM", help="client certificate for etcd")
    g.add_argument("--store-key", metavar="PEM", help="its private key")
    g.add_argument(
        "--advertise",
        metavar="HOST:PORT",
        help="the address clients and agents should use for this replica (default --listen)",
    )
    g.add_argument(
        "--leader-ttl",
        type=float,
        default=5.0,
        help="seconds of the leader's etcd lease: a dead leader is replaced within about this",
    )


def enabled(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "store", None))


def open_store(args: argparse.Namespace) -> EtcdStore:
    """The etcd store from the flags; raises StoreConfigError or LedgerCorrupt."""
    if args.leader_ttl < 1:
        raise StoreConfigError(f"--leader-ttl must be at least 1 second, got {args.leader_ttl}")
    config = parse_url(
        args.store, args.store_prefix, ca=args.store_ca, cert=args.store_cert, key=args.store_key
    )
    store = EtcdStore(config)
    store.unfence("this replica is not the leader")  # no write before it takes over
    return store


class Replication:
    """This replica's part in the group: the gate, and the leader loop behind it."""

    def __init__(self, args: argparse.Namespace, store: EtcdStore) -> None:
        self.args = args
        self.store = store
        self.gate = Gate(args.advertise or "")
        self.interceptor = GateInterceptor(self.gate)
        self.leader: Leader | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(
        self, address: str, persistence: Persistence, status: Health, metrics: Metrics
    ) -> None:
        """Campaign from now on; the services' health follows this replica's role."""
        advertise = self.args.advertise or address
        self.gate.advertise = advertise
        status.leading = False

        async def serving(on: bool) -> None:
            status.leading = on
            await status.apply()

        machine = Leadership(advertise, ttl=self.args.leader_ttl)
        self.leader = Leader(
            machine,
            self.store,
            self.gate,
            persistence,
            on_serving=serving,
            metrics=HaMetrics(metrics.registry),
        )
        self._task = asyncio.create_task(self.leader.run(), name="leadership")
        log.info(
            "replica %s on etcd %s (leader ttl %gs)",
            advertise,
            self.store.config.describe(),
            self.args.leader_ttl,
        )

    async def stop(self) -> None:
        """Resign (a follower takes over at once) and stop the loop."""
        if self.leader is not None:
            await self.leader.stop()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
