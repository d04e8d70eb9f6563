"""The Simulation service: context switches and memory accesses on an agent's CPU, task exit.

A task exit releases everything the task holds, whoever holds it, so it is not a
simulation right: only the host's agent (reporting a fact about its own host) or an
admin (a drill) may say a task exited.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from hwbp.errors import AckTimeout, CpuNotFound, CpuOffline, FailedPrecondition
from hwbp.server.attachments import flush_attachment
from hwbp.server.authz import Action, Target
from hwbp.server.errors import rpc
from hwbp.server.fleet import Fleet, check_open
from hwbp.server.hosts import Host
from hwbp.server.links import AgentChannel, Disconnected, StreamStuck
from hwbp.v1 import agent_pb2, simulation_pb2, simulation_pb2_grpc, types_pb2
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


async def exit_task(fleet: Fleet, host: Host, task: int, request_id: str) -> int:
    """A task exited: its task breakpoints and ptrace state go, like the kernel's flush."""
    mine = [r.id for r in host.ledger.by_task(task) if r.ptrace_index is None]
    saved = host.attachments.get(task)

    def apply() -> tuple[int, range]:
        for rid in mine:
            if rid in host.ledger:
                host.ledger.release(rid)
        return len(mine) + flush_attachment(host, task), range(host.ncpus)

    def undo() -> None:
        if saved is not None:
            host.attachments[task] = saved

    released: int = await host.change(request_id, apply, undo)
    ev = types_pb2.Event(
        kind=types_pb2.EVENT_KIND_TASK_EXITED,
        host=host.name,
        task=task,
        generation=host.generation,
        request_id=request_id,
        seq=fleet.bus.next_seq(),
        reason=f"{released} released",
    )
    fleet.bus.publish(ev)
    log.info("request %s: task %d on %s exited, %d released", request_id, task, host.name, released)
    return released


class SimulationServicer(simulation_pb2_grpc.SimulationServicer):
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    @rpc
    async def ContextSwitch(self, request: Any, context: Any) -> Any:
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
            seq=self.fleet.bus.next_seq(),
        )
        self.fleet.bus.publish(ev)
        log.info(
            "request %s: %s cpu %d switched to task %s",
            request.request_id,
            host.name,
            request.cpu,
            task,
        )
        return simulation_pb2.ContextSwitchResponse(image=result.image)

    @rpc
    async def MemoryAccess(self, request: Any, context: Any) -> Any:
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
        return simulation_pb2.MemoryAccessResponse(hit=bool(hits), hits=hits, dr6=dr6)

    @rpc
    async def ExitTask(self, request: Any, context: Any) -> Any:
        target = Target(request.host, name=f"task {request.task}")
        self.fleet.authz.check(context, request.request_id, Action.TASK_EXIT, target)
        check_open(self.fleet)
        host = self.fleet.host(convert.name(request.host, "host"))
        released = await exit_task(self.fleet, host, convert.task(request.task), request.request_id)
        return simulation_pb2.ExitTaskResponse(released=released)
