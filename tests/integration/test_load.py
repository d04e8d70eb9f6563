"""hwbp-load and the bench as real processes: invariants hold, contention grants exactly 4.

No timing thresholds here: the machine may be busy; only counts and shapes are checked.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from hwbp.load.invariants import Checker
from hwbp.load.rpc import Stubs
from hwbp.load.stats import Stats
from hwbp.load.workload import Client
from hwbp.v1 import arbiter_pb2, types_pb2
from tests.integration import procs
from tests.integration.procs import ROOT, _env


def _run(*args: str, timeout: float = 90) -> tuple[int, Any, str]:
    done = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    try:
        doc = json.loads(done.stdout)
    except json.JSONDecodeError:
        doc = None
    return done.returncode, doc, done.stderr


def test_mixed_load_keeps_every_invariant_and_its_counts_add_up() -> None:
    code, doc, err = _run(
        "hwbp.load", "--hosts", "1", "--cpus", "2", "--clients", "4", "--ops", "300", "--json"
    )
    assert doc is not None, err
    assert doc["violations"] == 0, doc["violation_details"]
    assert code == 0
    per_op = doc["per_op"]
    assert sum(s["count"] for s in per_op.values()) == doc["ops"]
    for name, s in per_op.items():
        assert s["ok"] + sum(s["refused"].values()) == s["count"], name
        assert s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"], name
    refusals: dict[str, int] = {}
    for s in per_op.values():
        for reason, n in s["refused"].items():
            refusals[reason] = refusals.get(reason, 0) + n
    assert refusals == doc["refusals"]
    assert set(refusals) <= {"NO_FREE_SLOT", "ACK_TIMEOUT"}
    assert doc["granted"] == per_op["reserve"]["ok"]
    # Every change that succeeded was seen committed in a RELOAD event.
    ok_changes = sum(per_op[op]["ok"] for op in ("reserve", "release", "modify") if op in per_op)
    cleanup = doc["cleanup"].get("release", {"ok": 0})["ok"]
    assert doc["changes_committed"] == ok_changes + cleanup
    assert doc["hits_watched"] >= doc["hits_returned"]
    assert doc["inventory_polls"] >= 1


def test_contention_grants_exactly_the_four_registers_and_refuses_the_rest() -> None:
    code, doc, err = _run(
        "hwbp.load", "--hosts", "1", "--cpus", "2", "--clients", "12", "--contend", "--json"
    )
    assert doc is not None, err
    c = doc["contend"]
    assert c["grants"] == 4 and c["refusals"] == 8
    assert c["refusal_reasons"] == ["NO_FREE_SLOT"]
    gens = c["grant_generations"]
    assert gens == sorted(gens) and gens[-1] - gens[0] <= 3
    assert doc["violations"] == 0, doc["violation_details"]
    assert code == 0


def test_quick_bench_reports_ratios_against_a_same_run_baseline(tmp_path: Path) -> None:
    code, _, err = _run(
        "hwbp.bench", "--quick", "--only", "P1", "--out", str(tmp_path), timeout=110
    )
    assert code == 0, err
    doc = json.loads((tmp_path / "latest.json").read_text())
    assert doc["machine"]["nproc"] >= 1 and doc["machine"]["grpcio"]
    points = doc["P1"]["points"]
    assert set(points) == {"1", "32"}
    for pt in points.values():
        for key in ("arbiter_ops_per_s", "echo_ops_per_s", "ratio", "target", "met"):
            assert key in pt
        assert isinstance(pt["ratio"], float)
    assert doc["P1"]["profile"]["top_self"]
    assert "| P1 |" in (tmp_path / "README-table.md").read_text()


async def test_a_ptrace_round_on_a_full_cpu_is_refused_cleanly_and_flushes_nothing() -> None:
    """Every poke of a task is refused on a host whose CPU is full, so the task never
    gets ptrace state: a flush then would rightly answer NOT_ATTACHED, which the checker
    counts as a violation. The round must not flush what it never got (the kill -9 chaos
    test met this whenever its leftovers filled a CPU of the host)."""
    arbiter, address = procs.start_arbiter()
    fleet = procs.start_fleet(address, "full", 1)
    stubs = Stubs(address)
    try:
        for i in range(4):
            await stubs.arb.Reserve(
                arbiter_pb2.ReserveRequest(
                    request_id=f"fill-{i}",
                    target=types_pb2.Target(host="full", scope=types_pb2.SCOPE_CPU, cpu=0),
                    spec=types_pb2.BreakpointSpec(
                        addr=0x1000 + 8 * i, len=8, type=types_pb2.BREAKPOINT_TYPE_WRITE
                    ),
                ),
                timeout=10,
            )
        checker = Checker(stubs, "load-test")
        stats = Stats()
        client = Client(0, stubs, {"full": 1}, checker, stats, random.Random(7), "load-test-0")
        for _ in range(3):
            await client.ptrace()
        assert stats.ops["poke"].refused["NO_FREE_SLOT"] > 0  # pokes were made, and refused
        assert checker.violations == 0, checker.details
    finally:
        await stubs.close()
        fleet.stop()
        arbiter.stop()
