"""The IOVA areas of one IOAS, ordered by IOVA: O(log n) lookup, insert and remove."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sortedcontainers import SortedDict


@dataclass(frozen=True, slots=True)
class Area:
    """One MAP (or one piece of a COPY): ``length`` bytes at ``iova`` -> ``phys``.

    ``phys`` is the "user memory" side, here guest-physical memory.
    ``pages_writable`` is whether the pinned pages may be written (the kernel's
    ``iopt_pages.writable``); a COPY asking for WRITEABLE from read-only pages
    gets EPERM.
    """

    iova: int
    length: int
    phys: int
    read: bool
    write: bool
    pages_writable: bool
    #: identity of the kernel's ``iopt_pages`` behind the area: a new one per MAP,
    #: shared by the areas a COPY makes from it (used by per-``iopt_pages`` accounting)
    pages: int = 0

    @property
    def last(self) -> int:
        return self.iova + self.length - 1


class AreaTree:
    """Non-overlapping areas keyed by start IOVA."""

    def __init__(self) -> None:
        self._d = SortedDict()

    def __len__(self) -> int:
        return len(self._d)

    def __iter__(self) -> Iterator[Area]:
        return iter(self._d.values())

    def add(self, area: Area) -> None:
        self._d[area.iova] = area

    def remove(self, iova: int) -> Area:
        area: Area = self._d.pop(iova)
        return area

    def find(self, iova: int) -> Area | None:
        """The area containing ``iova``."""
        i = self._d.bisect_right(iova) - 1
        if i < 0:
            return None
        area: Area = self._d.peekitem(i)[1]
        return area if area.last >= iova else None

    def overlapping(self, start: int, last: int) -> Iterator[Area]:
        """Areas intersecting [start, last], in IOVA order."""
        first = self.find(start)
        if first is not None:
            yield first
        for key in self._d.irange(start, last, inclusive=(first is None, True)):
            yield self._d[key]

    def first_overlapping(self, start: int, last: int) -> Area | None:
        return next(self.overlapping(start, last), None)
