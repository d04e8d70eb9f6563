"""make bench: P1-P6 with same-run baselines; results in bench/results/.

``--quick`` scales everything down (for tests); ``--only P1,P3`` picks benchmarks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hwbp.bench.png import line_chart
from hwbp.bench.report import machine, table

RESULTS = Path(__file__).resolve().parent / "results"
ALL = ("P1", "P2", "P3", "P4", "P5", "P6")


def _p1(quick: bool) -> dict[str, Any]:
    from hwbp.bench import p1

    return p1.run(quick)


def _p2(quick: bool) -> dict[str, Any]:
    from hwbp.bench.core import run_core_bench

    return dict(run_core_bench())


def _p3(quick: bool) -> dict[str, Any]:
    from hwbp.bench import p3

    return p3.run(quick)


def _p4(quick: bool) -> dict[str, Any]:
    from hwbp.bench import p4

    return p4.run(quick)


def _p5(quick: bool) -> dict[str, Any]:
    from hwbp.bench import ha

    return ha.run(quick)


def _p6(quick: bool) -> dict[str, Any]:
    from hwbp.bench import p6

    return p6.run(quick)


RUNNERS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "P1": _p1,
    "P2": _p2,
    "P3": _p3,
    "P4": _p4,
    "P5": _p5,
    "P6": _p6,
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="scaled down, seconds not minutes")
    p.add_argument("--only", default=",".join(ALL), help="comma-separated subset of P1..P6")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for the results")
    args = p.parse_args(argv)
    args.only = [s.strip().upper() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.only if s not in RUNNERS]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(ALL)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "quick": args.quick,
        "machine": machine(),
    }
    failed = False
    for pid in args.only:
        t0 = time.monotonic()
        print(f"[bench] {pid} ...", file=sys.stderr, flush=True)
        try:
            results[pid] = RUNNERS[pid](args.quick)
        except Exception as err:  # one benchmark failing must not lose the others
            traceback.print_exc()
            results[pid] = {"error": f"{type(err).__name__}: {err}"}
            failed = True
        results[pid]["wall_s"] = round(time.monotonic() - t0, 1)
        print(f"[bench] {pid} done in {results[pid]['wall_s']}s", file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (args.out / "README-table.md").write_text(table(results))
    points = results.get("P3", {}).get("points", {})
    if points:
        ns = sorted(points, key=int)
        chart = line_chart(
            "P3 SYSTEM RESERVATION P50 MS VS N AGENTS",
            [int(n) for n in ns],
            [
                ("ARBITER", (200, 30, 30), [points[n]["arbiter_p50_ms"] for n in ns]),
                ("ECHO", (30, 60, 200), [points[n]["echo_p50_ms"] for n in ns]),
            ],
            "MS",
        )
        (args.out / "p3.png").write_bytes(chart)
    print(table(results))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
