"""Tiny valid PNG generator (no Pillow needed)."""

from __future__ import annotations

import hashlib
import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def dims_for_aspect(aspect_ratio: str | None, long_side: int = 64) -> tuple[int, int]:
    try:
        a, b = (float(x) for x in str(aspect_ratio or "1:1").split(":"))
        if a <= 0 or b <= 0:
            raise ValueError
    except ValueError:
        a, b = 1.0, 1.0
    if a >= b:
        return long_side, max(1, round(long_side * b / a))
    return max(1, round(long_side * a / b)), long_side


def make_png(width: int, height: int, seed: str) -> bytes:
    """RGB gradient between two colours derived from ``seed``."""
    h = hashlib.sha256(seed.encode()).digest()
    c0, c1 = h[0:3], h[3:6]
    rows = []
    for y in range(height):
        row = bytearray(b"\x00")
        for x in range(width):
            f = (x + y) / max(1, width + height - 2)
            row += bytes(int(c0[i] + (c1[i] - c0[i]) * f) & 0xFF for i in range(3))
        rows.append(bytes(row))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"".join(rows), 6))
            + _chunk(b"IEND", b""))
