"""Medians with their range, ratios of two of them, and the machine's load.

Every figure the benchmark reports is a :class:`Summary` of the samples of one
run (numpy does the arithmetic): the median, and the smallest and largest
sample, so a reader sees the spread next to the number.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Summary:
    median: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Summary | None:
        """The summary of the values that are there (None: a sample that was not
        measured); None when none is."""
        arr = np.array([v for v in values if v is not None], dtype=float)
        if arr.size == 0:
            return None
        return cls(float(np.median(arr)), float(arr.min()), float(arr.max()), int(arr.size))

    def spread(self) -> float:
        """(max - min) / median: 0.1 means the samples lie within 10% of the median."""
        return (self.hi - self.lo) / self.median if self.median else float("inf")

    def to_json(self) -> dict[str, float | int]:
        return {"median": self.median, "min": self.lo, "max": self.hi, "n": self.n}


def ratio(a: Summary | None, b: Summary | None) -> Summary | None:
    """a / b: the ratio of the medians, its range the widest the samples allow
    (a's smallest over b's largest to a's largest over b's smallest)."""
    if a is None or b is None or b.median <= 0 or b.lo <= 0:
        return None
    return Summary(a.median / b.median, a.lo / b.hi, a.hi / b.lo, min(a.n, b.n))


def rotated(items: Sequence[str], round_no: int) -> list[str]:
    """The order of round ``round_no``: each round starts one item later, so no
    configuration always runs first (or right after the same neighbour)."""
    if not items:
        return []
    k = round_no % len(items)
    return [*items[k:], *items[:k]]


def loadavg(path: Path = Path("/proc/loadavg")) -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages."""
    fields = path.read_text().split()
    if len(fields) < 3:
        raise ValueError(f"{path}: unexpected contents {fields!r}")
    return float(fields[0]), float(fields[1]), float(fields[2])
