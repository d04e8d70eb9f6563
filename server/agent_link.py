"""The AgentLink service: one bidirectional stream per CPU agent.

The first message must be a Hello naming host, CPU and the host's CPU count, and
reporting the registers the CPU actually holds; the arbiter answers Welcome and then a
full-state Reload (resync), and from then on pushes reloads and controls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from grpc.aio import ServicerContext

from hwbp.errors import (
    AgentAlreadyConnected,
    AgentFenced,
    CpuNotFound,
    HwbpError,
    InvalidArgument,
    PermissionDenied,
)
from hwbp.server.authz import Action, Principal, Target
from hwbp.server.errors import Malformed, abort
from hwbp.server.fleet import Fleet, by_exception
from hwbp.server.hosts import Host
from hwbp.server.links import AckResult, AgentChannel
from hwbp.v1 import agent_pb2_grpc, types_pb2
from hwbp.v1.agent_pb2 import AgentMessage, ArbiterMessage, Welcome
from hwbp.wire import convert

log = logging.getLogger("hwbp.server")
HELLO_TIMEOUT = 10.0  # seconds an agent has to introduce itself


class AgentLinkServicer(agent_pb2_grpc.AgentLinkServicer):
    def __init__(self, fleet: Fleet, arbiter_id: str) -> None:
        self.fleet = fleet
        self.arbiter_id = arbiter_id
        self._tasks: set[asyncio.Task[None]] = set()

    async def Connect(
        self,
        request_iterator: AsyncIterator[AgentMessage | Malformed],
        context: ServicerContext[AgentMessage, ArbiterMessage],
    ) -> AsyncIterator[ArbiterMessage]:
        try:
            first = await asyncio.wait_for(anext(request_iterator), HELLO_TIMEOUT)
        except (StopAsyncIteration, TimeoutError):
            return
        try:
            who = self.fleet.authz.identify(context)
            host, channel = self._hello(first, who, context.peer())
        except HwbpError as err:
            log.warning("agent refused: %s", err)
            await abort(context, err, "hello")
        channel.handler = asyncio.current_task()
        yield ArbiterMessage(
            welcome=Welcome(generation=host.generation, arbiter_id=self.arbiter_id)
        )
        reader = asyncio.create_task(self._read(request_iterator, host, channel, who))
        host.connect(channel)  # the pipeline sends the resync
        ended = "stream ended"
        try:
            while (msg := await channel.outbox.get()) is not None:
                yield msg
            if reader.done() and not reader.cancelled() and (refused := reader.result()):
                await abort(context, refused, "report")
            if channel.close_reason:
                ended = channel.close_reason
                await abort(context, AgentFenced(channel.close_reason, host=host.name), "fence")
        finally:
            reader.cancel()
            if host.disconnect(channel, ended):
                log.info("host %s cpu %d: agent offline (%s)", host.name, channel.cpu, ended)
                self._event(host, types_pb2.EVENT_KIND_AGENT_OFFLINE, channel.cpu)

    def _hello(
        self, msg: AgentMessage | Malformed, who: Principal, peer: str
    ) -> tuple[Host, AgentChannel]:
        if isinstance(msg, Malformed) or msg.WhichOneof("body") != "hello":
            raise InvalidArgument("the first message on an agent stream must be a hello")
        hello = msg.hello
        name = convert.name(hello.host, "hello.host")
        target = Target(name, name=f"cpu {hello.cpu}")
        self.fleet.authz.authorize(who, "hello", Action.AGENT_HELLO, target)
        if not 0 < hello.ncpus <= convert.MAX_CPUS:
            raise InvalidArgument(
                f"hello.ncpus must be 1..{convert.MAX_CPUS}, got {hello.ncpus}", field="ncpus"
            )
        if hello.cpu >= hello.ncpus:
            raise CpuNotFound(
                f"cpu {hello.cpu} is not below the host's {hello.ncpus} cpus",
                host=name,
                cpu=hello.cpu,
            )
        host = self.fleet.ensure_host(
            name, hello.ncpus, convert.features_from(hello), cpu=hello.cpu
        )
        if hello.last_applied_generation > host.generation and host.pipeline.idle:
            # It applied a generation this arbiter never stored (a previous leader's
            # rolled-back state): keep generations monotonic as its CPU saw them.
            host.generation = hello.last_applied_generation
        holder = host.live_channel(hello.cpu)
        if holder is not None:
            raise AgentAlreadyConnected(
                f"cpu {hello.cpu} of host {name} already has a live agent "
                f"({holder.peer or 'connected'}); this one is refused while it lives",
                host=name,
                cpu=hello.cpu,
                holder=holder.peer,
            )
        channel = AgentChannel(
            name, hello.cpu, convert.name(hello.backend, "backend") or "sim", peer
        )
        channel.reported(convert.bounded_image(hello.image))
        channel.acked_generation = hello.last_applied_generation
        channel.deltas = hello.deltas
        log.info(
            "host %s cpu %d: agent online (%s backend, last applied generation %d)",
            name,
            hello.cpu,
            channel.backend,
            hello.last_applied_generation,
        )
        self._event(host, types_pb2.EVENT_KIND_AGENT_ONLINE, hello.cpu)
        return host, channel

    async def _read(
        self,
        requests: AsyncIterator[AgentMessage | Malformed],
        host: Host,
        channel: AgentChannel,
        who: Principal,
    ) -> PermissionDenied | None:
        """Apply what the agent reports; a report it may not make ends the stream.

        Acks and exits can only be for the host the stream said hello for; hits name a
        host, so a hit naming another is refused (returned, for Connect to abort with).
        """
        try:
            async for msg in requests:
                if isinstance(msg, Malformed):
                    log.warning(
                        "host %s cpu %d: a message that does not parse ends the stream: %s",
                        host.name,
                        channel.cpu,
                        msg.problem,
                    )
                    break
                kind = msg.WhichOneof("body")
                if kind == "ack":
                    host.answered(
                        channel,
                        AckResult(
                            msg.ack.generation,
                            True,
                            convert.bounded_image(msg.ack.image),
                            detail=convert.bounded(msg.ack.detail, "ack.detail"),
                        ),
                    )
                elif kind == "nack":
                    n = msg.nack
                    reason = convert.bounded(n.reason, "nack.reason")
                    log.log(
                        logging.INFO if n.needs_full else logging.WARNING,
                        "host %s cpu %d: NACK generation %d%s: %s",
                        host.name,
                        channel.cpu,
                        n.generation,
                        " (it needs the full state)" if n.needs_full else "",
                        reason,
                    )
                    host.answered(
                        channel,
                        AckResult(
                            n.generation,
                            False,
                            reason=reason,
                            errno=n.errno,
                            reservation_id=convert.bounded(
                                n.reservation_id, "nack.reservation_id", convert.MAX_NAME
                            ),
                            needs_full=n.needs_full,
                        ),
                    )
                elif kind == "control_result":
                    channel.control_result(convert.bounded_control_result(msg.control_result))
                elif kind == "hits":
                    for claimed in {h.host for h in msg.hits.hits if h.host} - {host.name}:
                        target = Target(claimed, name=f"hits from cpu {channel.cpu}")
                        self.fleet.authz.authorize(who, "hits", Action.AGENT_REPORT, target)
                    hits = convert.bounded_hits(msg.hits.hits)
                    if len(hits) < len(msg.hits.hits):
                        log.warning(
                            "host %s cpu %d: %d hits in one report, %d kept",
                            host.name,
                            channel.cpu,
                            len(msg.hits.hits),
                            len(hits),
                        )
                    for exception in by_exception(hits):
                        self.fleet.publish_hits(host, channel.cpu, exception)
                elif kind == "task_exited":
                    self._tasks.add(asyncio.create_task(self._exited(host, msg.task_exited.task)))
                    self._tasks = {t for t in self._tasks if not t.done()}
                else:
                    log.warning(
                        "host %s cpu %d: unexpected %s ignored", host.name, channel.cpu, kind
                    )
        except asyncio.CancelledError:
            raise
        except PermissionDenied as err:
            log.warning("host %s cpu %d: report refused: %s", host.name, channel.cpu, err)
            return err
        except Exception as err:
            log.info("host %s cpu %d: stream ended: %s", host.name, channel.cpu, err)
        finally:
            channel.close()  # ends the writer loop in Connect
        return None

    async def _exited(self, host: Host, task: int) -> None:
        try:
            await host.exit_task(f"exit:{task}", task)
        except HwbpError as err:
            log.error("host %s: flushing exited task %d failed: %s", host.name, task, err)

    def _event(self, host: Host, kind: types_pb2.EventKind.ValueType, cpu: int) -> None:
        self.fleet.bus.publish(
            types_pb2.Event(
                kind=kind,
                host=host.name,
                cpu=cpu,
                generation=host.generation,
                seq=self.fleet.bus.change_seq,
            )
        )
