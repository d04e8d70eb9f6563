"""A tiny PNG line chart (zlib + struct only), so the bench needs no plotting library.

Text uses a 3x5 pixel font covering only the characters the P3 chart needs.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from collections.abc import Sequence

Color = tuple[int, int, int]
WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
GREY: Color = (210, 210, 210)

_FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001001001", "8": "111101111101111",
    "9": "111101111001111", ".": "000000000000010", " ": "000000000000000",
    "=": "000111000111000", "-": "000000111000000", "/": "001001010100100",
    "A": "010101111101101", "B": "110101110101110", "C": "111100100100111",
    "E": "111100110100111", "H": "101101111101101", "I": "111010010010111",
    "M": "101111111101101", "N": "111101101101101", "O": "111101101101111",
    "P": "111101111100100", "R": "110101110101101", "S": "111100111001111",
    "T": "111010010010010", "V": "101101101101010", "L": "100100100100111",
    "Y": "101101010010010", "X": "101101010101101", "G": "111100101101111",
    "K": "101101110101101", "D": "110101101101110", "U": "101101101101111",
    "F": "111100110100100", "W": "101101111111101",
}  # fmt: skip


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.w, self.h = width, height
        self.px = bytearray(WHITE * (width * height))

    def dot(self, x: int, y: int, c: Color, r: int = 0) -> None:
        for yy in range(y - r, y + r + 1):
            for xx in range(x - r, x + r + 1):
                if 0 <= xx < self.w and 0 <= yy < self.h:
                    i = 3 * (yy * self.w + xx)
                    self.px[i : i + 3] = bytes(c)

    def line(self, x0: int, y0: int, x1: int, y1: int, c: Color, r: int = 0) -> None:
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for s in range(steps + 1):
            self.dot(x0 + (x1 - x0) * s // steps, y0 + (y1 - y0) * s // steps, c, r)

    def text(self, x: int, y: int, s: str, c: Color = BLACK, scale: int = 2) -> None:
        for n, ch in enumerate(s.upper()):
            glyph = _FONT.get(ch, _FONT[" "])
            for i, bit in enumerate(glyph):
                if bit == "1":
                    gx, gy = x + n * 4 * scale + (i % 3) * scale, y + (i // 3) * scale
                    for dy in range(scale):
                        for dx in range(scale):
                            self.dot(gx + dx, gy + dy, c)

    def png(self) -> bytes:
        raw = b"".join(
            b"\x00" + bytes(self.px[3 * self.w * y : 3 * self.w * (y + 1)]) for y in range(self.h)
        )

        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

        header = struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )


def line_chart(
    title: str,
    xs: Sequence[int],
    series: Sequence[tuple[str, Color, Sequence[float]]],
    y_label: str,
    width: int = 640,
    height: int = 400,
) -> bytes:
    """Points at evenly spaced x positions (labelled with ``xs``), y from 0 to the max."""
    c = Canvas(width, height)
    left, right, top, bottom = 70, width - 20, 50, height - 50
    ymax = max((v for _, _, vals in series for v in vals), default=1.0) * 1.1 or 1.0
    c.text(left, 15, title)
    c.text(left + 8, top - 18, y_label)
    for k in range(5):
        y = bottom - (bottom - top) * k // 4
        c.line(left, y, right, y, GREY)
        c.text(8, y - 5, f"{ymax * k / 4:.1f}")
    c.line(left, top, left, bottom, BLACK)
    c.line(left, bottom, right, bottom, BLACK)

    def px(i: int, v: float) -> tuple[int, int]:
        x = left + 20 + (right - left - 40) * i // max(len(xs) - 1, 1)
        return x, bottom - int((bottom - top) * v / ymax)

    for i, x in enumerate(xs):
        c.text(px(i, 0)[0] - 6, bottom + 10, str(x))
    c.text((left + right) // 2 - 30, bottom + 30, "N AGENTS")
    for n, (name, color, vals) in enumerate(series):
        pts = [px(i, v) for i, v in enumerate(vals)]
        for (x0, y0), (x1, y1) in itertools.pairwise(pts):
            c.line(x0, y0, x1, y1, color, 1)
        for x, y in pts:
            c.dot(x, y, color, 3)
        c.line(right - 160, top + 10 + 20 * n, right - 130, top + 10 + 20 * n, color, 1)
        c.text(right - 120, top + 5 + 20 * n, name, color)
    return c.png()
