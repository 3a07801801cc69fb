"""A minimal line-chart PNG writer (no matplotlib in the project's environment): polylines on a
white canvas with axes and light grid lines; colours in the order of `COLOURS`."""

from __future__ import annotations

import itertools
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

COLOURS = [
    ("grey", (128, 128, 128)),
    ("blue", (31, 119, 180)),
    ("orange", (255, 127, 14)),
    ("green", (44, 160, 44)),
    ("red", (214, 39, 40)),
    ("black", (0, 0, 0)),
    ("purple", (148, 103, 189)),
    ("brown", (140, 86, 75)),
]


def line_chart(
    path: Path, series: Mapping[str, Sequence[float]], width: int = 640, height: int = 400
) -> dict:
    """Write `series` (name -> y values at x = 1..n) as a PNG; returns name -> colour name."""
    pixels = bytearray(b"\xff" * (width * height * 3))
    left, right, top, bottom = 40, width - 10, 10, height - 30
    ys = [v for values in series.values() for v in values]
    lo, hi = min(ys), max(ys)
    hi = hi if hi > lo else lo + 1
    n = max(len(v) for v in series.values())

    def put(x: int, y: int, rgb: tuple[int, int, int]) -> None:
        if 0 <= x < width and 0 <= y < height:
            i = (y * width + x) * 3
            pixels[i : i + 3] = bytes(rgb)

    def to_xy(i: int, v: float) -> tuple[float, float]:
        x = left + (right - left) * (i / max(1, n - 1))
        y = bottom - (bottom - top) * ((v - lo) / (hi - lo))
        return x, y

    for k in range(5):
        y = int(bottom - (bottom - top) * k / 4)
        for x in range(left, right):
            put(x, y, (225, 225, 225))
    for x in range(left, right):
        put(x, bottom, (0, 0, 0))
    for y in range(top, bottom):
        put(left, y, (0, 0, 0))
    legend = {}
    for (name, values), (colour, rgb) in zip(series.items(), COLOURS, strict=False):
        legend[name] = colour
        points = [to_xy(i, v) for i, v in enumerate(values)]
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
            for s in range(steps + 1):
                x = x0 + (x1 - x0) * s / steps
                y = y0 + (y1 - y0) * s / steps
                for dx in (0, 1):
                    for dy in (0, 1):
                        put(int(x) + dx, int(y) + dy, rgb)
    raw = b"".join(b"\x00" + bytes(pixels[r * width * 3 : (r + 1) * width * 3]) for r in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path.write_bytes(png)
    return {"y_min": lo, "y_max": hi, "x_max": n, **legend}
