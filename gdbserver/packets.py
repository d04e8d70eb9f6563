"""GDB Remote Serial Protocol framing: packets, acknowledgements, interrupts, hex.

Pure: bytes in, events or bytes out, no socket. A packet on the wire is
``$payload#cc`` where ``cc`` is the modulo-256 sum of the payload bytes in hex; inside
it ``}`` escapes the next byte XOR 0x20, so binary data can carry ``$``, ``#``, ``}``
and ``*`` (which gdb would read as run-length encoding). A lone ``+``/``-`` acknowledges
a packet until no-ack mode is agreed; a lone ``\\x03`` is gdb's interrupt (Ctrl-C).
"""

from __future__ import annotations

from dataclasses import dataclass

ESCAPE = 0x7D  # "}"
_SPECIAL = frozenset(b"$#}*")
INTERRUPT_BYTE = 0x03
MAX_PACKET = 0x4000  # the PacketSize we advertise; longer input is refused, not buffered


@dataclass(frozen=True, slots=True)
class Packet:
    """A well-formed packet, unescaped."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Corrupt:
    """A packet whose checksum did not match (or that overran MAX_PACKET): answer ``-``."""

    reason: str


@dataclass(frozen=True, slots=True)
class Ack:
    """``+`` (ok) or ``-`` (resend the last packet)."""

    ok: bool


@dataclass(frozen=True, slots=True)
class Interrupt:
    """``\\x03`` between packets: stop the running inferior."""


Event = Packet | Corrupt | Ack | Interrupt


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def escape(data: bytes) -> bytes:
    """Escape every byte gdb would misread inside a packet."""
    if not any(b in _SPECIAL for b in data):
        return data
    out = bytearray()
    for b in data:
        if b in _SPECIAL:
            out += bytes((ESCAPE, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """Undo ``escape``; a trailing lone ``}`` is kept as is (gdb never sends one)."""
    if ESCAPE not in data:
        return data
    out = bytearray()
    i = 0
    while i < len(data):
        b = data[i]
        if b == ESCAPE and i + 1 < len(data):
            out.append(data[i + 1] ^ 0x20)
            i += 2
        else:
            out.append(b)
            i += 1
    return bytes(out)


def frame(payload: bytes) -> bytes:
    """``$escaped#cc``, ready for the socket."""
    body = escape(payload)
    return b"$" + body + b"#" + b"%02x" % checksum(body)


class Decoder:
    """Turns a byte stream from gdb into events, across arbitrary read boundaries."""

    def __init__(self) -> None:
        self._body: bytearray | None = None  # inside $...; None between packets
        self._sum: bytearray | None = None  # the checksum digits once '#' was seen

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for b in data:
            ev = self._byte(b)
            if ev is not None:
                events.append(ev)
        return events

    def _byte(self, b: int) -> Event | None:
        if self._sum is not None:
            self._sum.append(b)
            if len(self._sum) < 2:
                return None
            return self._finish()
        if self._body is not None:
            if b == ord("#"):
                self._sum = bytearray()
            elif len(self._body) >= 2 * MAX_PACKET:
                self._body = None  # a runaway packet: drop it, resync on the next '$'
                return Corrupt(f"packet longer than {2 * MAX_PACKET} bytes")
            else:
                self._body.append(b)
            return None
        if b == ord("$"):
            self._body = bytearray()
        elif b == ord("+"):
            return Ack(True)
        elif b == ord("-"):
            return Ack(False)
        elif b == INTERRUPT_BYTE:
            return Interrupt()
        return None  # noise between packets is ignored, as gdbserver does

    def _finish(self) -> Event:
        assert self._body is not None and self._sum is not None
        body, digits = bytes(self._body), bytes(self._sum)
        self._body = self._sum = None
        try:
            wanted = int(digits, 16)
        except ValueError:
            return Corrupt(f"checksum {digits!r} is not hex")
        if wanted != checksum(body):
            return Corrupt(f"checksum {wanted:02x} does not match {checksum(body):02x}")
        return Packet(unescape(body))


# --- payload helpers -----------------------------------------------------------------


def hexlify(data: bytes) -> bytes:
    return data.hex().encode()


def unhexlify(text: bytes) -> bytes:
    """Hex digits to bytes; ValueError names what is wrong."""
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"not an even run of hex digits: {text[:32]!r}") from None


def parse_hex(text: bytes, what: str) -> int:
    try:
        return int(text, 16)
    except ValueError:
        raise ValueError(f"{what} {text[:32]!r} is not a hex number") from None


def parse_addr_len(text: bytes) -> tuple[int, int]:
    """``ADDR,LENGTH`` (both hex), as in m, M, X, Z and z packets."""
    addr, sep, length = text.partition(b",")
    if not sep:
        raise ValueError(f"expected ADDR,LENGTH, got {text[:32]!r}")
    return parse_hex(addr, "address"), parse_hex(length, "length")


def xfer_slice(data: bytes, offset_length: bytes) -> bytes:
    """A qXfer read reply: ``m`` and a slice when more follows, ``l`` with the last one."""
    offset, length = parse_addr_len(offset_length)
    chunk = data[offset : offset + length]
    return (b"l" if offset + length >= len(data) else b"m") + chunk


def error(code: int) -> bytes:
    """``Enn``: the only error reply gdb understands everywhere."""
    return b"E%02x" % (code & 0xFF)


OK = b"OK"
UNSUPPORTED = b""  # the empty reply: "I do not know this packet"
