"""hwbp-agent: one CPU's agent (or, with --fleet, K simulated CPUs in one process)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

import grpc

from hwbp.agent.failures import error_info
from hwbp.agent.link import START_TIMEOUT, AgentLink, Backend
from hwbp.agent.sim import SimBackend
from hwbp.agent.supervise import run_all
from hwbp.arch import DEFAULT_FEATURES, HostFeatures
from hwbp.client.endpoints import EndpointError, Endpoints
from hwbp.client.endpoints import parse as parse_endpoints
from hwbp.wire import config, tls
from hwbp.wire.helpformat import DefaultsHelpFormatter, add_version

log = logging.getLogger("hwbp.agent")

# Agents hold one stream for hours: keepalive pings notice a dead arbiter within ~30 s
# even when no reload is flowing (the arbiter permits pings every 5 s).
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # After an arbiter restart, reconnect within ~0.1-2 s rather than grpc's default 1-120 s:
    # a CPU's registers must converge to the ledger quickly.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]
STREAMS_PER_CHANNEL = 64  # fleet mode: spread streams over connections
OPTIONS = CHANNEL_OPTIONS


class Replicas:
    """``--arbiter A,B,C``: the replicas of a replicated arbiter. Every link uses the one
    believed to lead; a NOT_LEADER refusal naming the leader, or a broken stream, moves
    them on (``client.endpoints`` decides where). Streams share a channel per replica,
    at most STREAMS_PER_CHANNEL each."""

    def __init__(self, spec: str, cfg: tls.TlsConfig | None) -> None:
        self.endpoints = Endpoints.of(spec)
        self.cfg = cfg
        self._channels: dict[tuple[str, int], grpc.aio.Channel] = {}

    def channel(self, cpu: int) -> grpc.aio.Channel:
        key = (self.endpoints.current, cpu // STREAMS_PER_CHANNEL)
        ch = self._channels.get(key)
        if ch is None:
            ch = self._channels[key] = tls.aio_channel(key[0], self.cfg, CHANNEL_OPTIONS)
        return ch

    def failed(self, exc: BaseException) -> None:
        info = error_info(exc)
        before = self.endpoints.current
        after = self.endpoints.after(
            info.reason if info else "", dict(info.metadata) if info else {}
        )
        if after is not None and after != before:
            log.info("arbiter replica %s refused or failed; trying %s", before, after)

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()


def _int(text: str) -> int:
    return int(text, 0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="hwbp-agent", description=__doc__, formatter_class=DefaultsHelpFormatter
    )
    config.add_argument(p)
    add_version(p)
    p.add_argument(
        "--arbiter",
        default=os.environ.get("HWBP_ARBITER", "127.0.0.1:50051"),
        help="HOST:PORT, or the replicas of a replicated arbiter as A,B,C (the agent "
        "follows the leader); default $HWBP_ARBITER, else 127.0.0.1:50051",
    )
    p.add_argument("--host", default=os.uname().nodename, help="host name (default: this host)")
    p.add_argument("--cpu", type=int, help="the CPU this agent serves (required without --fleet)")
    p.add_argument(
        "--cpus",
        type=int,
        default=os.cpu_count() or 1,
        help="CPUs of the host (default: this machine's); with --fleet, how many to run",
    )
    p.add_argument(
        "--backend",
        choices=["sim", "perf", "auto"],
        default="sim",
        help="sim: simulated registers; perf: the CPU's own through perf_event_open; "
        "auto: perf where the kernel allows it, else sim",
    )
    p.add_argument("--fleet", action="store_true", help="run --cpus simulated CPU agents")
    p.add_argument(
        "--ack-delay",
        type=float,
        default=0.0,
        help="seconds to wait before applying each reload (drills: a slow agent)",
    )
    p.add_argument(
        "--start-timeout",
        type=float,
        default=START_TIMEOUT,
        help="seconds a stream may stay silent before its CPU is live (then: reconnect)",
    )
    p.add_argument(
        "--refuse-addr",
        type=_int,
        default=None,
        help="sim backend refuses reloads programming this address (drills: NACK)",
    )
    sim = p.add_argument_group(
        "the simulated host (sim backend; the perf backend reports the real one's)"
    )
    sim.add_argument(
        "--bpext", action="store_true", help="its CPU has AMD's breakpoint extension (ranges)"
    )
    sim.add_argument(
        "--no-kprobes",
        dest="kprobes",
        action="store_false",
        help="its kernel has no kprobes: execute breakpoints in kernel space are refused",
    )
    sim.add_argument(
        "--unprivileged",
        dest="privileged",
        action="store_false",
        help="the agent lacks CAP_SYS_ADMIN: kernel addresses are refused (EPERM)",
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    p.add_argument("--tls-cert", help=f"certificate named agent:HOST (default ${tls.ENV_CERT})")
    p.add_argument("--tls-key", help=f"its private key (default ${tls.ENV_KEY})")
    p.add_argument(
        "--tls-ca", help=f"CA that signed the arbiter's certificate (default ${tls.ENV_CA})"
    )
    config.apply(p, argv)  # the file's keys become defaults: flags still win
    args = p.parse_args(argv)
    try:
        args.tls = tls.TlsConfig.resolve(args.tls_cert, args.tls_key, args.tls_ca)
        if args.tls is not None:
            args.tls.read()
    except tls.TlsConfigError as err:
        p.error(str(err))
    try:
        parse_endpoints(args.arbiter)
    except EndpointError as err:
        p.error(f"--arbiter: {err}")
    if not args.fleet and args.cpu is None:
        p.error("give --cpu N, or --fleet to run --cpus simulated CPUs")
    if args.cpus < 1:
        p.error("--cpus must be at least 1")
    if not args.start_timeout > 0:
        p.error("--start-timeout must be a positive number of seconds")
    if args.cpu is not None and not 0 <= args.cpu < args.cpus:
        p.error(f"--cpu must be in 0..{args.cpus - 1}")
    return args


def make_backend(
    kind: str, cpu: int, refuse_addr: int | None, features: HostFeatures = DEFAULT_FEATURES
) -> Backend:
    """sim, perf, or auto: perf where a probe shows breakpoints are permitted.

    ``features`` is what a simulated host offers; a perf backend reports this machine's.
    """
    if kind == "sim":
        return SimBackend(cpu, refuse_addr=refuse_addr, features=features)
    from hwbp.agent import perf

    reason = perf.probe()
    if reason is None:
        log.info("cpu %d: perf_event_open breakpoints permitted: using the perf backend", cpu)
        return perf.PerfBackend(cpu)
    if kind == "perf":
        raise SystemExit(f"hwbp-agent: the perf backend is not usable here: {reason}")
    log.info("cpu %d: %s; using the sim backend", cpu, reason)
    return SimBackend(cpu, refuse_addr=refuse_addr, features=features)


async def run(args: argparse.Namespace) -> int:
    cpus = list(range(args.cpus)) if args.fleet else [args.cpu]
    if not args.fleet and args.backend != "sim" and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {args.cpu})
        except OSError as err:
            log.warning("cannot pin to cpu %d: %s", args.cpu, err)
    route = Replicas(args.arbiter, args.tls) if "," in args.arbiter else None
    channels = [
        tls.aio_channel(
            route.endpoints.current if route else args.arbiter, args.tls, CHANNEL_OPTIONS
        )
        for _ in range(0, len(cpus), STREAMS_PER_CHANNEL)
    ]
    live: set[int] = set()
    features = HostFeatures(bpext=args.bpext, kprobes=args.kprobes, privileged=args.privileged)

    def on_live(link: AgentLink) -> None:
        # Once, when every CPU has been live (however many tries its first took).
        if link.cpu not in live:
            live.add(link.cpu)
            if len(live) == len(cpus):
                print("fleet ready" if args.fleet else "agent ready", flush=True)

    links = [
        AgentLink(
            channels[i // STREAMS_PER_CHANNEL],
            args.host,
            cpu,
            args.cpus,
            make_backend(args.backend, cpu, args.refuse_addr, features),
            ack_delay=args.ack_delay,
            on_live=on_live,
            start_timeout=args.start_timeout,
            route=route,
            arbiter=args.arbiter,
        )
        for i, cpu in enumerate(cpus)
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        code = await run_all(links, stop)
    finally:
        for link in links:
            if link.state.value not in ("draining", "closed"):
                link.stop()
        for link in links:
            link.backend.close()
        for ch in channels:
            await ch.close()
        if route is not None:
            await route.close()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 0
