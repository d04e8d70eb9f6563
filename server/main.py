"""hwbp-arbiter: the central arbiter process."""

from __future__ import annotations

import argparse
import asyncio
import errno
import ipaddress
import logging
import signal
import socket
import sys
import uuid
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hwbp.errors import LedgerCorrupt, LedgerInUse, LedgerWriteFailed
from hwbp.server import ha, ledger_tools
from hwbp.server.agent_link import AgentLinkServicer
from hwbp.server.authz import AuditLog, Authz, Policy, PolicyError
from hwbp.server.errors import MalformedRequests
from hwbp.server.event_log import KEEP, EventLog
from hwbp.server.fleet import Fleet
from hwbp.server.health import Health, HealthCollector, supervise
from hwbp.server.interceptors import MetricsInterceptor
from hwbp.server.logs import setup as setup_logging
from hwbp.server.metrics import Metrics
from hwbp.server.persist import Persistence
from hwbp.server.ptrace_service import PtraceServicer
from hwbp.server.reload import reload_policy
from hwbp.server.reservations import ArbiterServicer
from hwbp.server.sessions import SessionsServicer, SessionTable, reaper
from hwbp.server.simulation import SimulationServicer
from hwbp.server.store import DEFAULT_LEDGER, Store, open_store
from hwbp.server.store.writer import LedgerWriter
from hwbp.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    arbiter_pb2,
    arbiter_pb2_grpc,
    ptrace_pb2,
    ptrace_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
    simulation_pb2,
    simulation_pb2_grpc,
)
from hwbp.wire import config
from hwbp.wire.helpformat import DefaultsHelpFormatter, add_version
from hwbp.wire.tls import TlsConfig, TlsConfigError, server_credentials

log = logging.getLogger("hwbp.server")

SERVICES = [
    arbiter_pb2.DESCRIPTOR.services_by_name["Arbiter"],
    session_pb2.DESCRIPTOR.services_by_name["Sessions"],
    ptrace_pb2.DESCRIPTOR.services_by_name["Ptrace"],
    simulation_pb2.DESCRIPTOR.services_by_name["Simulation"],
    agent_pb2.DESCRIPTOR.services_by_name["AgentLink"],
]

# Messages are small (a reload for one CPU is a few KB even with thousands of task
# breakpoints); 16 MiB bounds what a broken or hostile peer can make us buffer.
MAX_MESSAGE = 16 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    # Agents hold streams for hours: ping them so a dead peer is noticed within ~30 s,
    # and allow their client-side keepalive pings without calling them abusive.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_concurrent_streams", 100_000),
    # One arbiter per port: without this a second arbiter binds the same port and the
    # kernel splits the clients between the two.
    ("grpc.so_reuseport", 0),
]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="hwbp-arbiter",
        description=__doc__,
        epilog="`hwbp-arbiter ledger check|backup|restore` checks, backs up or restores a "
        "ledger (see `hwbp-arbiter ledger --help`).",
        formatter_class=DefaultsHelpFormatter,
    )
    config.add_argument(p)
    add_version(p)
    p.add_argument(
        "--listen",
        default="127.0.0.1:50051",
        help="HOST:PORT to listen on; port 0 picks a free one and prints it",
    )
    p.add_argument(
        "--ack-timeout",
        type=float,
        default=2.0,
        help="seconds to wait for every affected agent to acknowledge a reload",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening (or serving metrics) on a non-loopback address without TLS",
    )
    p.add_argument(
        "--db",
        default=DEFAULT_LEDGER,
        help="SQLite ledger file (WAL); ':memory:' keeps nothing across restarts",
    )
    p.add_argument(
        "--db-sync",
        choices=["normal", "full"],
        default="normal",
        help="normal: durable against an arbiter crash; full: also against power loss",
    )
    p.add_argument(
        "--keep-events",
        type=_positive,
        default=KEEP,
        metavar="N",
        help="change events kept in the ledger for `watch --since` to replay after a restart "
        "or failover (the last N seqs; default %(default)s)",
    )
    p.add_argument(
        "--paranoid",
        action="store_true",
        help="check every ledger invariant after each committed change (drills, fuzzing)",
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    p.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="one line per record"
    )
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics over HTTP here; port 0 picks a free one and prints it",
    )
    sec = p.add_argument_group("security (see README: Security)")
    sec.add_argument("--tls-cert", metavar="PEM", help="the arbiter's certificate (chain)")
    sec.add_argument("--tls-key", metavar="PEM", help="its private key")
    sec.add_argument("--tls-ca", metavar="PEM", help="CA bundle that signs agent and client certs")
    sec.add_argument("--policy", metavar="TOML", help="identities and roles (needs TLS)")
    sec.add_argument("--audit-log", metavar="PATH", help="append every decision as a JSON line")
    ha.add_arguments(p)
    config.apply(p, argv)  # the file's keys become defaults: flags still win
    return p.parse_args(argv)


