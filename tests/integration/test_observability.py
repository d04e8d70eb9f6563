"""What operators and other languages see: health, reflection, rich errors, metrics, logs.

Everything runs against real arbiter and agent processes on loopback ports picked at
run time; the Node.js client is a real ``node`` process using only the .proto files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families

from hwbp.v1 import arbiter_pb2 as a
from hwbp.v1 import simulation_pb2 as s
from hwbp.v1 import types_pb2 as t
from hwbp.wire.health import health_check
from tests.integration import procs
from tests.integration.stubs import Api, wait_until

NODE_DIR = Path(__file__).resolve().parent / "node"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Arbiter:
    proc: procs.Proc
    address: str
    metrics: str  # HOST:PORT of the /metrics endpoint


@pytest.fixture(scope="module")
def arb() -> Iterator[Arbiter]:
    proc, address = procs.start_arbiter(
        "--ack-timeout", "1.0", "--metrics-listen", "127.0.0.1:0", "--log-format", "json"
    )
    try:
        line = next(x for x in proc.lines if x.startswith("metrics on "))
        yield Arbiter(proc, address, line.split()[-1])
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def chan(arb: Arbiter) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(arb.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def api(chan: grpc.Channel) -> Api:
    return Api(chan)


@pytest.fixture(scope="module")
def host(arb: Arbiter) -> Iterator[str]:
    """Host 'obs' with 2 simulated CPUs."""
    proc = procs.start_fleet(arb.address, "obs", 2)
    try:
        yield "obs"
    finally:
        proc.stop()


# --- helpers ------------------------------------------------------------------------


def scrape(address: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (smp.name, frozenset(smp.labels.items())): smp.value
        for fam in text_string_to_metric_families(text)
        for smp in fam.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **lb: str
) -> float:
    return samples.get((name, frozenset(lb.items())), 0.0)


@dataclass
class Rich:
    code: grpc.StatusCode
    info: error_details_pb2.ErrorInfo
    details: list[Any]


def rich(err: grpc.RpcError) -> Rich:
    """Every detail of a failed call's google.rpc.Status, unpacked."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, f"no rich status on {err}"
    out: list[Any] = []
    for box in status.details:
        for cls in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.QuotaFailure,
            error_details_pb2.ResourceInfo,
        ):
            if box.Is(cls.DESCRIPTOR):
                msg = cls()
                box.Unpack(msg)
                out.append(msg)
    infos = [d for d in out if isinstance(d, error_details_pb2.ErrorInfo)]
    assert len(infos) == 1, out
    return Rich(err.code(), infos[0], out)


def reserve(
    api: Api, rid: str, host: str, *, addr: int = 0x1000, **target: Any
) -> a.ReserveResponse:
    return api.arb.Reserve(
        a.ReserveRequest(
            request_id=rid,
            target=t.Target(host=host, **target),
            spec=t.BreakpointSpec(addr=addr, len=8, type=t.BREAKPOINT_TYPE_WRITE, enabled=True),
            owner="obs-test",
        ),
        timeout=10,
    )


def refused(call: Any) -> Rich:
    with pytest.raises(grpc.RpcError) as exc:
        call()
    return rich(exc.value)


# --- health and reflection -----------------------------------------------------------


