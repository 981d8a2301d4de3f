"""pyctl.bench.svg: the bar charts are valid SVG whose bars and whiskers sit where the
numbers say."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from pyctl.bench.stats import Summary
from pyctl.bench.svg import LABEL_W, bar_chart, fmt

NS = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def test_bars_are_proportional_to_medians_and_whiskers_span_min_max() -> None:
    groups = [
        ("read", [("none", Summary(100.0, 90.0, 110.0, 3)), ("lab", Summary(50.0, 40.0, 55.0, 3))]),
        ("write", [("none", Summary(20.0, 20.0, 20.0, 3)), ("lab <&>", None)]),
    ]
    root = parse(bar_chart("Title & more", "MiB/s", groups, subtitle="median"))
    rects = [r for r in root.iter(f"{NS}rect") if r.find(f"{NS}title") is not None]
    widths = [float(r.attrib["width"]) for r in rects]
    assert len(rects) == 3  # the missing value has no bar
    # scale: the largest whisker end (110) spans the plot
    assert widths[0] / widths[1] == pytest.approx(2.0, rel=1e-3)
    assert widths[0] / widths[2] == pytest.approx(5.0, rel=1e-3)
    assert all(float(r.attrib["x"]) == LABEL_W for r in rects)
    # one whisker per bar, from x(min) to x(max)
    paths = [p.attrib["d"] for p in root.iter(f"{NS}path")]
    assert len(paths) == 3
    m = re.match(r"M([\d.]+),[\d.]+H([\d.]+)", paths[0])
    assert m is not None
    lo, hi = float(m.group(1)), float(m.group(2))
    assert (hi - LABEL_W) / (lo - LABEL_W) == pytest.approx(110.0 / 90.0, rel=1e-3)
    texts = [t.text for t in root.iter(f"{NS}text")]
    assert "Title & more" in texts and "lab <&>" in texts and "not measured" in texts
    assert "100 MiB/s" in texts and "50.0 MiB/s" in texts
    # a configuration keeps its colour from group to group
    assert rects[0].attrib["fill"] == rects[2].attrib["fill"] != rects[1].attrib["fill"]


def test_reference_line_at_one_on_a_ratio_chart() -> None:
    svg = bar_chart("ratios", "x", [("g", [("a", Summary(0.5, 0.4, 0.6, 2))])], reference=1.0)
    root = parse(svg)
    (line,) = list(root.iter(f"{NS}line"))
    (bar,) = [r for r in root.iter(f"{NS}rect") if r.find(f"{NS}title") is not None]
    # the reference (1.0) is the scale's end: twice the 0.5 bar
    assert float(line.attrib["x1"]) - LABEL_W == pytest.approx(2 * float(bar.attrib["width"]))


def test_empty_and_all_missing_charts_are_still_valid() -> None:
    parse(bar_chart("nothing", "x", []))
    parse(bar_chart("none measured", "x", [("g", [("a", None)])]))


def test_numbers_keep_three_significant_digits() -> None:
    assert [fmt(v) for v in (0, 1234.5, 56.78, 1.234, 0.5)] == [
        "0", "1,234", "56.8", "1.23", "0.50",
    ]  # fmt: skip


def test_one_wild_sample_is_clipped_with_an_arrow_not_squashing_the_chart() -> None:
    wild = Summary(1.0, 0.9, 40.0, 3)
    root = parse(bar_chart("r", "x", [("g", [("a", wild), ("b", Summary(2.0, 1.8, 2.2, 3))])]))
    bars = [r for r in root.iter(f"{NS}rect") if r.find(f"{NS}title") is not None]
    # the axis ends at 1.5 x the largest median (3.0): b's bar is two thirds of it
    widths = [float(b.attrib["width"]) for b in bars]
    assert widths[1] / widths[0] == pytest.approx(2.0, rel=1e-3)
    a_path, b_path = (p.attrib["d"] for p in root.iter(f"{NS}path"))
    assert "L" in a_path and "L" not in b_path  # only the clipped whisker has an arrow head
    # the range is still in the tooltip
    assert "range 0.90-40.0" in (bars[0].find(f"{NS}title").text or "")
