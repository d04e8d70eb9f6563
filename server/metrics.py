"""Prometheus metrics for one arbiter: fleet gauges read at scrape time, plus counters.

Gauges (slots, agents, reservations, generations) are not kept up to date by hand: a
collector reads the Fleet when Prometheus scrapes, so they can never drift from the
ledger. The Fleet belongs to the event loop, so the scrape (on the HTTP thread) asks
the loop for a snapshot instead of walking dicts the loop may be changing.
Counters and histograms are fed by the gRPC interceptor, the agent-answer hook in
``server.links`` and the event bus. Each arbiter gets its own CollectorRegistry, so
several arbiters in one process (tests) never share a series.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hwbp.model import Scope
from hwbp.pipeline import Link
from hwbp.server import links
from hwbp.server.events import WatcherTooSlow
from hwbp.server.fleet import Fleet
from hwbp.server.hosts import ENOSPC
from hwbp.server.links import AckResult, AgentChannel
from hwbp.v1 import types_pb2
from hwbp.wire.helpformat import version

log = logging.getLogger("hwbp.server")

# Sim agents answer in about a millisecond, perf agents in a few, and the default ack
# timeout is 2 s: the buckets resolve both ends.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
SCRAPE_TIMEOUT = 2.0  # seconds a scrape waits for the event loop before giving up
EXPIRED = "lease expired"  # the reason server.sessions' reaper gives LEASE_EXPIRED events
SEEN_SESSIONS = 1024  # expired sessions remembered, to count each once across hosts


@dataclass(frozen=True, slots=True)
class HostSnapshot:
    """What the gauges show for one host, copied on the event loop."""

    name: str
    generation: int
    slots: int
    used: tuple[int, ...]
    connected: int
    synced: int  # live agents that acknowledged the newest generation sent to them
    by_scope: dict[str, int]
    ack_timeouts: int


def snapshot(fleet: Fleet) -> list[HostSnapshot]:
    """Copy what the gauges need; call only on the thread that owns ``fleet``."""
    out = []
    for name in sorted(fleet.hosts):
        host = fleet.hosts[name]
        by_scope = {s.value: host.ledger.count(s) for s in Scope}
        out.append(
            HostSnapshot(
                name=name,
                generation=host.generation,
                slots=host.profile.registers,
                used=tuple(host.ledger.used(cpu) for cpu in range(host.ncpus)),
                connected=sum(1 for ch in host.channels if ch is not None and ch.open),
                synced=sum(
                    1
                    for c in host.pipeline.cpus
                    if c.state is Link.LIVE and c.in_flight is None and c.acked == c.sent
                ),
                by_scope=by_scope,
                ack_timeouts=host.timeouts,
            )
        )
    return out


class FleetCollector(Collector):
    """Gauges computed from the Fleet at scrape time."""

    def __init__(self, fleet: Fleet, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.fleet = fleet
        self.loop = loop

    def _hosts(self) -> list[HostSnapshot]:
        loop = self.loop
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if loop is None or on_loop or not loop.is_running():
            return snapshot(self.fleet)
        done: concurrent.futures.Future[list[HostSnapshot]] = concurrent.futures.Future()

        def take() -> None:
            try:
                done.set_result(snapshot(self.fleet))
            except Exception as err:  # surfaced to the scraping thread below
                done.set_exception(err)

        loop.call_soon_threadsafe(take)
        return done.result(timeout=SCRAPE_TIMEOUT)

    def collect(self) -> Iterator[Metric]:
        try:
            hosts = self._hosts()
        except (concurrent.futures.TimeoutError, RuntimeError) as err:
            log.warning("metrics: fleet snapshot unavailable (%r); gauges omitted", err)
            return
        used = GaugeMetricFamily(
            "hwbp_slots_used",
            "Debug registers in use on a CPU (CPU-bound + busiest task, the kernel's formula)",
            labels=["host", "cpu"],
        )
        total = GaugeMetricFamily(
            "hwbp_slots_total", "Debug address registers a CPU has", labels=["host", "cpu"]
        )
        agents = GaugeMetricFamily(
            "hwbp_agents_connected", "CPU agents with an open stream", labels=["host"]
        )
        synced = GaugeMetricFamily(
            "hwbp_agents_synced",
            "CPU agents live and acknowledging the newest generation sent to them",
            labels=["host"],
        )
        reservations = GaugeMetricFamily(
            "hwbp_reservations", "Reservations held, by scope", labels=["host", "scope"]
        )
        generation = GaugeMetricFamily(
            "hwbp_generation", "Latest generation of a host's register state", labels=["host"]
        )
        timeouts = CounterMetricFamily(
            "hwbp_ack_timeouts",
            "CPU agents that did not acknowledge a reload in time (each was fenced)",
            labels=["host"],
        )
        for h in hosts:
            for cpu, n in enumerate(h.used):
                used.add_metric([h.name, str(cpu)], n)
                total.add_metric([h.name, str(cpu)], h.slots)
            agents.add_metric([h.name], h.connected)
            synced.add_metric([h.name], h.synced)
            for scope, n in h.by_scope.items():
                reservations.add_metric([h.name, scope], n)
            generation.add_metric([h.name], h.generation)
            timeouts.add_metric([h.name], h.ack_timeouts)
        yield from (used, total, agents, synced, reservations, generation, timeouts)


def nack_class(result: AckResult) -> str:
    """The reason code the arbiter reports for a NACK (bounded, unlike the NACK's text)."""
    if not result.errno:
        return "AGENT_REFUSED"
    return "KERNEL_NO_FREE_SLOT" if result.errno == ENOSPC else "KERNEL_REFUSED"


@dataclass(eq=False)
class Metrics:
    """Every metric of one arbiter, in a registry of its own."""

    fleet: Fleet
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    _http: WSGIServer | None = field(default=None, init=False, repr=False)
    _follower: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _expired: deque[str] = field(
        default_factory=lambda: deque(maxlen=SEEN_SESSIONS), init=False, repr=False
    )

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "hwbp_reservation_requests",
            "Arbiter.Reserve calls, by scope and result (ok or the refusal's reason code)",
            ["scope", "result"],
            registry=r,
        )
        self.ack_seconds = Histogram(
            "hwbp_reload_ack_seconds",
            "Time from sending a reload to an agent to its ACK or NACK",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.nacks = Counter(
            "hwbp_nacks",
            "Reloads refused by an agent, by reason code",
            ["reason_class"],
            registry=r,
        )
        self.lease_expiries = Counter(
            "hwbp_lease_expiries",
            "Sessions whose lease expired while they held breakpoints or attachments",
            registry=r,
        )
        self.rpc_seconds = Histogram(
            "hwbp_rpc_seconds",
            "Unary RPC handling time, by method and status code (streams are not timed)",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.collector = FleetCollector(self.fleet)
        r.register(self.collector)
        # The standard process_* series (CPU, memory, file descriptors, start time) and
        # python_info, as the default registry has them, plus which build is running.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Gauge(
            "hwbp_build_info",
            "The running arbiter's version (always 1; the version is the label)",
            ["version"],
            registry=r,
        ).labels(version()).set(1)

    # --- feeds -------------------------------------------------------------------

    def on_answer(self, channel: AgentChannel, result: AckResult, seconds: float) -> None:
        """links.ANSWER_HOOKS entry: only channels of this arbiter's fleet count."""
        host = self.fleet.hosts.get(channel.host)
        if host is None or channel.cpu >= host.ncpus or host.channels[channel.cpu] is not channel:
            return
        self.ack_seconds.observe(seconds)
        if not result.ok:
            self.nacks.labels(nack_class(result)).inc()

    def on_event(self, ev: types_pb2.Event) -> None:
        """A session's lease expiry is published once per host; count the session once."""
        if ev.kind != types_pb2.EVENT_KIND_LEASE_EXPIRED or ev.reason != EXPIRED:
            return
        if ev.request_id in self._expired:
            return
        self._expired.append(ev.request_id)
        self.lease_expiries.inc()

    async def _follow(self) -> None:
        def accept(ev: object) -> bool:
            return isinstance(ev, types_pb2.Event) and ev.kind == types_pb2.EVENT_KIND_LEASE_EXPIRED

        while True:
            sub = self.fleet.bus.subscribe(accept, frozenset({types_pb2.EVENT_KIND_LEASE_EXPIRED}))
            try:
                while True:
                    ev = await sub.get()
                    if isinstance(ev, types_pb2.Event):  # what accept() took
                        self.on_event(ev)
            except WatcherTooSlow:
                log.warning("metrics: fell behind the event bus; resubscribing")
            finally:
                self.fleet.bus.unsubscribe(sub)

    # --- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Attach to the running loop: agent answers, events, loop-side snapshots."""
        self.collector.loop = asyncio.get_running_loop()
        links.ANSWER_HOOKS.append(self.on_answer)
        self._follower = asyncio.create_task(self._follow(), name="metrics events")

    def serve(self, listen: str) -> tuple[str, int]:
        """Serve /metrics over HTTP on ``HOST:PORT`` (port 0 picks one); returns the address."""
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        self._http, _ = start_http_server(int(port), addr=host, registry=self.registry)
        return host, int(self._http.server_port)

    def stop(self) -> None:
        if self.on_answer in links.ANSWER_HOOKS:
            links.ANSWER_HOOKS.remove(self.on_answer)
        if self._follower is not None:
            self._follower.cancel()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
