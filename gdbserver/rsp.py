"""One gdb connection: packets over a socket, acknowledged until no-ack mode."""

from __future__ import annotations

import socket
from collections import deque

from hwbp.gdbserver.packets import Ack, Corrupt, Decoder, Event, Packet, frame, hexlify

MAX_OUTPUT = 1024  # bytes of monitor text per O packet (2 KiB of hex)


class Disconnected(Exception):
    """gdb closed the connection (or it broke)."""


class Connection:
    """Reads events, answers ``+``/``-`` while acks are on, resends on ``-``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.acks = True
        self._decoder = Decoder()
        self._queue: deque[Event] = deque()
        self._last = b""

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[Event]:
        """What one recv() brought (at least one byte, so this blocks when idle)."""
        try:
            data = self.sock.recv(65536)
        except (ConnectionError, OSError) as e:
            raise Disconnected(str(e)) from None
        if not data:
            raise Disconnected("gdb closed the connection")
        out: list[Event] = []
        for ev in self._decoder.feed(data):
            if isinstance(ev, Ack):
                if not ev.ok and self.acks and self._last:
                    self._send_raw(self._last)
                continue
            if isinstance(ev, Corrupt):
                if self.acks:
                    self._send_raw(b"-")
                continue
            if isinstance(ev, Packet) and self.acks:
                self._send_raw(b"+")
            out.append(ev)
        return out

    def next_event(self) -> Event:
        """The next packet or interrupt, reading as needed."""
        while not self._queue:
            self._queue.extend(self.read())
        return self._queue.popleft()

    def keep(self, events: list[Event]) -> None:
        """Events read while the inferior ran that are not interrupts: handle them later."""
        self._queue.extend(events)

    def send(self, payload: bytes) -> None:
        data = frame(payload)
        self._last = data
        self._send_raw(data)

    def output(self, text: str) -> None:
        """Console output for gdb's user (``O`` packets), as ``monitor`` commands print."""
        raw = text.encode()
        for i in range(0, len(raw), MAX_OUTPUT):
            self.send(b"O" + hexlify(raw[i : i + MAX_OUTPUT]))

    def _send_raw(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (ConnectionError, OSError) as e:
            raise Disconnected(str(e)) from None
