"""The IOVA allocator: free holes indexed by address and by power-of-two size class.

It reproduces the kernel's ``iopt_alloc_iova()`` choice (the lowest free
IOVA, aligned to ``roundup_pow_of_two(length)`` or to the lowest set bit of
the user address if smaller, capped at ``max_alignment`` (HPAGE_SIZE with
transparent huge pages, else PAGE_SIZE), OR-ed with the in-page offset, never
0, never starting on the last byte of a hole) without
walking every hole: holes live in a sorted map (start -> last) and in one
sorted list per size class ``floor(log2(size))``.  A class whose smallest
member is large enough for any alignment contributes just its lowest hole
(O(log n)); only the one or two classes at the boundary are scanned, in
address order, and the scan stops at the best candidate found so far.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator

from sortedcontainers import SortedDict, SortedList

from .ranges import Range, intersect, normalize
from .uapi import PAGE_SIZE

_CLASSES = 65


def roundup_pow_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()


def lowest_bit(n: int) -> int:
    return n & -n


#: HPAGE_SIZE of x86-64 (and of ppc64 radix): iopt_alloc_iova's cap with THP
HPAGE_SIZE = 2 << 20


def alloc_alignment(length: int, uptr: int, max_alignment: int | None = None) -> int:
    """The alignment the kernel wants for an allocated IOVA of ``length`` bytes.

    ``iopt_alloc_iova()``: roundup_pow_of_two(length), or the lowest set bit of
    the address if smaller, then at most ``max_alignment`` (the kernel's
    ``max_alignment``: HPAGE_SIZE with CONFIG_TRANSPARENT_HUGEPAGE, else
    PAGE_SIZE; None = no cap).
    """
    align = roundup_pow_of_two(length)
    if uptr:
        align = min(align, lowest_bit(uptr))
    if max_alignment is not None and align >= max_alignment:
        align = max_alignment
    return align


def _align_up(x: int, a: int) -> int:
    return (x + a - 1) & ~(a - 1)


def hole_fit(start: int, last: int, length: int, align: int, page_offset: int) -> int | None:
    """Where the kernel would place ``length`` bytes in hole [start, last], or None."""
    if last - start < length - 1:
        return None
    pos = _align_up(start, align) | page_offset
    # __alloc_iova_check_range(): an aligned start on the hole's last byte is refused
    if pos >= last or last - pos < length - 1:
        return None
    return pos


class HoleSet:
    """Free IOVA: the allocatable base ranges minus the used ones."""

    def __init__(self, base: Iterable[Range] = ()) -> None:
        self._holes = SortedDict()
        self._by_class: list[SortedList] = [SortedList() for _ in range(_CLASSES)]
        self._base: list[Range] = normalize(base)
        for s, e in self._base:
            self._insert(s, e)

    # -- bookkeeping -------------------------------------------------------
    @staticmethod
    def _cls(start: int, last: int) -> int:
        return int((last - start + 1).bit_length() - 1)

    def _insert(self, s: int, e: int) -> None:
        self._holes[s] = e
        self._by_class[self._cls(s, e)].add(s)

    def _delete(self, s: int) -> int:
        e: int = self._holes.pop(s)
        self._by_class[self._cls(s, e)].remove(s)
        return e

    def __len__(self) -> int:
        return len(self._holes)

    def holes(self) -> Iterator[Range]:
        return iter(self._holes.items())

    @property
    def base(self) -> list[Range]:
        return list(self._base)

    # -- updates -------------------------------------------------------------
    def take(self, start: int, last: int) -> None:
        """Mark [start, last] used (parts of it that are not free are ignored)."""
        i = self._holes.bisect_right(start) - 1
        keys: list[int] = []
        if i >= 0:
            s0 = self._holes.peekitem(i)[0]
            if self._holes[s0] >= start:
                keys.append(s0)
        keys.extend(k for k in self._holes.irange(start, last) if not keys or k != keys[0])
        for s in keys:
            e = self._delete(s)
            if s < start:
                self._insert(s, start - 1)
            if e > last:
                self._insert(last + 1, e)

    def give(self, start: int, last: int) -> None:
        """Mark [start, last] free again (clipped to the base ranges, merged with neighbours)."""
        j = bisect.bisect_right(self._base, (start, 1 << 65)) - 1
        if j >= 0 and self._base[j][0] <= start and last <= self._base[j][1]:
            pieces = [(start, last)]
        else:
            pieces = intersect([(start, last)], self._base)
        for s, e in pieces:
            lo = s - 1 if s > 0 else 0
            keys: list[int] = []
            i = self._holes.bisect_right(lo) - 1
            if i >= 0:
                ps = self._holes.peekitem(i)[0]
                if self._holes[ps] + 1 >= s:
                    keys.append(ps)
            keys.extend(k for k in self._holes.irange(s, e + 1) if not keys or k != keys[0])
            for k in keys:
                ke = self._delete(k)
                s, e = min(s, k), max(e, ke)
            self._insert(s, e)

    # -- allocation ------------------------------------------------------------
    def find(
        self, length: int, align: int, page_offset: int = 0, spans: list[Range] | None = None
    ) -> int | None:
        """Lowest IOVA where ``length`` bytes fit with the kernel's alignment rule.

        ``spans``: the allowed spans (sorted, disjoint) the holes lie in.  The kernel
        first moves each span's start to ``ALIGN_UP(start) | page_offset``
        (``__alloc_iova_check_used()`` on the allowed span) and only then looks at
        the holes from there, so a hole at the head of a span starts no lower.
        """
        if length <= 0:
            return None
        fit = self._fitter(length, align, page_offset, spans)
        need = length + align - 1 + page_offset
        if length == 1:
            need += 1  # hole_fit never starts on a hole's last byte
        best: int | None = None
        first_cls = max(0, length.bit_length() - 1 - 1)
        for k in range(first_cls, _CLASSES):
            bucket = self._by_class[k]
            if not bucket:
                continue
            if (1 << k) >= need:
                s = bucket[0]
                if best is None or s < best:
                    pos = fit(s, self._holes[s])
                    if pos is not None:
                        best = pos if best is None else min(best, pos)
                continue
            if (1 << (k + 1)) - 1 < length:
                continue
            for s in bucket:
                if best is not None and s >= best:
                    break
                pos = fit(s, self._holes[s])
                if pos is not None:
                    best = pos
                    break
        return best

    @staticmethod
    def _fitter(
        length: int, align: int, page_offset: int, spans: list[Range] | None
    ) -> Callable[[int, int], int | None]:
        if not spans:
            return lambda s, e: hole_fit(s, e, length, align, page_offset)
        starts = [sp[0] for sp in spans]

        def fit(s: int, e: int) -> int | None:
            i = bisect.bisect_right(starts, s) - 1
            if i < 0:
                return hole_fit(s, e, length, align, page_offset)
            span_start, span_last = spans[i]
            head = hole_fit(span_start, span_last, length, align, page_offset)
            if head is None:  # the span itself cannot take it
                return None
            if s < head:
                s = head
                if s > e:
                    return None
            return hole_fit(s, e, length, align, page_offset)

        return fit


def allocatable_base(
    allowed: list[Range], reserved: list[Range], page_size: int = PAGE_SIZE
) -> list[Range]:
    """Where the allocator may place IOVA: allowed (or all) minus reserved, never page 0."""
    from .ranges import subtract

    lo, hi = page_size, (1 << 64) - 1 - page_size
    base = intersect(allowed, [(lo, hi)]) if allowed else [(lo, hi)]
    return subtract(base, reserved)
