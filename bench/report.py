"""Results: the machine they were measured on, the JSON document, the markdown table."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load1 = round(os.getloadavg()[0], 2)
    except OSError:
        load1 = None
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "grpcio": metadata.version("grpcio"),
        "protobuf": metadata.version("protobuf"),
        "platform": platform.platform(),
        "loadavg_1m_at_start": load1,
    }


Row = tuple[str, str, str, str, str, str, str]


def _miss(ratio: float, target: float, higher_is_better: bool) -> str:
    if higher_is_better:
        return "yes" if ratio >= target else f"no: {100 * (1 - ratio / target):.0f}% short"
    return "yes" if ratio <= target else f"no: {100 * (ratio / target - 1):.0f}% over"


def rows(results: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    p1 = results.get("P1", {})
    for n, pt in p1.get("points", {}).items():
        out.append((
            "P1",
            f"reserve+release round trips, {n} in flight (1-CPU fleet acking); "
            f"unary echo x2: {pt['echo_ops_per_s']:.0f} ops/s",
            f"{pt['arbiter_ops_per_s']:.0f} ops/s (p50 {pt['arbiter_p50_ms']:.2f} ms, "
            f"p99 {pt['arbiter_p99_ms']:.2f} ms)",
            f"{pt['relay_ops_per_s']:.0f} ops/s relay x2 (p50 {pt['relay_p50_ms']:.2f} ms, "
            f"p99 {pt['relay_p99_ms']:.2f} ms)",
            f"{pt['ratio']:.2f}x",
            f">= {pt['target']}x",
            _miss(pt["ratio"], pt["target"], True),
        ))  # fmt: skip
    p2 = results.get("P2", {})
    for case in ("cpu", "task_cpu"):
        if f"{case}_ratio" in p2:
            many, few = p2[f"{case}_100k_tasks_us"], p2[f"{case}_10_tasks_us"]
            ok = p2[f"{case}_ratio"] <= 1.3 and many <= 20.0
            out.append((
                "P2",
                f"core admission ({case} scope), 100,000 vs 10 tasks",
                f"{many} us",
                f"{few} us",
                f"{p2[f'{case}_ratio']:.2f}x",
                "<= 1.3x and <= 20 us",
                "yes" if ok else "no",
            ))  # fmt: skip
    p3 = results.get("P3", {})
    for n, pt in p3.get("points", {}).items():
        target = pt["target"]
        out.append((
            "P3",
            f"system reservation acked by N={n} agents (p50 per broadcast)",
            f"{pt['arbiter_p50_ms']:.2f} ms",
            f"{pt['echo_p50_ms']:.2f} ms (bidi fan-out)",
            f"{pt['ratio']:.2f}x",
            f"<= {target}x" if target else "(no target)",
            _miss(pt["ratio"], target, False) if target else "-",
        ))  # fmt: skip
    p4 = results.get("P4", {})
    if "rss_mb" in p4:
        out.append((
            "P4",
            f"arbiter VmRSS, {p4['agent_streams']} agent streams + "
            f"{p4['created']:,} reservations",
            f"{p4['rss_mb']:.0f} MB",
            f"{p4['rss_mb_streams_only']:.0f} MB with the streams only",
            "-",
            f"<= {p4['rss_target_mb']:.0f} MB",
            _rss_met(p4),
        ))  # fmt: skip
        resync = p4["resync_s"]
        out.append((
            "P4",
            "resync after arbiter restart: all agents online and acked"
            + (f", {p4['reservations_reloaded']:,} reservations reloaded" if p4["persistent"]
               else " (no persistence: nothing reloaded)"),
            f"{resync} s" if resync is not None else "did not finish",
            "-",
            "-",
            "(no target)",
            "-",
        ))  # fmt: skip
    for pid in ("P1", "P2", "P3", "P4"):
        err = results.get(pid, {}).get("error")
        if err:
            out.append((pid, "failed to run", err[:120], "-", "-", "-", "no"))
    return out


def _rss_met(p4: dict[str, Any]) -> str:
    if p4["created"] < p4["target_reservations"]:
        return f"not measured at full size: {p4['created']:,} of {p4['target_reservations']:,}"
    return _miss(p4["rss_mb"], p4["rss_target_mb"], False)


def table(results: dict[str, Any]) -> str:
    m = results["machine"]
    head = [
        "# Benchmark results",
        "",
        f"Measured {results['when']} on {m['nproc']} x {m['cpu_model']}, Python {m['python']}, "
        f"grpcio {m['grpcio']} (load average {m['loadavg_1m_at_start']} at start)"
        + (" — quick mode, scaled down" if results.get("quick") else "")
        + ". Ratios are against baselines measured in the same run.",
        "",
        "| id | what | measured | baseline | ratio | target | met? |",
        "|----|------|----------|----------|-------|--------|------|",
    ]
    body = ["| " + " | ".join(r) + " |" for r in rows(results)]
    return "\n".join(head + body) + "\n"
