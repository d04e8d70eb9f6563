"""The arbiter's connection to etcd: where it is, and the thread its client runs on.

aetcd is an asyncio client, and the Store interface is synchronous (``commit`` returns
once the batch is durable, from whichever thread calls it). So the client lives on a
dedicated thread with its own event loop (``EtcdLoop``): a synchronous caller waits
for the answer on a concurrent future, an asyncio caller awaits it without blocking
its loop. The same thread keeps the leader's lease alive, so a busy arbiter loop never
delays a keepalive.

``--store etcd://HOST:PORT[,HOST:PORT...]`` names the etcd members; gRPC's own
``ipv4:``/``ipv6:`` resolver spreads the connection over them and moves to another
member when one fails. Host names are resolved once, at start. TLS (``--store-ca``,
optionally a client certificate) uses the same PEM files as the arbiter's own flags.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import socket
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import aetcd
import grpc
from aetcd import rpc
from aetcd import watcher as etcd_watcher

T = TypeVar("T")
SCHEME = "etcd://"
# A whole ledger is read in one range request (one consistent revision): allow it to
# be large (100,000 reservations are about 30 MB).
CLIENT_OPTIONS = {
    "grpc.max_receive_message_length": 512 * 1024 * 1024,
    "grpc.max_send_message_length": 64 * 1024 * 1024,
    # etcd down: try again within a fraction of a second, not grpc's default minute.
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
}


class StoreConfigError(ValueError):
    """A malformed ``--store`` URL or unreadable TLS file."""


@dataclass(frozen=True, slots=True)
class EtcdConfig:
    endpoints: tuple[tuple[str, int], ...]
    prefix: str = "/hwbp"
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    timeout: float = 2.0  # seconds for one etcd call

    @property
    def target(self) -> str:
        """A gRPC target naming every member (resolved to addresses once)."""
        addrs = [_resolve(h, p) for h, p in self.endpoints]
        v6 = [a for a in addrs if a.startswith("[")]
        if v6 and len(v6) != len(addrs):
            return addrs[0]  # gRPC's static resolvers take one family at a time
        return ("ipv6:" if v6 else "ipv4:") + ",".join(addrs)

    def describe(self) -> str:
        return SCHEME + ",".join(f"{h}:{p}" for h, p in self.endpoints) + self.prefix


def parse_url(
    url: str,
    prefix: str = "/hwbp",
    *,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
) -> EtcdConfig:
    """``etcd://HOST:PORT[,HOST:PORT...]`` -> EtcdConfig; raises StoreConfigError."""
    if not url.startswith(SCHEME):
        raise StoreConfigError(
            f"--store must look like etcd://HOST:PORT[,HOST:PORT...], got {url!r}"
        )
    endpoints = []
    for part in url[len(SCHEME) :].rstrip("/").split(","):
        host, sep, port = part.strip().rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise StoreConfigError(f"--store: {part!r} is not HOST:PORT (in {url!r})")
        endpoints.append((host, int(port)))
    if not prefix.startswith("/") or prefix.endswith("/") or len(prefix) < 2:
        raise StoreConfigError(f"--store-prefix must start with / and not end with one: {prefix!r}")
    if (cert is None) != (key is None):
        raise StoreConfigError("--store-cert and --store-key go together")
    if cert is not None and ca is None:
        raise StoreConfigError("--store-cert needs --store-ca (a client certificate is for TLS)")
    for name, path in (("--store-ca", ca), ("--store-cert", cert), ("--store-key", key)):
        if path is not None and not Path(path).is_file():
            raise StoreConfigError(f"{name}: {path} is not a readable file")
    return EtcdConfig(tuple(endpoints), prefix, ca, cert, key)


def _resolve(host: str, port: int) -> str:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            ip = ipaddress.ip_address(socket.getaddrinfo(host, port)[0][4][0])
        except (OSError, ValueError) as err:
            raise StoreConfigError(f"--store: cannot resolve {host!r}: {err}") from None
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


class Client(aetcd.Client):  # type: ignore[misc]
    """aetcd's client on a channel we build: several members, optional TLS."""

    def __init__(self, config: EtcdConfig) -> None:
        super().__init__(timeout=config.timeout, options=CLIENT_OPTIONS)
        self.config = config

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        c = self.config
        options = list(CLIENT_OPTIONS.items())
        if c.ca is None:
            self.channel = grpc.aio.insecure_channel(c.target, options=options)
        else:
            creds = grpc.ssl_channel_credentials(
                Path(c.ca).read_bytes(),
                Path(c.key).read_bytes() if c.key else None,
                Path(c.cert).read_bytes() if c.cert else None,
            )
            self.channel = grpc.aio.secure_channel(c.target, creds, options=options)
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = etcd_watcher.Watcher(
            rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
        )
        self._connected.set()


class EtcdLoop:
    """A thread running an event loop that owns one etcd client."""

    def __init__(self, config: EtcdConfig) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="etcd", daemon=True)
        self._thread.start()
        try:
            self.client: Client = self.call(self._make())
        except BaseException:
            self.close()
            raise

    async def _make(self) -> Client:
        client = Client(self.config)
        await client.connect()
        return client

    def submit(self, coro: Coroutine[object, object, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[object, object, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the etcd thread and wait for it (never call from that thread)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("EtcdLoop.call from the etcd thread would wait for itself")
        wait = timeout if timeout is not None else self.config.timeout * 2 + 1
        return self.submit(coro).result(wait)

    async def wait(self, coro: Coroutine[object, object, T]) -> T:
        """Await ``coro`` from another event loop without blocking it."""
        return await asyncio.wrap_future(self.submit(coro))

    def close(self) -> None:
        if self.loop.is_closed():
            return
        if self.loop.is_running():
            # Closing a client whose etcd is gone: nothing to save.
            with contextlib.suppress(Exception):
                self.call(self.client.close(), timeout=2)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(2)
        if not self._thread.is_alive():
            self.loop.close()
