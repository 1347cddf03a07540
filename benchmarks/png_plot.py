"""Tiny PNG charts (line and scatter plots) with numpy and zlib only.

matplotlib is not installed where the benchmarks run, so this draws on a
numpy RGB canvas with a 3x5 bitmap font and writes the PNG by hand. Enough
for benchmark figures: axes with tick labels (linear or log10), a title,
lines, dots and a legend.

    fig = Chart(480, 360, "title", xlabel="trials", ylabel="speed", ylog=False)
    fig.line(xs, ys, color=(31, 119, 180), label="random")
    fig.save("out.png")
    save_row([fig1, fig2], "row.png")       # several charts side by side
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]

# 3x5 glyphs, rows top to bottom, '#' = ink
_FONT_SRC = {
    "0": "### #.# #.# #.# ###", "1": ".#. ##. .#. .#. ###", "2": "### ..# ### #.. ###",
    "3": "### ..# .## ..# ###", "4": "#.# #.# ### ..# ..#", "5": "### #.. ### ..# ###",
    "6": "### #.. ### #.# ###", "7": "### ..# ..# .#. .#.", "8": "### #.# ### #.# ###",
    "9": "### #.# ### ..# ###", ".": "... ... ... ... .#.", "-": "... ... ### ... ...",
    "/": "..# ..# .#. #.. #..", "(": ".#. #.. #.. #.. .#.", ")": ".#. ..# ..# ..# .#.",
    "%": "#.# ..# .#. #.. #.#", ":": "... .#. ... .#. ...", ",": "... ... ... .#. #..",
    "+": "... .#. ### .#. ...", "=": "... ### ... ### ...", " ": "... ... ... ... ...",
    "_": "... ... ... ... ###", "x": "... #.# .#. #.# ...", "e": "... ### ### #.. ###",
    "a": ".#. #.# ### #.# #.#", "b": "##. #.# ##. #.# ##.", "c": "### #.. #.. #.. ###",
    "d": "##. #.# #.# #.# ##.", "f": "### #.. ##. #.. #..", "g": "### #.. #.# #.# ###",
    "h": "#.# #.# ### #.# #.#", "i": "### .#. .#. .#. ###", "j": "..# ..# ..# #.# ###",
    "k": "#.# #.# ##. #.# #.#", "l": "#.. #.. #.. #.. ###", "m": "#.# ### ### #.# #.#",
    "n": "##. #.# #.# #.# #.#", "o": "### #.# #.# #.# ###", "p": "### #.# ### #.. #..",
    "q": "### #.# #.# ### ..#", "r": "##. #.# ##. #.# #.#", "s": "### #.. ### ..# ###",
    "t": "### .#. .#. .#. .#.", "u": "#.# #.# #.# #.# ###", "v": "#.# #.# #.# #.# .#.",
    "w": "#.# #.# ### ### #.#", "y": "#.# #.# .#. .#. .#.", "z": "### ..# .#. #.. ###",
}
_FONT = {c: np.array([[ch == "#" for ch in row] for row in s.split()], dtype=bool)
         for c, s in _FONT_SRC.items()}


def _png(img: np.ndarray) -> bytes:
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


class Chart:
    def __init__(self, width: int, height: int, title: str = "", *, xlabel: str = "",
                 ylabel: str = "", xlog: bool = False, ylog: bool = False) -> None:
        self.img = np.full((height, width, 3), 255, dtype=np.uint8)
        self.w, self.h = width, height
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.xlog, self.ylog = xlog, ylog
        self.left, self.right, self.top, self.bottom = 46, width - 10, 22, height - 34
        self.series: list[tuple[str, Sequence[float], Sequence[float], tuple, str]] = []
        self.hlines: list[float] = []
        self.diagonal = False
        self.xlim: tuple[float, float] | None = None
        self.ylim: tuple[float, float] | None = None

    def line(self, xs: Sequence[float], ys: Sequence[float], color: tuple = COLORS[0],
             label: str = "") -> None:
        self.series.append(("line", xs, ys, color, label))

    def scatter(self, xs: Sequence[float], ys: Sequence[float], color: tuple = COLORS[0],
                label: str = "") -> None:
        self.series.append(("dots", xs, ys, color, label))

    # -- drawing ----------------------------------------------------------------------------

    def text(self, x: int, y: int, s: str, color: tuple = (0, 0, 0), scale: int = 1) -> None:
        for i, c in enumerate(s.lower()):
            g = _FONT.get(c, _FONT[" "])
            g = np.kron(g, np.ones((scale, scale), dtype=bool))
            x0 = x + i * 4 * scale
            ys, xs = np.nonzero(g)
            ok = (ys + y >= 0) & (ys + y < self.h) & (xs + x0 >= 0) & (xs + x0 < self.w)
            self.img[ys[ok] + y, xs[ok] + x0] = color

    def _t(self, v: float, log: bool) -> float:
        return math.log10(v) if log else v

    def _map(self, x: float, y: float) -> tuple[float, float]:
        (x0, x1), (y0, y1) = self.xlim, self.ylim
        px = self.left + (self._t(x, self.xlog) - x0) / (x1 - x0 or 1) * (self.right - self.left)
        py = self.bottom - (self._t(y, self.ylog) - y0) / (y1 - y0 or 1) * (self.bottom - self.top)
        return px, py

    def _seg(self, a: tuple[float, float], b: tuple[float, float], color: tuple) -> None:
        n = int(max(abs(b[0] - a[0]), abs(b[1] - a[1]))) + 1
        for t in np.linspace(0, 1, n + 1):
            x, y = int(round(a[0] + (b[0] - a[0]) * t)), int(round(a[1] + (b[1] - a[1]) * t))
            if self.left <= x <= self.right and self.top <= y <= self.bottom:
                self.img[max(y - 0, 0):y + 2, x:x + 1] = color

    def _limits(self) -> None:
        xs = [self._t(x, self.xlog) for _, X, _, _, _ in self.series for x in X]
        ys = [self._t(y, self.ylog) for _, _, Y, _, _ in self.series for y in Y]
        self.xlim = self.xlim or (min(xs), max(xs))
        self.ylim = self.ylim or (min(ys + [self._t(h, self.ylog) for h in self.hlines]),
                                  max(ys + [self._t(h, self.ylog) for h in self.hlines]))
        if self.diagonal:
            lo, hi = min(self.xlim[0], self.ylim[0]), max(self.xlim[1], self.ylim[1])
            self.xlim = self.ylim = (lo, hi)

    def render(self) -> np.ndarray:
        self._limits()
        grey, black = (200, 200, 200), (0, 0, 0)
        for i in range(5):  # ticks and grid
            fx = self.xlim[0] + (self.xlim[1] - self.xlim[0]) * i / 4
            fy = self.ylim[0] + (self.ylim[1] - self.ylim[0]) * i / 4
            px = int(self.left + (self.right - self.left) * i / 4)
            py = int(self.bottom - (self.bottom - self.top) * i / 4)
            self.img[self.top:self.bottom, px] = grey
            self.img[py, self.left:self.right] = grey
            self.text(px - 8, self.bottom + 4, _fmt(10 ** fx if self.xlog else fx))
            self.text(2, py - 2, _fmt(10 ** fy if self.ylog else fy))
        self.img[self.top:self.bottom + 1, self.left] = black
        self.img[self.bottom, self.left:self.right + 1] = black
        for h in self.hlines:
            y = int(self._map(10 ** self.xlim[0] if self.xlog else self.xlim[0], h)[1])
            if self.top <= y <= self.bottom:
                self.img[y, self.left:self.right:3] = (120, 120, 120)
        if self.diagonal:
            lo, hi = self.xlim
            a = self._map(10 ** lo if self.xlog else lo, 10 ** lo if self.ylog else lo)
            b = self._map(10 ** hi if self.xlog else hi, 10 ** hi if self.ylog else hi)
            self._seg(a, b, (90, 90, 90))
        for kind, X, Y, color, _ in self.series:
            pts = [self._map(x, y) for x, y in zip(X, Y)]
            if kind == "line":
                for a, b in zip(pts, pts[1:]):
                    self._seg(a, b, color)
            else:
                for x, y in pts:
                    x, y = int(x), int(y)
                    self.img[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = color
        self.text(self.left, 6, self.title, scale=2 if len(self.title) * 8 < self.w - 60 else 1)
        self.text((self.left + self.right) // 2 - 2 * len(self.xlabel), self.h - 12, self.xlabel)
        self.text(self.left + 4, self.top + 2, self.ylabel, (90, 90, 90))
        labels = [(label, color) for _, _, _, color, label in self.series if label]
        for i, (label, color) in enumerate(dict(labels).items()):
            y = self.bottom - 10 - 8 * (len(dict(labels)) - 1 - i)
            x = self.right - 4 * len(label) - 14
            self.img[y + 1:y + 4, x:x + 8] = color
            self.text(x + 11, y, label)
        return self.img

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(_png(self.render()))


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100 or abs(v) < 0.01:
        return f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{v:.2g}" if abs(v) < 1 else f"{v:.3g}"


def save_row(charts: Sequence[Chart], path: str | Path) -> None:
    """Several charts side by side in one PNG."""
    imgs = [c.render() for c in charts]
    h = max(i.shape[0] for i in imgs)
    row = np.full((h, sum(i.shape[1] for i in imgs), 3), 255, dtype=np.uint8)
    x = 0
    for i in imgs:
        row[:i.shape[0], x:x + i.shape[1]] = i
        x += i.shape[1]
    Path(path).write_bytes(_png(row))
