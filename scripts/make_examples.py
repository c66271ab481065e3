"""Draws the page's two example images (www/examples/*.png) procedurally: a stylised portrait
(a face on a plain background) and a style image (warm brush-like stripes). Standard library
only; the output is committed, this script documents how it was made."""
import math
import struct
import zlib
from pathlib import Path

SIZE = 128
OUT = Path(__file__).resolve().parent.parent / "www" / "examples"


def png(path, pixels):
    raw = b"".join(b"\x00" + bytes(v for px in row for v in px) for row in pixels)
    chunk = lambda tag, data: struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    ihdr = struct.pack(">IIBBBBB", SIZE, SIZE, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def clamp(v):
    return max(0, min(255, int(v)))


def portrait(x, y):
    u, v = (x - 64) / 64, (y - 64) / 64
    px = (90 + 40 * v, 120 + 30 * v, 160)  # background gradient
    if (u / 0.62) ** 2 + ((v - 0.75) / 0.45) ** 2 < 1 and v > 0.45:  # shoulders
        px = (60, 70, 110)
    if u * u / 0.14 + (v - 0.3) ** 2 / 0.2 < 1 and v > 0.1:  # neck
        px = (205, 160, 135)
    if (u / 0.42) ** 2 + ((v + 0.05) / 0.55) ** 2 < 1:  # face
        shade = 1 - 0.25 * max(0.0, u)
        px = (225 * shade, 180 * shade, 150 * shade)
        if ((u / 0.46) ** 2 + ((v + 0.25) / 0.5) ** 2 < 1) and v < -0.35:  # hair
            px = (70, 45, 30)
        for ex in (-0.16, 0.16):  # eyes
            if ((u - ex) / 0.07) ** 2 + ((v + 0.1) / 0.04) ** 2 < 1:
                px = (40, 40, 60)
        if abs(u) < 0.14 and abs(v - 0.22) < 0.025:  # mouth
            px = (170, 80, 80)
    return tuple(clamp(c) for c in px)


def style(x, y):
    t = x / SIZE * 6 + math.sin(y / 9) * 1.5 + math.sin((x + y) / 17)
    stripe = 0.5 + 0.5 * math.sin(t * 2.2)
    return (clamp(230 * stripe + 25), clamp(120 + 90 * math.sin(y / 21)), clamp(40 + 150 * (1 - stripe)))


OUT.mkdir(parents=True, exist_ok=True)
png(OUT / "portrait.png", [[portrait(x, y) for x in range(SIZE)] for y in range(SIZE)])
png(OUT / "style.png", [[style(x, y) for x in range(SIZE)] for y in range(SIZE)])