def security(args: argparse.Namespace) -> tuple[TlsConfig | None, Authz]:
    """TLS settings and the permission hook from the flags; raises on a bad combination."""
    tls = TlsConfig.resolve(args.tls_cert, args.tls_key, args.tls_ca, env={})
    if tls is not None:
        tls.read()  # a missing file stops us now, not at the first handshake
    if args.policy and tls is None:
        raise PolicyError("--policy needs TLS (--tls-cert, --tls-key, --tls-ca) to know callers")
    policy = Policy.load(args.policy) if args.policy else None
    audit = AuditLog(args.audit_log) if args.audit_log else None
    return tls, Authz(policy, tls=tls is not None, audit=audit)


def _is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve(
    args: argparse.Namespace, tls: TlsConfig | None = None, authz: Authz | None = None
) -> int:
    fleet = Fleet(ack_timeout=args.ack_timeout)
    fleet.changes = EventLog(args.keep_events)
    fleet.authz = authz or fleet.authz
    fleet.paranoid = args.paranoid
    sessions = SessionTable()
    replication = None
    store: Store
    try:
        if ha.enabled(args):  # the ledger is loaded when this replica takes over
            etcd = ha.open_store(args)
            replication, store = ha.Replication(args, etcd), etcd
        else:
            store = open_store(args.db, sync=args.db_sync)
        writer = LedgerWriter(store)
        persistence = Persistence(writer, fleet, sessions)
        fleet.on_commit = persistence.host_committed
        loop_now = asyncio.get_running_loop().time()
        restored = persistence.restore(loop_now) if replication is None else None
    except ha.StoreConfigError as err:
        print(f"hwbp-arbiter: {err}", file=sys.stderr)
        return 2
    except (LedgerCorrupt, LedgerInUse, LedgerWriteFailed) as err:
        print(f"hwbp-arbiter: refusing to start: {err}", file=sys.stderr)
        return 3
    fleet.on_host_created = persistence.host_created
    fleet.on_host_forgotten = persistence.host_forgotten
    sessions.on_open = persistence.session_opened
    sessions.on_end = persistence.session_ended
    if restored is not None:
        log.info(
            "ledger %s: %d hosts, %d reservations, %d ptrace attachments, %d sessions, "
            "%d idempotency keys restored; next id r%d",
            args.db,
            restored.hosts,
            restored.reservations,
            restored.attachments,
            restored.sessions,
            restored.keys,
            fleet.next_id,
        )
    metrics = Metrics(fleet)
    metrics.start()
    metrics.registry.register(HealthCollector(writer))
    gate = [] if replication is None else [replication.interceptor]
    server = grpc.aio.server(
        options=SERVER_OPTIONS,
        interceptors=[*gate, MalformedRequests(), MetricsInterceptor(metrics)],
    )
    arbiter_pb2_grpc.add_ArbiterServicer_to_server(ArbiterServicer(fleet, sessions), server)
    session_pb2_grpc.add_SessionsServicer_to_server(SessionsServicer(fleet, sessions), server)
    ptrace_pb2_grpc.add_PtraceServicer_to_server(PtraceServicer(fleet, sessions), server)
    simulation_pb2_grpc.add_SimulationServicer_to_server(SimulationServicer(fleet), server)
    agent_pb2_grpc.add_AgentLinkServicer_to_server(
        AgentLinkServicer(fleet, uuid.uuid4().hex[:12]), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [s.full_name for s in SERVICES] + [reflection.SERVICE_NAME, health.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    status = Health(health_servicer, (s.full_name for s in SERVICES))
    await status.apply()  # NOT_SERVING until we listen
    writer.listeners.append(status.ledger)

    if args.metrics_listen:
        try:
            metrics_host, metrics_port = metrics.serve(args.metrics_listen)
        except (OSError, ValueError) as err:
            print(
                f"hwbp-arbiter: cannot serve metrics on {args.metrics_listen}: {err}",
                file=sys.stderr,
            )
            return 2
        print(f"metrics on {metrics_host}:{metrics_port}", flush=True)
    try:
        if tls is None:
            port = server.add_insecure_port(args.listen)
        else:
            port = server.add_secure_port(args.listen, server_credentials(tls))
            log.info("mutual TLS: peers need a certificate signed by %s", tls.ca)
    except RuntimeError:  # recent grpcio raises where older versions returned 0
        port = 0
    if port == 0:
        print(
            f"hwbp-arbiter: cannot listen on {args.listen}: {_why_not(args.listen)}",
            file=sys.stderr,
        )
        return 2
    await server.start()
    address = f"{args.listen.rsplit(':', 1)[0]}:{port}"
    await writer.probe()  # a ledger that cannot take writes is not SERVING from the start
    status.started = True
    if replication is not None:  # the services serve on the leader only
        await replication.start(address, persistence, status, metrics)
    await status.apply()
    # Before the address is printed: whoever waits for it may send a SIGHUP at once.
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGHUP, reload_policy, fleet.authz, args.policy
    )
    print(f"hwbp-arbiter listening on {address}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    background = [
        asyncio.create_task(supervise("lease reaper", lambda: reaper(fleet, sessions))),
        asyncio.create_task(supervise("ledger watch", writer.watch)),
    ]
    await stop.wait()

    log.info("draining: no new changes, finishing those in flight")
    fleet.draining = True
    status.draining = True
    await status.apply()
    await asyncio.wait_for(asyncio.gather(*(h.drain() for h in fleet.hosts.values())), timeout=10)
    if replication is not None:
        await replication.stop()
    for task in background:
        task.cancel()
    for host in fleet.hosts.values():  # end agent streams cleanly; they reconnect elsewhere
        for channel in host.channels:
            if channel is not None:
                channel.close()
    await server.stop(grace=1.0)
    metrics.stop()
    writer.close()
    if fleet.authz.audit is not None:
        fleet.authz.audit.close()
    log.info("stopped")
    return 0


def _why_not(listen: str) -> str:
    """Why gRPC could not bind ``listen``: bind it ourselves to learn the kernel's answer."""
    host, _, port = listen.rpartition(":")
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError) as err:
        return f"not an address this machine can listen on ({err})"
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(addr)
            except OSError as err:
                hint = " (is another arbiter running?)" if err.errno == errno.EADDRINUSE else ""
                return f"{(err.strerror or str(err)).lower()}{hint}"
    return "the gRPC runtime refused it"


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if list(argv[:1]) == ["ledger"]:  # hwbp-arbiter ledger check|backup|restore
        return ledger_tools.main(argv[1:])
    args = parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        tls, authz = security(args)
    except (TlsConfigError, PolicyError, OSError) as err:
        print(f"hwbp-arbiter: {err}", file=sys.stderr)
        return 2
    if tls is None and not _is_loopback(args.listen) and not args.insecure:
        print(
            f"hwbp-arbiter: refusing to listen on {args.listen} without TLS; "
            "use a loopback address or pass --insecure",
            file=sys.stderr,
        )
        return 2
    if args.metrics_listen and not _is_loopback(args.metrics_listen) and not args.insecure:
        # Plain HTTP that names every host and holder: opening it to the network is a choice.
        print(
            f"hwbp-arbiter: refusing to serve metrics on {args.metrics_listen} (plain HTTP); "
            "use a loopback address or pass --insecure",
            file=sys.stderr,
        )
        return 2
    try:
        return asyncio.run(serve(args, tls, authz))
    except KeyboardInterrupt:
        return 0
