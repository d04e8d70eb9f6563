"""The standard health check as a typed call.

The grpcio-health-checking stubs declare ``HealthStub`` without its methods, so a call
through it is untyped; this builds the same unary method the generated stub does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

import grpc
from grpc_health.v1 import health_pb2

if TYPE_CHECKING:  # the stubs' generic; grpc's own class takes no parameters
    HealthCheck: TypeAlias = grpc.UnaryUnaryMultiCallable[
        health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
    ]
else:
    HealthCheck = grpc.UnaryUnaryMultiCallable

CHECK = "/grpc.health.v1.Health/Check"


def health_check(channel: grpc.Channel) -> HealthCheck:
    """``Health.Check`` on ``channel``: call it with a HealthCheckRequest."""
    return channel.unary_unary(
        CHECK,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
