"""The one gate in front of a replicated arbiter's services: only the leader serves.

Every Arbiter, Sessions, Ptrace, Simulation and AgentLink call passes through
``GateInterceptor``. On a follower (or a leader whose lease validity ran out, e.g.
right after a pause) it is refused with UNAVAILABLE and an ErrorInfo whose reason is
``NOT_LEADER`` and whose metadata ``leader`` is the leader's advertised address (empty
when no leader is known), mapped to a status by ``server/errors.py`` like every other
error. Health, reflection and the rest pass, so a follower answers who it is.

The decision is made on every call, not once per method: leadership changes at run
time, and a leader is open only while ``valid()`` says its lease is certainly alive.
"""

from __future__ import annotations

import collections.abc
from collections.abc import Callable
from typing import Any

import grpc

from hwbp.errors import NotLeader
from hwbp.server.errors import grpc_status

GATED = (
    "/hwbp.v1.Arbiter/",
    "/hwbp.v1.Sessions/",
    "/hwbp.v1.Ptrace/",
    "/hwbp.v1.Simulation/",
    "/hwbp.v1.AgentLink/",
)


class Gate:
    def __init__(self, advertise: str) -> None:
        self.advertise = advertise
        self.leading = False
        self.leader = ""  # the hint: the leader's advertised address, "" unknown
        self.valid: Callable[[], bool] = lambda: True  # the lease is certainly alive

    @property
    def open(self) -> bool:
        return self.leading and self.valid()

    def refusal(self) -> NotLeader:
        if self.leading:  # our lease validity ran out: we cannot know who leads now
            why = "this arbiter's leadership lapsed (its lease could not be renewed)"
            hint = ""
        else:
            hint = self.leader if self.leader != self.advertise else ""
            why = f"this arbiter ({self.advertise}) is a follower"
        where = f"the leader is {hint}" if hint else "no leader is known yet; retry shortly"
        return NotLeader(f"{why}; {where}", leader=hint, member=self.advertise)


class GateInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self._wrapped: dict[str, Any] = {}

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        method: str = details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = await continuation(details)
        if handler is None or not method.startswith(GATED):
            return handler
        self._wrapped[method] = wrapped = self._wrap(handler)
        return wrapped

    def _wrap(self, handler: Any) -> Any:
        gate = self.gate

        async def refuse(context: Any) -> None:
            await context.abort_with_status(grpc_status(gate.refusal(), ""))

        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                if not gate.open:
                    await refuse(context)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _streaming(gate, refuse, handler.unary_stream), **kwargs
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _streaming(gate, refuse, handler.stream_stream), **kwargs
            )
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: Any) -> Any:
            if not gate.open:
                await refuse(context)
            return await inner_su(requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)


def _streaming(gate: Gate, refuse: Callable[[Any], Any], inner: Any) -> Any:
    async def streaming(request: Any, context: Any) -> Any:
        if not gate.open:
            await refuse(context)
        out = inner(request, context)
        if isinstance(out, collections.abc.AsyncIterator):
            async for item in out:
                yield item
        else:  # a handler that returns a coroutine and writes with context.write
            await out

    return streaming
