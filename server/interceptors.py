"""A grpc.aio server interceptor timing unary RPCs and counting reservation outcomes.

Streaming methods (Watch, agent links, keepalives, trap streams, reflection) live for
minutes or hours; their duration says nothing about the arbiter's health, so they
pass through untimed. The reservation result is read from the rich status the servicer
aborted with, so the counter uses the same reason codes clients see.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from hwbp.server.metrics import Metrics
from hwbp.v1 import types_pb2

RESERVE = "/hwbp.v1.Arbiter/Reserve"
_DETAILS_KEY = "grpc-status-details-bin"
_SCOPES = {
    types_pb2.SCOPE_SYSTEM: "system",
    types_pb2.SCOPE_CPU: "cpu",
    types_pb2.SCOPE_TASK: "task",
    types_pb2.SCOPE_TASK_CPU: "task+cpu",
}


def reason_of(context: Any) -> str:
    """The ErrorInfo reason of the status a call aborted with, else its code's name."""
    for key, value in context.trailing_metadata() or ():
        if key != _DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.TypeName() == error_details_pb2.ErrorInfo.DESCRIPTOR.full_name:
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return str(info.reason)
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._wrapped: dict[str, Any] = {}  # one wrapped handler per method, built once

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        method: str = details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        self._wrapped[method] = wrapped = self._wrap(method, handler)
        return wrapped

    def _wrap(self, method: str, handler: Any) -> Any:
        inner = handler.unary_unary
        metrics = self.metrics

        async def timed(request: Any, context: Any) -> Any:
            start = time.perf_counter()
            failed = True
            try:
                response = await inner(request, context)
                failed = False
                return response
            finally:
                code = context.code()
                if isinstance(code, grpc.StatusCode):
                    name = code.name
                else:
                    name = "UNKNOWN" if failed else "OK"
                metrics.rpc_seconds.labels(method.lstrip("/"), name).observe(
                    time.perf_counter() - start
                )
                if method == RESERVE:
                    scope = _SCOPES.get(request.target.scope, "unspecified")
                    result = reason_of(context) if failed or name != "OK" else "ok"
                    metrics.requests.labels(scope, result).inc()

        return grpc.unary_unary_rpc_method_handler(
            timed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
