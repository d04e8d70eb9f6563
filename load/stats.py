"""Latency samples and outcome counts per operation, and their summary."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

# Reasons that mean an agent refused or did not answer a reload (the arbiter rolled back).
NACK_REASONS = frozenset({"AGENT_REFUSED", "KERNEL_REFUSED", "KERNEL_NO_FREE_SLOT"})
TIMEOUT_REASONS = frozenset({"ACK_TIMEOUT"})


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class OpStats:
    """One operation's latencies (seconds, successes and refusals alike) and outcomes."""

    latencies: list[float] = field(default_factory=list)
    ok: int = 0
    refused: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "count": len(lat),
            "ok": self.ok,
            "refused": dict(sorted(self.refused.items())),
            "p50_ms": round(percentile(lat, 50) * 1e3, 3),
            "p95_ms": round(percentile(lat, 95) * 1e3, 3),
            "p99_ms": round(percentile(lat, 99) * 1e3, 3),
        }


class Stats:
    """Every client records here; the event loop is single-threaded, so no locking."""

    def __init__(self) -> None:
        self.ops: defaultdict[str, OpStats] = defaultdict(OpStats)
        self.total = 0

    def record(self, op: str, seconds: float, reason: str | None) -> None:
        """``reason`` None: success; otherwise the refusal's ErrorInfo reason."""
        s = self.ops[op]
        s.latencies.append(seconds)
        self.total += 1
        if reason is None:
            s.ok += 1
        else:
            s.refused[reason] += 1

    def refusals(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for s in self.ops.values():
            out.update(s.refused)
        return out

    def summary(self, elapsed: float) -> dict[str, Any]:
        refusals = self.refusals()
        return {
            "ops": self.total,
            "elapsed_s": round(elapsed, 3),
            "ops_per_s": round(self.total / elapsed, 1) if elapsed > 0 else 0.0,
            "per_op": {name: s.summary() for name, s in sorted(self.ops.items())},
            "refusals": dict(sorted(refusals.items())),
            "nacks": sum(n for r, n in refusals.items() if r in NACK_REASONS),
            "ack_timeouts": sum(n for r, n in refusals.items() if r in TIMEOUT_REASONS),
        }


def render(summary: dict[str, Any]) -> str:
    """The human summary printed at the end of a run."""
    lines = [
        f"{summary['ops']} ops in {summary['elapsed_s']:.1f}s = {summary['ops_per_s']:.0f} ops/s",
        f"{'operation':<16}{'count':>8}{'ok':>8}{'refused':>9}{'p50 ms':>9}{'p95 ms':>9}"
        f"{'p99 ms':>9}",
    ]
    for name, s in summary["per_op"].items():
        lines.append(
            f"{name:<16}{s['count']:>8}{s['ok']:>8}{sum(s['refused'].values()):>9}"
            f"{s['p50_ms']:>9.2f}{s['p95_ms']:>9.2f}{s['p99_ms']:>9.2f}"
        )
    refusals = ", ".join(f"{k}={v}" for k, v in summary["refusals"].items()) or "none"
    lines.append(f"refusals: {refusals}")
    lines.append(f"NACKs: {summary['nacks']}  ack timeouts: {summary['ack_timeouts']}")
    return "\n".join(lines)
