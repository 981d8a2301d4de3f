"""pyctl.bench.stats: medians with ranges, ratios, round order, the load average."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyctl.bench.stats import Summary, loadavg, ratio, rotated


def test_summary_is_median_min_max_of_the_measured_samples() -> None:
    s = Summary.of([5.0, 1.0, None, 3.0, 100.0])
    assert s == Summary(median=4.0, lo=1.0, hi=100.0, n=4)
    assert Summary.of([None, None]) is None
    assert Summary.of([]) is None
    one = Summary.of([2.5])
    assert one == Summary(2.5, 2.5, 2.5, 1) and one.spread() == 0.0
    assert s is not None and s.spread() == pytest.approx(99 / 4)
    assert s.to_json() == {"median": 4.0, "min": 1.0, "max": 100.0, "n": 4}


def test_ratio_of_medians_with_the_widest_range() -> None:
    a = Summary(10.0, 8.0, 12.0, 3)
    b = Summary(5.0, 4.0, 6.0, 2)
    r = ratio(a, b)
    assert r is not None
    assert (r.median, r.lo, r.hi, r.n) == (2.0, 8.0 / 6.0, 3.0, 2)
    assert ratio(a, None) is None and ratio(None, b) is None
    assert ratio(a, Summary(0.0, 0.0, 1.0, 1)) is None  # no division by zero


def test_rounds_rotate_so_no_configuration_always_goes_first() -> None:
    names = ["a", "b", "c"]
    orders = [rotated(names, r) for r in range(4)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert all(sorted(o) == names for o in orders)
    assert rotated([], 5) == []


def test_loadavg_reads_the_three_averages(tmp_path: Path) -> None:
    f = tmp_path / "loadavg"
    f.write_text("7.87 5.47 3.02 8/163 3301\n")
    assert loadavg(f) == (7.87, 5.47, 3.02)
    f.write_text("1.0\n")
    with pytest.raises(ValueError, match="unexpected contents"):
        loadavg(f)
    real = loadavg()
    assert len(real) == 3 and all(x >= 0 for x in real)
