"""Arbiters on a ledger file, restarted on the same port, and what they say from outside."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from hwbp.v1 import session_pb2, session_pb2_grpc
from hwbp.wire.health import health_check
from tests.integration import procs

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def arbiter(db: Path | str, port: int = 0, *extra: str) -> tuple[procs.Proc, str]:
    """An arbiter on ``db`` (a file), listening on ``port`` (0: any); (proc, address)."""
    proc, line = procs.start(
        ["hwbp.server", "--listen", f"127.0.0.1:{port}", "--db", str(db), *extra],
        "arbiter",
        wait_for="listening on",
    )
    return proc, line.rsplit(" ", 1)[-1]


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def run_arbiter(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str] | None:
    """Run an arbiter that is expected to exit; None if it was still running at ``timeout``
    (it is then killed: it started when it should not have)."""
    popen = subprocess.Popen(
        [sys.executable, "-m", "hwbp.server", *args],
        cwd=procs.ROOT,
        env=procs._env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.communicate()
        return None
    return subprocess.CompletedProcess(popen.args, popen.returncode, out, err)


def health(address: str) -> int:
    """The overall health status, or -1 if the arbiter does not answer."""
    try:
        with grpc.insecure_channel(address) as ch:
            return int(health_check(ch)(health_pb2.HealthCheckRequest(), timeout=2).status)
    except grpc.RpcError:
        return -1


def metrics_address(proc: procs.Proc) -> str:
    line = next(x for x in proc.lines if x.startswith("metrics on "))
    return line.split()[-1]


def metric(address: str, name: str) -> float:
    """The sum of every series of ``name`` on the /metrics page (0 when absent)."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as page:
        text = page.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


def open_session(channel: grpc.Channel, ttl: float, owner: str = "lease") -> str:
    stub = session_pb2_grpc.SessionsStub(channel)
    info = stub.OpenSession(
        session_pb2.OpenSessionRequest(request_id=uuid.uuid4().hex, ttl_seconds=ttl, owner=owner),
        timeout=10,
    )
    return str(info.session_id)
