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


def _lat(pt: dict[str, Any], prefix: str) -> str:
    return f"p50 {pt[prefix + '_p50_ms']:.2f} ms, p99 {pt[prefix + '_p99_ms']:.2f} ms"


def rows(results: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    p1 = results.get("P1", {})
    for n, pt in p1.get("points", {}).items():
        out.append((
            "P1",
            f"reserve+release round trips, {n} in flight (1-CPU fleet acking); "
            f"unary echo x2: {pt['echo_ops_per_s']:.0f} ops/s ({_lat(pt, 'echo')})",
            f"{pt['arbiter_ops_per_s']:.0f} ops/s ({_lat(pt, 'arbiter')})",
            f"{pt['relay_ops_per_s']:.0f} ops/s relay x2 ({_lat(pt, 'relay')})",
            f"{pt['ratio']:.2f}x",
            f">= {pt['target']}x",
            _miss(pt["ratio"], pt["target"], True),
        ))  # fmt: skip
        if "arbiter_uvloop_ops_per_s" in pt:
            out.append((
                "P1",
                f"the same arbiter on uvloop's event loop, {n} in flight (not used: see text)",
                f"{pt['arbiter_uvloop_ops_per_s']:.0f} ops/s ({_lat(pt, 'arbiter_uvloop')})",
                f"{pt['arbiter_ops_per_s']:.0f} ops/s on asyncio's loop",
                f"{pt['uvloop_vs_asyncio']:.2f}x",
                "(kept only if it wins)",
                "-",
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
        runs = pt.get("runs", 1)
        spread = (
            f" (median of {runs}; {pt['ratio_min']:.2f}x to {pt['ratio_max']:.2f}x)"
            if runs > 1
            else ""
        )
        out.append((
            "P3",
            f"system reservation acked by N={n} agents, per broadcast",
            f"p50 {pt['arbiter_p50_ms']:.2f} ms, p99 {pt['arbiter_p99_ms']:.2f} ms "
            f"({pt['arbiter_us_per_agent']:.0f} us per agent)",
            f"p50 {pt['echo_p50_ms']:.2f} ms, p99 {pt['echo_p99_ms']:.2f} ms "
            f"({pt['echo_us_per_agent']:.0f} us per agent; bidi fan-out)",
            f"{pt['ratio']:.2f}x{spread}",
            f"<= {target}x median, no run > {pt['worst_allowed']}x" if target else "(no target)",
            _p3_met(pt) if target else "-",
        ))  # fmt: skip
    for streams, pt in results.get("P4", {}).get("points", {}).items():
        out.append((
            "P4",
            f"arbiter VmRSS, {streams} agent streams + {pt['created']:,} reservations",
            f"{pt['rss_mb_peak']:.0f} MB",
            f"{pt['rss_mb_streams_only']:.0f} MB with the streams only",
            "-",
            f"<= {pt['target_rss_mb']:.0f} MB",
            _rss_met(pt),
        ))  # fmt: skip
        resync = pt["restart_resync_s"]
        out.append((
            "P4",
            f"resync after an arbiter restart, {streams} agent streams, "
            f"{pt['created']:,} reservations restored from SQLite",
            (
                f"{resync} s: listening after {pt['restart_listening_s']} s, every agent "
                f"acked {pt['restart_after_listening_s']} s later "
                f"({pt['restart_ms_per_agent']:.2f} ms per agent; arbiter CPU "
                f"{pt['restart_cpu_ms_per_agent']:.2f} ms per agent)"
            )
            if resync is not None
            else "did not finish",
            "-",
            "-",
            f"<= {pt['target_resync_s']} s",
            _miss(resync, pt["target_resync_s"], False) if resync is not None else "no",
        ))  # fmt: skip
    p6 = results.get("P6", {})
    for n, pt in p6.get("points", {}).items():
        out.append((
            "P6",
            f"reserve+release of a task breakpoint, {n} in flight, on a {p6['cpus_per_host']}-CPU "
            f"host holding {p6['held']:,} task reservations vs an empty one",
            f"{pt['full_ops_per_s']:.0f} ops/s ({_lat(pt, 'full')})",
            f"{pt['empty_ops_per_s']:.0f} ops/s empty host ({_lat(pt, 'empty')})",
            f"{pt['ratio']:.2f}x",
            f">= {pt['target']}x",
            _miss(pt["ratio"], pt["target"], True),
        ))  # fmt: skip
    if "P5" in results and "error" not in results["P5"]:
        from hwbp.bench.ha import rows as ha_rows

        out.extend(ha_rows(results["P5"]))
    for pid in ("P1", "P2", "P3", "P4", "P5", "P6"):
        err = results.get(pid, {}).get("error")
        if err:
            out.append((pid, "failed to run", err[:120], "-", "-", "-", "no"))
    return out


def _p3_met(pt: dict[str, Any]) -> str:
    median = _miss(pt["ratio"], pt["target"], False)
    if pt["ratio_max"] > pt["worst_allowed"]:
        worst = f"a run at {pt['ratio_max']:.2f}x"
        return worst if median == "yes" else f"{median}; {worst}"
    return median


def _rss_met(p4: dict[str, Any]) -> str:
    if p4["created"] < p4["target_reservations"]:
        return f"not measured at full size: {p4['created']:,} of {p4['target_reservations']:,}"
    return _miss(p4["rss_mb_peak"], p4["target_rss_mb"], False)


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
