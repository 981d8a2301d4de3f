"""The IOVA-space picture: valid SVG, every range drawn where it belongs."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from pyctl.iovamap import COLORS, Band, Row, coalesce, render_svg

NS = "{http://www.w3.org/2000/svg}"


def bands_of(svg: str) -> list[dict[str, str]]:
    root = ET.fromstring(svg)
    return [r.attrib for r in root.iter(f"{NS}rect") if r.get("class") == "band"]


def test_spapr_layout_draws_both_windows_in_order() -> None:
    rows = [
        Row(
            "windows",
            [Band(0, (1 << 30) - 1, "32-bit"), Band(1 << 59, (1 << 59) + (1 << 40) - 1, "DDW")],
            COLORS["windows"],
        ),
        Row(
            "mappings",
            [Band(0x1000, 0x1FFF), Band(1 << 59, (1 << 59) + 0xFFFFFF)],
            COLORS["mappings"],
        ),
    ]
    bands = bands_of(render_svg("pseries PHB 0", rows))
    windows = [b for b in bands if b["data-row"] == "windows"]
    assert [b["data-start"] for b in windows] == ["0x0", hex(1 << 59)]
    x0, x1 = (float(b["x"]) for b in windows)
    assert x0 < x1
    # the tiny 4 KiB mapping is still visible (log axis), not a zero-width band
    small = next(b for b in bands if b["data-start"] == "0x1000")
    assert float(small["width"]) >= 1.0


def test_coalesce_merges_touching_and_caps_count() -> None:
    touching = [Band(i * 0x1000, i * 0x1000 + 0xFFF) for i in range(10)]
    assert coalesce(touching, 5) == [Band(0, 0x9FFF, "", 10)]
    spread = [Band(i * 0x10000, i * 0x10000 + 0xFFF) for i in range(1000)]
    out = coalesce(spread, 16)
    assert len(out) == 16
    assert sum(b.count for b in out) == 1000
    assert out[0].start == 0 and out[-1].last == 999 * 0x10000 + 0xFFF


def test_coalesce_closes_smallest_gaps_first() -> None:
    bands = [Band(0, 0xF), Band(0x20, 0x2F), Band(0x100000, 0x10000F)]
    assert coalesce(bands, 2) == [Band(0, 0x2F, "", 2), Band(0x100000, 0x10000F)]


def test_million_mappings_render_small() -> None:
    many = [Band(i << 13, (i << 13) + 0xFFF) for i in range(1_000_000)]
    svg = render_svg("big", [Row("mappings", many, COLORS["mappings"])], max_bands=64)
    drawn = bands_of(svg)
    assert len(drawn) == 64
    assert sum(int(b["data-count"]) for b in drawn) == 1_000_000
    assert len(svg) < 100_000


def test_bad_ranges_are_rejected() -> None:
    with pytest.raises(ValueError):
        Band(0x2000, 0x1000)
    with pytest.raises(ValueError):
        Band(0, 1 << 64)
    with pytest.raises(ValueError):
        coalesce([], 0)


def test_labels_and_titles_are_escaped() -> None:
    svg = render_svg("<PHB & co>", [Row("r<1>", [Band(0, 0xFFF, "a&b")], "#000")])
    ET.fromstring(svg)  # parses: nothing unescaped
    assert "&lt;PHB &amp; co&gt;" in svg