def test_health_reports_serving_and_reflection_lists_every_service(chan: grpc.Channel) -> None:
    health = health_check(chan)
    for service in ("", "hwbp.v1.Arbiter", "hwbp.v1.AgentLink"):
        reply = health(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == SERVING, service
    # The reflection stubs package leaves ServerReflectionStub's method untyped.
    info: grpc.StreamStreamMultiCallable[
        reflection_pb2.ServerReflectionRequest, reflection_pb2.ServerReflectionResponse
    ] = chan.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    replies = list(
        info(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    )
    names = {svc.name for svc in replies[0].list_services_response.service}
    assert names >= {
        "hwbp.v1.Arbiter",
        "hwbp.v1.AgentLink",
        "hwbp.v1.Ptrace",
        "hwbp.v1.Sessions",
        "hwbp.v1.Simulation",
        "grpc.health.v1.Health",
    }


def test_sigterm_drains_the_change_in_flight_while_health_says_not_serving() -> None:
    """Between SIGTERM and exit the arbiter finishes what an agent has in flight.

    Observable: Check answers NOT_SERVING during the drain, a new change is refused with
    UNAVAILABLE/DRAINING, the change in flight still succeeds, the exit code is 0, and
    afterwards the port refuses connections (UNAVAILABLE).
    """
    proc, address = procs.start_arbiter("--ack-timeout", "5.0")
    slow = procs.start_agent(address, "hdrain", 0, "--cpus", "1", "--ack-delay", "1.5")
    try:
        with grpc.insecure_channel(address) as ch:
            api, health = Api(ch), health_check(ch)
            outcome: dict[str, Any] = {}

            def in_flight() -> None:
                try:
                    outcome["ok"] = reserve(api, "drain-1", "hdrain", scope=t.SCOPE_CPU, cpu=0)
                except grpc.RpcError as err:
                    outcome["err"] = err

            worker = threading.Thread(target=in_flight)
            worker.start()
            wait_until(
                lambda: (
                    api.inventory("hdrain")[0].generation
                    > api.inventory("hdrain")[0].acked_generation
                ),
                what="reload in flight",
            )
            os.kill(proc.pid, signal.SIGTERM)
            wait_until(
                lambda: health(health_pb2.HealthCheckRequest(), timeout=2).status == NOT_SERVING,
                timeout=5,
                what="NOT_SERVING while draining",
            )
            late = refused(lambda: reserve(api, "drain-2", "hdrain", scope=t.SCOPE_CPU, cpu=0))
            assert (late.code, late.info.reason) == (grpc.StatusCode.UNAVAILABLE, "DRAINING")
            assert worker.is_alive(), "the change in flight finished before the drain was seen"
            worker.join(10)
            assert "ok" in outcome, outcome.get("err")
            assert proc.popen.wait(timeout=15) == 0
            with pytest.raises(grpc.RpcError) as exc:
                health(health_pb2.HealthCheckRequest(), timeout=2)
            assert exc.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        slow.stop()
        proc.stop()


# --- errors --------------------------------------------------------------------------


def test_each_error_class_carries_error_info_with_the_request_id(
    api: Api, arb: Arbiter, host: str
) -> None:
    # One agent process: cpu 0 of 'hx' refuses 0xE000, cpu 1 stays offline.
    nack = procs.start_agent(arb.address, "hx", 0, "--cpus", "2", "--refuse-addr", "0xE000")
    # 'hslow' cpu 0 is stopped: it cannot answer a control (its reloads are not waited
    # for once it is fenced, but a context switch needs its answer).
    slow = procs.start_agent(arb.address, "hslow", 0, "--cpus", "1")
    # "agent ready" can be printed before its resync's ack reaches the arbiter: stopped
    # in between, it would be fenced and read as offline, not as slow to answer.
    wait_until(
        lambda: all(
            c.online and c.acked_generation == c.generation for c in api.inventory("hslow")
        ),
        what="hslow's agent acknowledged its resync",
    )
    os.kill(slow.pid, signal.SIGSTOP)
    try:
        cases: list[tuple[grpc.StatusCode, str, Any]] = [
            (
                grpc.StatusCode.INVALID_ARGUMENT,
                "MISALIGNED_ADDRESS",
                lambda rid: reserve(api, rid, host, scope=t.SCOPE_CPU, cpu=0, addr=0x1001),
            ),
            (
                grpc.StatusCode.NOT_FOUND,
                "HOST_NOT_FOUND",
                lambda rid: reserve(api, rid, "nowhere", scope=t.SCOPE_CPU, cpu=0),
            ),
            (
                grpc.StatusCode.ABORTED,
                "AGENT_REFUSED",
                lambda rid: reserve(api, rid, "hx", scope=t.SCOPE_CPU, cpu=0, addr=0xE000),
            ),
            (
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "ACK_TIMEOUT",
                lambda rid: api.sim.ContextSwitch(
                    s.ContextSwitchRequest(request_id=rid, host="hslow", cpu=0, task=7), timeout=10
                ),
            ),
            (
                grpc.StatusCode.FAILED_PRECONDITION,
                "CPU_OFFLINE",
                lambda rid: api.sim.ContextSwitch(
                    s.ContextSwitchRequest(request_id=rid, host="hx", cpu=1, task=7), timeout=10
                ),
            ),
        ]
        for code, reason, call in cases:
            rid = f"err-{reason.lower()}-{uuid.uuid4().hex[:6]}"
            got = refused(lambda call=call, rid=rid: call(rid))
            assert (got.code, got.info.reason, got.info.domain) == (code, reason, "hwbp.dev")
            assert got.info.metadata["request_id"] == rid
        held = [
            reserve(api, f"fill-{i}", host, scope=t.SCOPE_CPU, cpu=1, addr=0x2000 + 8 * i)
            for i in range(4)
        ]
        got = refused(lambda: reserve(api, "fifth", host, scope=t.SCOPE_CPU, cpu=1, addr=0x3000))
        assert (got.code, got.info.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "NO_FREE_SLOT")
        assert got.info.metadata["request_id"] == "fifth"
        assert got.info.metadata["errno"] == "ENOSPC"
        quota = next(d for d in got.details if isinstance(d, error_details_pb2.QuotaFailure))
        where = next(d for d in got.details if isinstance(d, error_details_pb2.ResourceInfo))
        assert quota.violations[0].subject == f"host/{host}/cpu/1"
        assert where.resource_name == f"host/{host}/cpu/1"
        assert all(h.reservation.id in where.owner for h in held)
        for h in held:
            api.release(h.reservation.id)
        # A change on the stopped agent's CPU waits for it once, fences it, and commits.
        fenced = reserve(api, "fence-me", "hslow", scope=t.SCOPE_CPU, cpu=0)
        api.release(fenced.reservation.id)
        samples = scrape(arb.metrics)
        assert value(samples, "hwbp_nacks_total", reason_class="AGENT_REFUSED") >= 1
        assert value(samples, "hwbp_ack_timeouts_total", host="hslow") >= 1
        for result in ("NO_FREE_SLOT", "AGENT_REFUSED", "MISALIGNED_ADDRESS"):
            assert value(samples, "hwbp_reservation_requests_total", scope="cpu", result=result)
    finally:
        nack.stop()
        os.kill(slow.pid, signal.SIGCONT)
        slow.stop()


# --- metrics and logs ----------------------------------------------------------------


def test_metrics_follow_reservations(api: Api, arb: Arbiter, host: str) -> None:
    before = scrape(arb.metrics)
    res = reserve(api, "metrics-1", host, scope=t.SCOPE_CPU, cpu=0, addr=0x4000)
    during = scrape(arb.metrics)
    api.release(res.reservation.id)
    after = scrape(arb.metrics)

    def used(samples: Any) -> float:
        return value(samples, "hwbp_slots_used", host=host, cpu="0")

    assert (used(before), used(during), used(after)) == (0, 1, 0)
    assert value(during, "hwbp_slots_total", host=host, cpu="0") == 4
    assert value(during, "hwbp_agents_connected", host=host) == 2
    assert value(during, "hwbp_reservations", host=host, scope="cpu") == 1
    assert value(during, "hwbp_generation", host=host) == res.generation
    requests = "hwbp_reservation_requests_total"
    assert value(during, requests, scope="cpu", result="ok") == (
        value(before, requests, scope="cpu", result="ok") + 1
    )
    timed = "hwbp_rpc_seconds_count"
    reserve_ok = {"method": "hwbp.v1.Arbiter/Reserve", "code": "OK"}
    assert value(during, timed, **reserve_ok) == value(before, timed, **reserve_ok) + 1
    assert value(during, "hwbp_reload_ack_seconds_count") > value(
        before, "hwbp_reload_ack_seconds_count"
    )


def test_json_log_lines_carry_the_request_id(api: Api, arb: Arbiter, host: str) -> None:
    rid = f"log-{uuid.uuid4().hex[:8]}"
    res = reserve(api, rid, host, scope=t.SCOPE_CPU, cpu=1, addr=0x5000)
    api.release(res.reservation.id)

    def mine() -> list[dict[str, Any]]:
        rows = [json.loads(x) for x in list(arb.proc.lines) if x.startswith("{")]
        return [r for r in rows if r.get("request_id") == rid]

    line = wait_until(mine, timeout=5, what="a JSON log line for the request")[0]
    assert line["level"] == "INFO" and line["logger"] == "hwbp.server"
    assert rid in line["message"] and "reserve" in line["message"]
    assert {"time", "level", "logger", "message", "request_id"} <= set(line)


# --- another language ----------------------------------------------------------------


def _npm_install() -> None:
    """Install @grpc/grpc-js and @grpc/proto-loader next to interop.js, or skip saying why."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the Node.js interop test")
    if (NODE_DIR / "node_modules" / "@grpc" / "grpc-js" / "package.json").exists():
        return
    try:
        done = subprocess.run(
            # No retries: offline, fail fast and skip rather than stall the suite.
            [npm, "install", "--no-audit", "--no-fund", "--fetch-retries=0"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=45,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("npm install did not finish within 45 s (registry unreachable?)")
    if done.returncode != 0:
        why = [x for x in done.stderr.splitlines() if "npm error" in x and " at " not in x]
        pytest.skip("npm install failed: " + " / ".join(why[:4])[:400])


def test_node_client_reserves_and_releases(arb: Arbiter, host: str, api: Api) -> None:
    _npm_install()
    started = time.monotonic()
    done = subprocess.run(
        ["node", str(NODE_DIR / "interop.js"), arb.address, host, "1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["reserved"] == out["released"]
    assert out["scope"] == "SCOPE_CPU" and out["cpu"] == 1 and out["addr"] == str(0x7000)
    assert int(out["release_generation"]) > int(out["generation"])
    # NOT_FOUND, with the google.rpc.Status in the trailers any gRPC client can decode.
    assert out["refusal"]["code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert out["refusal"]["rich_status_bytes"] > 0
    assert out["reserved"] not in api.ids(host)
    assert time.monotonic() - started < 30
