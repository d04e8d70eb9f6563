"""A loopback TCP proxy that loses or delays one gRPC answer on its way back.

Put between a client and a real arbiter, it forwards bytes both ways unchanged, reading
just enough HTTP/2 (the 9-byte frame headers) to know when a request starts (a HEADERS
frame from the client) and when its answer starts (a HEADERS frame from the server).
Armed, it does one thing to the next answer:

- ``cut``: close both connections instead of forwarding it, so the arbiter did the work
  and the client sees UNAVAILABLE (a connection lost at the worst moment);
- ``hold``: forward it (and everything after it) only ``seconds`` later, so the client's
  deadline passes first and it sees DEADLINE_EXCEEDED (a slow network).

Nothing is rewritten, so the HTTP/2 state on both sides stays consistent.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType

HEADERS = 0x1
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class LossyProxy:
    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.lock = threading.Lock()
        self.fault: tuple[str, float] | None = None
        self.requests = 0  # requests (client HEADERS frames on new streams) seen
        self.cuts = 0
        self.holds = 0
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.closed = False
        self._spawn(self._accept)

    def arm(self, fault: str, seconds: float = 0.0) -> None:
        """Do ``fault`` ("cut" or "hold" for ``seconds``) to the next answer."""
        assert fault in ("cut", "hold")
        with self.lock:
            self.fault = (fault, seconds)

    def close(self) -> None:
        self.closed = True
        _close(self.listener)  # shutdown() wakes the accept() that close() alone would not
        for sock in list(self.sockets):
            _close(sock)
        for t in self.threads:
            t.join(5)

    def __enter__(self) -> LossyProxy:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _close(client)
                continue
            server.settimeout(None)
            self.sockets += [client, server]
            self._spawn(self._pump, client, server, False)
            self._spawn(self._pump, server, client, True)

    def _pump(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        """Forward src to dst frame by frame (the client's preface first)."""
        try:
            if not answers:
                dst.sendall(_read(src, len(PREFACE)))
            while True:
                header = _read(src, 9)
                body = _read(src, int.from_bytes(header[:3], "big"))
                stream = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
                if header[3] == HEADERS and stream and answers and self._on_answer(src, dst):
                    return
                if header[3] == HEADERS and stream and not answers:
                    with self.lock:
                        self.requests += 1
                dst.sendall(header + body)
        except OSError:
            pass
        finally:
            _close(src)
            _close(dst)

    def _on_answer(self, src: socket.socket, dst: socket.socket) -> bool:
        """Apply the armed fault to this answer; True when the connection is cut."""
        with self.lock:
            fault, self.fault = self.fault, None
        if fault is None:
            return False
        kind, seconds = fault
        if kind == "cut":
            self.cuts += 1
            _close(src)
            _close(dst)
            return True
        self.holds += 1
        time.sleep(seconds)  # the fault itself: this answer arrives late
        return False


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError("peer closed")
        data += chunk
    return data


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
