"""The bench's outputs: a valid PNG from the pure-Python writer and an honest table."""

from __future__ import annotations

import struct
import zlib

from hwbp.bench.png import line_chart
from hwbp.bench.report import rows


def test_line_chart_is_a_decodable_png_of_the_asked_size() -> None:
    data = line_chart("T", [1, 16], [("A", (255, 0, 0), [1.0, 2.0])], "MS", 120, 80)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert length == 13
    width, height = struct.unpack(">II", data[16:24])
    assert kind == b"IHDR" and (width, height) == (120, 80)
    idat_len = struct.unpack(">I", data[33:37])[0]
    raw = zlib.decompress(data[41 : 41 + idat_len])
    assert len(raw) == height * (1 + 3 * width)
    assert b"\xff\x00\x00" in raw  # the series colour was drawn


def test_table_says_by_how_much_a_target_was_missed() -> None:
    results = {
        "P1": {
            "points": {
                "1": {
                    "arbiter_ops_per_s": 400.0,
                    "arbiter_p50_ms": 2.5,
                    "arbiter_p99_ms": 4.0,
                    "relay_ops_per_s": 800.0,
                    "relay_p50_ms": 1.25,
                    "relay_p99_ms": 2.0,
                    "echo_ops_per_s": 1600.0,
                    "echo_p50_ms": 0.6,
                    "echo_p99_ms": 1.0,
                    "ratio": 0.5,
                    "target": 0.8,
                },
            }
        },
        "P3": {
            "points": {
                "64": {
                    "runs": 5,
                    "arbiter_p50_ms": 3.0,
                    "arbiter_p99_ms": 5.0,
                    "arbiter_us_per_agent": 46.9,
                    "echo_p50_ms": 2.0,
                    "echo_p99_ms": 3.0,
                    "echo_us_per_agent": 31.3,
                    "ratio": 1.5,
                    "ratio_min": 1.3,
                    "ratio_max": 1.9,
                    "target": 1.5,
                    "worst_allowed": 1.8,
                },
            }
        },
        "P6": {
            "cpus_per_host": 4,
            "held": 10_000,
            "points": {
                "1": {
                    "full_ops_per_s": 90.0,
                    "full_p50_ms": 11.0,
                    "full_p99_ms": 20.0,
                    "empty_ops_per_s": 100.0,
                    "empty_p50_ms": 10.0,
                    "empty_p99_ms": 18.0,
                    "ratio": 0.9,
                    "target": 0.8,
                },
            },
        },
    }
    got = {r[0]: r for r in rows(results)}
    assert got["P1"][-1] == "no: 38% short"
    assert "relay" in got["P1"][3] and "p99 2.00 ms" in got["P1"][3]
    # the median meets its target, one of the five runs does not: said so
    assert got["P3"][-1] == "a run at 1.90x" and "median of 5; 1.30x to 1.90x" in got["P3"][4]
    assert got["P6"][-1] == "yes" and "10,000 task reservations" in got["P6"][1]
