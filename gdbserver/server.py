"""The serving loop: one gdb connection, packets in, replies out, Ctrl-C while running.

While the inferior runs, the loop waits on two things at once: the socket (gdb's
``\\x03``) and a wakeup pipe that SIGCHLD writes to (``signal.set_wakeup_fd``), so a
stop is noticed as soon as the kernel reports it and an interrupt as soon as gdb sends
it, without a thread (ptrace must be driven from the thread that attached).
"""

from __future__ import annotations

import os
import select

from hwbp.gdbserver.commands import Commands, End, Resume, stop_reply
from hwbp.gdbserver.hwpoints import HwPoints
from hwbp.gdbserver.packets import Interrupt, Packet
from hwbp.gdbserver.rsp import Connection
from hwbp.gdbserver.target import Inferior

POLL_SECONDS = 1.0  # a missed wakeup costs at most this (SIGCHLD does not queue)


class Server:
    def __init__(
        self,
        conn: Connection,
        commands: Commands,
        inferior: Inferior,
        points: HwPoints,
        wakeup_fd: int,
    ) -> None:
        self.conn = conn
        self.commands = commands
        self.inf = inferior
        self.points = points
        self.wakeup_fd = wakeup_fd

    def serve(self) -> str:
        """Answer gdb until it detaches or kills: returns "detach" or "kill".

        Raises ``rsp.Disconnected`` if gdb goes away without saying which.
        """
        while True:
            ev = self.conn.next_event()
            if not isinstance(ev, Packet):
                continue  # Ctrl-C while stopped: nothing runs, nothing to stop
            outcome = self.commands.handle(ev.payload)
            for text in self.commands.output:
                self.conn.output(text)
            self.commands.output.clear()
            if isinstance(outcome, End):
                if outcome.reply is not None:
                    self.conn.send(outcome.reply)
                return outcome.how
            reply = self._run(outcome) if isinstance(outcome, Resume) else outcome
            self.conn.send(reply)
            if self.commands.no_ack:
                self.conn.acks = False

    def _run(self, resume: Resume) -> bytes:
        """Resume and wait for the stop to report, stopping everything on Ctrl-C."""
        if self.inf.exit is not None:
            return stop_reply(self.inf.exit)
        self.points.settle()  # what gdb removed and did not insert again goes now
        stop = self.inf.resume(resume.actions, resume.default)
        while stop is None:
            fds = [self.conn.fileno(), self.wakeup_fd]
            ready, _, _ = select.select(fds, [], [], POLL_SECONDS)
            if self.wakeup_fd in ready:
                _drain(self.wakeup_fd)
            if self.conn.fileno() in ready:
                events = self.conn.read()
                if any(isinstance(e, Interrupt) for e in events):
                    self.inf.interrupt()
                self.conn.keep([e for e in events if not isinstance(e, Interrupt)])
            stop = self.inf.poll()
        if stop.kind != "signal":
            self.points.release_all()  # the process is gone, and its registers with it
        return self.commands.stopped(stop)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
