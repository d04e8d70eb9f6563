"""Remote Serial Protocol framing: what gdb sends and what we answer, byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwbp.gdbserver.packets import (
    MAX_PACKET,
    Ack,
    Corrupt,
    Decoder,
    Event,
    Interrupt,
    Packet,
    checksum,
    escape,
    frame,
    parse_addr_len,
    unescape,
    unhexlify,
    xfer_slice,
)


def test_a_known_packet_frames_as_gdb_expects() -> None:
    assert frame(b"OK") == b"$OK#9a"
    assert frame(b"") == b"$#00"
    assert Decoder().feed(b"$g#67") == [Packet(b"g")]


def test_specials_are_escaped_and_the_checksum_covers_the_escaped_bytes() -> None:
    framed = frame(b"a$b#c}d*e")
    body = framed[1 : framed.index(b"#", len(framed) - 3)]
    assert body == b"a}\x04b}\x03c}]d}\x0ae"
    assert framed.endswith(b"#%02x" % checksum(body))


@given(st.binary(max_size=512))
def test_escape_round_trips(data: bytes) -> None:
    assert unescape(escape(data)) == data
    assert not set(escape(data).replace(b"}", b"")) & set(b"$#*")


@given(
    st.lists(st.binary(max_size=200), min_size=1, max_size=5),
    st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=20),
    st.booleans(),
)
def test_any_payloads_survive_framing_in_any_read_sizes(
    payloads: list[bytes], cuts: list[int], interleave: bool
) -> None:
    stream = b"".join((b"+\x03" if interleave else b"") + frame(p) for p in payloads)
    decoder, i = Decoder(), 0
    events: list[Event] = []
    while i < len(stream):
        n = cuts[len(events) % len(cuts)]
        events += decoder.feed(stream[i : i + n])
        i += n
    packets = [e.payload for e in events if isinstance(e, Packet)]
    assert packets == payloads
    if interleave:
        assert events.count(Ack(True)) == len(payloads)
        assert events.count(Interrupt()) == len(payloads)


def test_a_bad_checksum_is_reported_and_the_next_packet_still_parses() -> None:
    events = Decoder().feed(b"$g#00$m10,4#" + b"%02x" % checksum(b"m10,4"))
    assert isinstance(events[0], Corrupt) and "does not match" in events[0].reason
    assert events[1] == Packet(b"m10,4")
    assert isinstance(Decoder().feed(b"$g#zz")[0], Corrupt)


def test_a_runaway_packet_is_dropped_not_buffered() -> None:
    d = Decoder()
    events = d.feed(b"$" + b"a" * (2 * MAX_PACKET + 1))
    assert len(events) == 1 and isinstance(events[0], Corrupt)
    assert d.feed(b"x$?#3f") == [Packet(b"?")]


def test_acks_and_interrupts_between_packets() -> None:
    assert Decoder().feed(b"+-\x03junk") == [Ack(True), Ack(False), Interrupt()]


def test_payload_helpers_name_what_is_wrong() -> None:
    assert parse_addr_len(b"7fff0010,8") == (0x7FFF0010, 8)
    with pytest.raises(ValueError, match="ADDR,LENGTH"):
        parse_addr_len(b"7fff0010")
    with pytest.raises(ValueError, match="not a hex number"):
        parse_addr_len(b"xyz,1")
    with pytest.raises(ValueError, match="hex digits"):
        unhexlify(b"abc")


def test_xfer_slices_say_whether_more_follows() -> None:
    data = b"0123456789"
    assert xfer_slice(data, b"0,4") == b"m0123"
    assert xfer_slice(data, b"8,4") == b"l89"
    assert xfer_slice(data, b"a,4") == b"l"
