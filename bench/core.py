"""Core ledger benchmark: admission cost must not grow with the number of tasks.

Run: ``python -m bench.core``. Targets: a single-CPU reserve+release costs <= 20 µs,
and with 100,000 tasks holding breakpoints it costs at most 1.3x what it costs with 10.
"""

from __future__ import annotations

import json
import time
import tracemalloc

from hwbp.ledger import HostLedger
from hwbp.model import BpType, Breakpoint, Reservation, Scope, Target

NCPUS = 64
ITERATIONS = 20_000
REPEATS = 7
TARGET_US = 20.0
TARGET_RATIO = 1.3


def populated(ntasks: int, ncpus: int = NCPUS) -> HostLedger:
    """A host where each task holds one task+cpu watchpoint, spread over the cpus."""
    ledger = HostLedger("bench", ncpus)
    for task in range(1, ntasks + 1):
        target = Target(Scope.TASK_CPU, cpu=task % ncpus, task=task)
        bp = Breakpoint(0x10_0000 + 8 * (task % 4096), 8, BpType.WRITE)
        ledger.reserve(Reservation(f"t{task}", "bench", target, bp, owner="bench"))
    return ledger


def per_op_us(ledger: HostLedger, target: Target) -> float:
    """Best-of-REPEATS cost of one reserve+release at ``target``, in microseconds."""
    res = Reservation("probe", "bench", target, Breakpoint(0x20_0000, 8, BpType.RW), owner="b")
    reserve, release = ledger.reserve, ledger.release
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(ITERATIONS):
            reserve(res)
            release("probe")
        best = min(best, time.perf_counter() - start)
    return best / ITERATIONS * 1e6


def ledger_megabytes(ntasks: int, ncpus: int) -> float:
    """Memory held by a ledger of ``ntasks`` task+cpu reservations (objects included)."""
    tracemalloc.start()
    try:
        ledger = populated(ntasks, ncpus)
        size = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(ledger) == ntasks
    return size / 2**20


def run_core_bench() -> dict[str, float | bool]:
    small, large = populated(10), populated(100_000)
    cases = {
        "cpu": Target(Scope.CPU, cpu=5),
        # Task 5 holds one breakpoint on cpu 5 in both ledgers.
        "task_cpu": Target(Scope.TASK_CPU, cpu=5, task=5),
    }
    out: dict[str, float | bool] = {}
    ok = True
    for name, target in cases.items():
        few, many = per_op_us(small, target), per_op_us(large, target)
        ratio = many / few
        out[f"{name}_10_tasks_us"] = round(few, 2)
        out[f"{name}_100k_tasks_us"] = round(many, 2)
        out[f"{name}_ratio"] = round(ratio, 3)
        ok = ok and ratio <= TARGET_RATIO and many <= TARGET_US
    small.validate()
    large.validate()
    out["ledger_mb_100k_reservations_1024_cpus"] = round(ledger_megabytes(100_000, 1024), 1)
    out["targets_met"] = ok
    return out


if __name__ == "__main__":
    print(json.dumps(run_core_bench(), indent=2))
