"""Agent-supplied strings are bounded before the arbiter keeps or forwards them.

Two agents acking with a 15 MB ``detail`` made every fleet-wide Inventory larger than
gRPC's message limit. ``wire.convert`` bounds each such field (truncating with a marker
that names the field and its real length) and leaves well-behaved messages untouched.
"""

from __future__ import annotations

from hwbp.v1 import agent_pb2
from hwbp.v1 import types_pb2 as pb
from hwbp.wire import convert

HUGE = 15 * 1024 * 1024
BIG = 1024 * 1024  # for fields repeated in one message: large enough, cheap to build


def test_short_text_is_returned_as_is() -> None:
    text = "cpu 0: kernel accepted r1 (pid -1, fd 7, 0 hits)"
    assert convert.bounded(text, "ack.detail") is text


def test_long_text_is_truncated_with_a_marker_naming_field_and_length() -> None:
    out = convert.bounded("x" * HUGE, "ack.detail")
    assert len(out) <= convert.MAX_TEXT
    assert out.startswith("x" * 100)
    assert "ack.detail" in out and str(HUGE) in out and "truncated" in out


def test_bound_holds_for_any_limit_even_one_shorter_than_the_marker() -> None:
    for limit in (0, 1, 5, 40, 128):
        assert len(convert.bounded("y" * 1000, "nack.reason", limit)) <= limit


def test_image_within_bounds_is_not_copied() -> None:
    img = pb.RegisterImage(dr=[1, 2, 3, 4], dr7=0x401, slot_reservation=["r1", "", "", ""])
    assert convert.bounded_image(img) is img


def test_oversized_image_keeps_four_registers_and_short_slot_names() -> None:
    img = pb.RegisterImage(
        dr=list(range(100_000)), dr7=5, dr6=6, slot_reservation=["r" * HUGE] + ["s"] * 1000
    )
    out = convert.bounded_image(img)
    assert list(out.dr) == [0, 1, 2, 3] and (out.dr7, out.dr6) == (5, 6)
    assert len(out.slot_reservation) == 4
    assert all(len(s) <= convert.MAX_NAME for s in out.slot_reservation)
    assert out.ByteSize() < 1024


def test_hit_strings_are_bounded() -> None:
    hit = pb.Hit(host="h" * HUGE, cpu=1, reservation_id="r" * HUGE, addr=0x10, dr6=1)
    out = convert.bounded_hit(hit)
    assert len(out.host) <= convert.MAX_NAME and len(out.reservation_id) <= convert.MAX_NAME
    assert (out.cpu, out.addr, out.dr6) == (1, 0x10, 1)
    fine = pb.Hit(host="h1", reservation_id="r1")
    assert convert.bounded_hit(fine) is fine


def test_control_result_error_image_and_hits_are_bounded() -> None:
    res = agent_pb2.ControlResult(
        control_id=3,
        ok=False,
        error="e" * HUGE,
        image=pb.RegisterImage(slot_reservation=["s" * BIG]),
        hits=[pb.Hit(reservation_id="r" * BIG)] * 3,
    )
    out = convert.bounded_control_result(res)
    assert out.control_id == 3 and not out.ok
    assert out.ByteSize() < 3 * convert.MAX_TEXT
    assert len(out.hits) == 3
    fine = agent_pb2.ControlResult(control_id=1, ok=True, image=pb.RegisterImage(dr=[0] * 4))
    assert convert.bounded_control_result(fine) is fine


def test_many_hits_in_one_report_are_capped() -> None:
    hits = [pb.Hit(reservation_id=f"r{i}") for i in range(10 * convert.MAX_HITS)]
    assert len(convert.bounded_hits(hits)) == convert.MAX_HITS
    few = hits[:3]
    assert convert.bounded_hits(few) == few


def test_assignments_built_in_place_encode_as_converted_ones() -> None:
    """The resync's fast path must carry every field, including any added later."""
    import dataclasses

    from hwbp.model import Assignment, BpType, Breakpoint

    values: dict[str, object] = {"addr": 0xFFFF800000001000, "length": 4, "type": BpType.RW}
    for f in dataclasses.fields(Breakpoint):
        if f.name not in values:
            assert isinstance(f.default, bool), f"new field {f.name}: extend this test"
            values[f.name] = not f.default  # every flag away from its default
    bp = Breakpoint(**values)  # type: ignore[arg-type]
    items = [Assignment("r7", 4242, bp), Assignment("r8", None, Breakpoint(0x1000, 8, BpType.EXEC))]
    built = agent_pb2.Reload()
    convert.assignments_into(built.assignments, items)
    converted = agent_pb2.Reload(assignments=[convert.assignment_to(a) for a in items])
    assert built.SerializeToString() == converted.SerializeToString()
    assert [convert.assignment_from(m) for m in built.assignments] == items


def test_a_reservation_filled_in_place_encodes_as_a_converted_one() -> None:
    import dataclasses

    from hwbp.model import BpType, Breakpoint, Reservation, Scope, Target

    values: dict[str, object] = {"addr": 0x7FFC1000, "length": 2, "type": BpType.WRITE}
    for f in dataclasses.fields(Breakpoint):
        if f.name not in values:
            assert isinstance(f.default, bool), f"new field {f.name}: extend this test"
            values[f.name] = not f.default
    bp = Breakpoint(**values)  # type: ignore[arg-type]
    for target, session, index in (
        (Target(Scope.TASK_CPU, cpu=3, task=77), "s1", 2),
        (Target(Scope.SYSTEM), None, None),
    ):
        res = Reservation("r9", "h1", target, bp, owner="bob", session=session, ptrace_index=index)
        built = pb.Reservation()
        convert.reservation_into(built, res, 12)
        assert built.SerializeToString() == convert.reservation_to(res, 12).SerializeToString()
