"""Small helpers on inclusive ranges (start, last) of u64 addresses."""

from __future__ import annotations

from collections.abc import Iterable

Range = tuple[int, int]


def normalize(ranges: Iterable[Range]) -> list[Range]:
    """Sorted, merged (touching ranges joined)."""
    out: list[Range] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1] + 1:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def subtract(base: Iterable[Range], holes: Iterable[Range]) -> list[Range]:
    """``base`` minus ``holes``, both any lists of inclusive ranges."""
    result = normalize(base)
    for hs, he in normalize(holes):
        nxt: list[Range] = []
        for s, e in result:
            if he < s or hs > e:
                nxt.append((s, e))
                continue
            if s < hs:
                nxt.append((s, hs - 1))
            if e > he:
                nxt.append((he + 1, e))
        result = nxt
    return result


def intersect(a: Iterable[Range], b: Iterable[Range]) -> list[Range]:
    out: list[Range] = []
    for s1, e1 in normalize(a):
        for s2, e2 in normalize(b):
            s, e = max(s1, s2), min(e1, e2)
            if s <= e:
                out.append((s, e))
    return normalize(out)


def overlaps(a: Range, b: Range) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def complement(ranges: Iterable[Range], lo: int = 0, hi: int = (1 << 64) - 1) -> list[Range]:
    return subtract([(lo, hi)], ranges)
