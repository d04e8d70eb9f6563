"""The tracer-applied flag survives every protobuf crossing: request, reservation, reload."""

from __future__ import annotations

from hwbp.model import Assignment, BpType, Breakpoint, Reservation, Scope, Target
from hwbp.v1 import agent_pb2
from hwbp.wire import convert


def test_the_flag_crosses_the_wire_both_ways() -> None:
    bp = Breakpoint(0x601040, 4, BpType.WRITE, tracer_applied=True)
    assert convert.bp_from(convert.bp_to(bp)) == bp
    a = Assignment("r1", 42, bp)
    sent = agent_pb2.Assignment()
    sent.ParseFromString(convert.assignment_to(a).SerializeToString())
    assert convert.assignment_from(sent) == a
    res = Reservation("r1", "h1", Target(Scope.TASK, task=42), bp, owner="gdbserver")
    assert convert.reservation_to(res).spec.tracer_applied
    plain = Breakpoint(0x601040, 4, BpType.WRITE)
    assert not convert.bp_from(convert.bp_to(plain)).tracer_applied
