"""A replicated arbiter on loopback: a real etcd and N arbiter processes sharing it.

Every process (etcd included) is started on ports picked at run time and stopped by pid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from hwbp.load.etcd import Etcd
from hwbp.wire.health import health_check
from tests.integration import procs

TTL = 2.0  # seconds: short leases keep failover tests fast
SERVICE = "hwbp.v1.Arbiter"


def role(address: str, timeout: float = 1.0) -> str:
    """leader, follower, or down: what standard health says of hwbp.v1.Arbiter."""
    try:
        with grpc.insecure_channel(address) as ch:
            got = health_check(ch)(health_pb2.HealthCheckRequest(service=SERVICE), timeout=timeout)
    except grpc.RpcError:
        return "down"
    return "leader" if got.status == health_pb2.HealthCheckResponse.SERVING else "follower"


@dataclass
class Group:
    root: Path
    size: int = 3
    ttl: float = TTL
    etcd: Etcd = field(init=False)
    arbiters: list[procs.Proc | None] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    prefix: str = "/hwbp"

    def __post_init__(self) -> None:
        self.etcd = Etcd(self.root / "etcd").start()

    def start(self, *extra: str) -> Group:
        for _ in range(self.size):
            proc, address = self.start_one(None, *extra)
            self.arbiters.append(proc)
            self.addresses.append(address)
        return self

    def start_one(self, port: int | None, *extra: str) -> tuple[procs.Proc, str]:
        proc, line = procs.start(
            [
                "hwbp.server",
                "--listen",
                f"127.0.0.1:{port or 0}",
                "--store",
                self.etcd.url,
                "--store-prefix",
                self.prefix,
                "--leader-ttl",
                str(self.ttl),
                "--paranoid",
                *extra,
            ],
            "arbiter",
            wait_for="listening on",
        )
        return proc, line.rsplit(" ", 1)[-1]

    def restart(self, index: int, *extra: str) -> None:
        port = int(self.addresses[index].rsplit(":", 1)[1])
        self.arbiters[index], _ = self.start_one(port, *extra)

    @property
    def endpoints(self) -> str:
        return ",".join(self.addresses)

    def roles(self) -> list[str]:
        return [role(a) for a in self.addresses]

    def leader(self, timeout: float = 15.0, exclude: int | None = None) -> int:
        """The index of the one replica that leads, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            seen = self.roles()
            leaders = [i for i, r in enumerate(seen) if r == "leader" and i != exclude]
            if len(leaders) == 1 and seen.count("leader") == 1:
                return leaders[0]
            time.sleep(0.05)
        raise AssertionError(f"no single leader within {timeout}s: {seen}")

    def stop(self) -> None:
        for proc in self.arbiters:
            if proc is not None:
                proc.stop()
        self.etcd.stop()
