"""A picture of an IOVA space: DMA windows, allowed and reserved ranges, mappings.

IOVA spaces are 64-bit and sparse: a 1 GiB 32-bit window at 0 next to a
64-bit window at 1<<59, a 1 MiB MSI hole, thousands of 4 KiB mappings.  A
linear axis would show none of it, so the axis is piecewise: every boundary
of the drawn ranges is a tick, and each interval between ticks gets a width
that grows with the logarithm of its size.  Rows with more ranges than can be
told apart are coalesced (nearest neighbours first) and say how many ranges
each drawn band stands for.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

U64_MAX = (1 << 64) - 1


@dataclass(frozen=True)
class Band:
    """An inclusive IOVA range [start, last] with a label."""

    start: int
    last: int
    label: str = ""
    count: int = 1  # how many original ranges this band stands for

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.last <= U64_MAX:
            raise ValueError(f"bad range [{self.start:#x}, {self.last:#x}]")


@dataclass(frozen=True)
class Row:
    name: str
    bands: Sequence[Band]
    color: str


# Row colours by the kind of range they show.
COLORS = {
    "windows": "#4c78a8",
    "allowed": "#54a24b",
    "reserved": "#e45756",
    "mappings": "#f58518",
}


def coalesce(bands: Iterable[Band], limit: int) -> list[Band]:
    """Merge bands until at most `limit` remain, closing the smallest gaps first.

    Touching or overlapping bands always merge.  O(n log n).
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    merged: list[Band] = []
    for b in sorted(bands, key=lambda b: b.start):
        if merged and b.start <= merged[-1].last + 1:
            top = merged[-1]
            merged[-1] = Band(
                top.start, max(top.last, b.last), top.label or b.label, top.count + b.count
            )
        else:
            merged.append(b)
    if len(merged) <= limit:
        return merged
    # Doubly linked list over the runs, with a heap of the gaps between them.
    nxt = list(range(1, len(merged) + 1))
    prv = list(range(-1, len(merged) - 1))
    alive = [True] * len(merged)
    cur = list(merged)
    heap = [(cur[i + 1].start - cur[i].last, i) for i in range(len(cur) - 1)]
    heapq.heapify(heap)
    remaining = len(cur)
    while remaining > limit and heap:
        gap, i = heapq.heappop(heap)
        j = nxt[i]
        if not alive[i] or j >= len(cur) or not alive[j] or cur[j].start - cur[i].last != gap:
            continue  # stale heap entry
        a, b = cur[i], cur[j]
        cur[i] = Band(a.start, b.last, "", a.count + b.count)
        alive[j] = False
        nxt[i] = nxt[j]
        if nxt[j] < len(cur):
            prv[nxt[j]] = i
            heapq.heappush(heap, (cur[nxt[j]].start - cur[i].last, i))
        if prv[i] >= 0:
            heapq.heappush(heap, (cur[i].start - cur[prv[i]].last, prv[i]))
        remaining -= 1
    return [b for b, ok in zip(cur, alive, strict=True) if ok]


def _ticks(rows: Sequence[Row]) -> list[int]:
    points = {0}
    for row in rows:
        for b in row.bands:
            points.add(b.start)
            points.add(b.last + 1)
    return sorted(points)


def _axis(ticks: list[int], width: float) -> dict[int, float]:
    """x position of each tick: interval widths grow with log2 of their size."""
    sizes = [max(hi - lo, 1) for lo, hi in itertools.pairwise(ticks)]
    weights = [1.0 + math.log2(s) for s in sizes]
    total = sum(weights) or 1.0
    xs = {ticks[0]: 0.0}
    x = 0.0
    for t, w in zip(ticks[1:], weights, strict=True):
        x += width * w / total
        xs[t] = x
    return xs


def _size(n: int) -> str:
    for unit, shift in (("E", 60), ("P", 50), ("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}iB"
    return f"{n:#x} B"


def render_svg(title: str, rows: Sequence[Row], *, max_bands: int = 64, width: int = 1100) -> str:
    """Return an SVG document drawing `rows` on one piecewise-log IOVA axis."""
    rows = [Row(r.name, coalesce(r.bands, max_bands), r.color) for r in rows]
    ticks = _ticks(rows)
    left, row_h, top = 110, 34, 40
    plot_w = width - left - 90  # room for the last rotated tick label
    xs = _axis(ticks, plot_w)
    axis_y = top + row_h * len(rows) + 6
    height = axis_y + 130
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="monospace" font-size="11">',
        f'<text x="{left}" y="20" font-size="14">{escape(title)}</text>',
    ]
    for i, row in enumerate(rows):
        y = top + i * row_h
        out.append(f'<text x="4" y="{y + 20}">{escape(row.name)}</text>')
        out.append(
            f'<rect x="{left}" y="{y + 4}" width="{plot_w}" height="{row_h - 8}" fill="#f3f3f3"/>'
        )
        for b in row.bands:
            x0, x1 = left + xs[b.start], left + xs[b.last + 1]
            tip = (
                f"{b.label + ' ' if b.label else ''}[{b.start:#x}, {b.last:#x}] "
                f"{_size(b.last - b.start + 1)}"
            )
            if b.count > 1:
                tip += f" ({b.count} ranges)"
            out.append(
                f'<rect x="{x0:.1f}" y="{y + 6}" width="{max(x1 - x0, 1.0):.1f}" '
                f'height="{row_h - 12}" fill="{row.color}" class="band" '
                f'data-row="{escape(row.name)}" data-start="{b.start:#x}" '
                f'data-last="{b.last:#x}" data-count="{b.count}">'
                f"<title>{escape(tip)}</title></rect>"
            )
            if b.label and x1 - x0 > 8 * len(b.label):
                out.append(
                    f'<text x="{x0 + 3:.1f}" y="{y + 21}" fill="white">{escape(b.label)}</text>'
                )
    out.append(
        f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" stroke="black"/>'
    )
    last_x = -1e9
    for t in ticks:
        x = left + xs[t]
        out.append(
            f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 4}" stroke="black"/>'
        )
        if x - last_x >= 12:  # skip labels that would overprint
            out.append(
                f'<text x="{x:.1f}" y="{axis_y + 10}" transform="rotate(60 {x:.1f} '
                f'{axis_y + 10})">{t:#x}</text>'
            )
            last_x = x
    out.append(
        f'<text x="{left}" y="{height - 6}" fill="#666">axis: each interval between '
        "ticks is drawn with width ~ log2(size); hover a band for its range</text>"
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"
