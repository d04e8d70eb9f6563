"""The Simulation service: context switches and memory accesses on an agent's CPU, task exit.

A task exit releases everything the task holds, whoever holds it, so it is not a
simulation right: only the host's agent (reporting a fact about its own host) or an
admin (a drill) may say a task exited.
"""

from __future__ import annotations

import asyncio
import logging

from grpc.aio import ServicerContext

from hwbp.errors import AckTimeout, CpuNotFound, CpuOffline, FailedPrecondition
from hwbp.server.authz import Action, Target
from hwbp.server.errors import rpc
from hwbp.server.fleet import Fleet, check_open
from hwbp.server.hosts import Host
from hwbp.server.links import AgentChannel, Disconnected, StreamStuck
from hwbp.v1 import agent_pb2, simulation_pb2_grpc, types_pb2
from hwbp.v1.simulation_pb2 import (
    ContextSwitchRequest,
    ContextSwitchResponse,
    ExitTaskRequest,
    ExitTaskResponse,
    MemoryAccessRequest,
    MemoryAccessResponse,
)
from hwbp.wire import convert

log = logging.getLogger("hwbp.server")


def channel_for(host: Host, cpu: int) -> AgentChannel:
    if cpu >= host.ncpus:
        raise CpuNotFound(
            f"host {host.name} has cpus 0..{host.ncpus - 1}, not {cpu}", host=host.name, cpu=cpu
        )
    channel = host.live_channel(cpu)
    if channel is None:
        raise CpuOffline(
            f"cpu {cpu} of host {host.name} is offline (no agent connected)",
            host=host.name,
            cpu=cpu,
        )
    return channel


async def control(host: Host, cpu: int, request_id: str, **body: object) -> agent_pb2.ControlResult:
    """Send one control to a CPU's agent and wait (bounded) for its result."""
    channel = channel_for(host, cpu)
    try:
        cid, fut = channel.control(request_id, host.generation, **body)
    except StreamStuck as err:
        host.fence(channel, str(err))
        raise CpuOffline(str(err), host=host.name, cpu=cpu) from None
    try:
        result = await asyncio.wait_for(fut, host.ack_timeout)
    except TimeoutError:
        channel.forget(cid)
        raise AckTimeout(
            f"cpu {cpu} of host {host.name} did not answer within {host.ack_timeout:g}s",
            host=host.name,
            cpu=cpu,
        ) from None
    except Disconnected as err:
        raise CpuOffline(str(err), host=host.name, cpu=cpu) from None
    if not result.ok:
        raise FailedPrecondition(
            f"cpu {cpu} of host {host.name} refused: {result.error}", host=host.name, cpu=cpu
        )
    return result


class SimulationServicer(simulation_pb2_grpc.SimulationServicer):
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    @rpc
    async def ContextSwitch(
        self,
        request: ContextSwitchRequest,
        context: ServicerContext[ContextSwitchRequest, ContextSwitchResponse],
    ) -> ContextSwitchResponse:
        self.fleet.authz.check(context, request.request_id, Action.SIMULATE, Target(request.host))
        host = self.fleet.host(convert.name(request.host, "host"))
        task = convert.task(request.task) if request.HasField("task") else None
        result = await control(
            host, request.cpu, request.request_id, switch_task=agent_pb2.SwitchTask(task=task)
        )
        ev = types_pb2.Event(
            kind=types_pb2.EVENT_KIND_CONTEXT_SWITCH,
            host=host.name,
            cpu=request.cpu,
            task=task,
            generation=host.generation,
            request_id=request.request_id,
            seq=self.fleet.bus.change_seq,
        )
        self.fleet.bus.publish(ev)
        log.info(
            "request %s: %s cpu %d switched to task %s",
            request.request_id,
            host.name,
            request.cpu,
            task,
        )
        return ContextSwitchResponse(image=result.image)

    @rpc
    async def MemoryAccess(
        self,
        request: MemoryAccessRequest,
        context: ServicerContext[MemoryAccessRequest, MemoryAccessResponse],
    ) -> MemoryAccessResponse:
        self.fleet.authz.check(context, request.request_id, Action.SIMULATE, Target(request.host))
        host = self.fleet.host(convert.name(request.host, "host"))
        kind = convert.access_type(request.type)
        if request.len not in (1, 2, 4, 8):
            from hwbp.errors import InvalidLength

            raise InvalidLength(
                f"access length must be 1, 2, 4 or 8, got {request.len}", length=request.len
            )
        result = await control(
            host,
            request.cpu,
            request.request_id,
            access=agent_pb2.Access(
                addr=request.addr, len=request.len, type=convert.ACCESS_PB[kind]
            ),
        )
        hits = self.fleet.publish_hits(host, request.cpu, result.hits)  # one access: one #DB
        dr6 = hits[-1].dr6 if hits else result.image.dr6
        return MemoryAccessResponse(hit=bool(hits), hits=hits, dr6=dr6)

    @rpc
    async def ExitTask(
        self, request: ExitTaskRequest, context: ServicerContext[ExitTaskRequest, ExitTaskResponse]
    ) -> ExitTaskResponse:
        target = Target(request.host, name=f"task {request.task}")
        self.fleet.authz.check(context, request.request_id, Action.TASK_EXIT, target)
        check_open(self.fleet)
        host = self.fleet.host(convert.name(request.host, "host"))
        released = await host.exit_task(request.request_id, convert.task(request.task))
        return ExitTaskResponse(released=released)
