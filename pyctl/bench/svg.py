"""Horizontal bar charts with min-max ranges, written as SVG by hand.

A chart is a list of groups (a measurement: "read, 1 MiB blocks"), each a
list of bars (a configuration: its :class:`Summary`).  The bar is the median,
the whisker the range of the samples, the number the median.  A reference
line (1.0 on a chart of ratios) marks "as fast as the baseline".  The axis
ends at 1.5 times the largest median, so one wild sample does not squash the
chart: a whisker past the end ends in an arrow (the table has its value).  Colours
follow the bar's label, so a configuration keeps its colour in every group.
"""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import escape

from pyctl.bench.stats import Summary

PALETTE = (
    "#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3",
    "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd",
)  # fmt: skip
WIDTH = 760
LABEL_W = 190  # the bar labels' column
VALUE_W = 110  # room right of the longest bar for its number
BAR_H = 16
GAP = 4
GROUP_GAP = 14
HEAD_H = 20  # a group's title line

Group = tuple[str, Sequence[tuple[str, Summary | None]]]


def fmt(v: float) -> str:
    """A value with three significant digits, thousands separated."""
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _colours(groups: Sequence[Group]) -> dict[str, str]:
    out: dict[str, str] = {}
    for _, bars in groups:
        for label, _s in bars:
            out.setdefault(label, PALETTE[len(out) % len(PALETTE)])
    return out


def _text(x: float, y: float, s: str, **attrs: str) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in attrs.items())
    return f'<text x="{x:.1f}" y="{y:.1f}"{extra}>{escape(s)}</text>'


def bar_chart(
    title: str,
    unit: str,
    groups: Sequence[Group],
    reference: float | None = None,
    subtitle: str = "",
) -> str:
    """The SVG document of the chart.  ``unit`` follows each number ("MiB/s", "x")."""
    scale_max = max(
        [s.hi for _, bars in groups for _, s in bars if s is not None] + [reference or 0.0]
    )
    # one wild sample must not squash every bar: the axis ends at 1.5x the largest
    # median (or the reference); a whisker beyond it ends in an arrow
    medians = [s.median for _, bars in groups for _, s in bars if s is not None]
    scale_max = min(scale_max, max([1.5 * m for m in medians] + [reference or 0.0]))
    scale_max = scale_max if scale_max > 0 else 1.0
    plot_w = WIDTH - LABEL_W - VALUE_W - 10

    def x_of(v: float) -> float:
        return LABEL_W + min(max(0.0, v), scale_max) / scale_max * plot_w

    colours = _colours(groups)
    top = 34 + (16 if subtitle else 0)
    parts: list[str] = []
    y = float(top)
    for name, bars in groups:
        parts.append(_text(8, y + 14, name, font_weight="bold"))
        y += HEAD_H
        for label, s in bars:
            mid = y + BAR_H / 2
            parts.append(_text(LABEL_W - 6, mid + 4, label, text_anchor="end"))
            if s is None:
                parts.append(_text(LABEL_W + 4, mid + 4, "not measured", fill="#888"))
            else:
                x0, xm, xl, xh = LABEL_W, x_of(s.median), x_of(s.lo), x_of(s.hi)
                parts.append(
                    f'<rect x="{x0}" y="{y:.1f}" width="{max(xm - x0, 0.5):.1f}" '
                    f'height="{BAR_H}" fill="{colours[label]}"><title>'
                    f"{escape(label)}: median {fmt(s.median)} {escape(unit)}, range "
                    f"{fmt(s.lo)}-{fmt(s.hi)}, {s.n} samples</title></rect>"
                )
                if s.hi <= scale_max:
                    end = f"M{xh:.1f},{mid - 5:.1f}V{mid + 5:.1f}"
                else:  # past the axis: an arrow head
                    end = (
                        f"M{xh - 6:.1f},{mid - 4:.1f}L{xh:.1f},{mid:.1f}L{xh - 6:.1f},{mid + 4:.1f}"
                    )
                parts.append(
                    f'<path d="M{xl:.1f},{mid:.1f}H{xh:.1f}M{xl:.1f},{mid - 5:.1f}V{mid + 5:.1f}'
                    f'{end}" stroke="#222" stroke-width="1.2" fill="none"/>'
                )
                parts.append(_text(max(xm, xh) + 6, mid + 4, f"{fmt(s.median)} {unit}".rstrip()))
            y += BAR_H + GAP
        y += GROUP_GAP
    height = int(y + 10)
    head = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        _text(8, 20, title, font_size="15", font_weight="bold"),
    ]
    if subtitle:
        head.append(_text(8, 38, subtitle, fill="#555"))
    if reference is not None:
        xr = x_of(reference)
        head.append(
            f'<line x1="{xr:.1f}" y1="{top - 4}" x2="{xr:.1f}" y2="{height - 8}" '
            'stroke="#999" stroke-dasharray="4 3"/>'
        )
    return "\n".join([*head, *parts, "</svg>"]) + "\n"
