"""Filling domains with an area's pages, and emptying them (drivers/iommu/iommufd/pages.c).

``iopt_area_fill_domains`` / ``iopt_area_unfill_domains``: what a MAP or an
UNMAP does to every domain of the IOAS, all or nothing (a domain that
refuses undoes the ones already done).  A hardware refusal is EIO; the
model's own checks should have made it impossible.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from .areas import Area
from .backend import DomainMapper, MapEntry
from .errors import BackendError, IommufdError
from .pinning import new_slice


@contextmanager
def hw_errors() -> Iterator[None]:
    """A backend refusal becomes EIO (the backend changed nothing)."""
    try:
        yield
    except BackendError as e:
        raise IommufdError("EIO", f"hardware refused: {e}") from e


def entries(areas: Iterable[Area]) -> list[MapEntry]:
    return [MapEntry(a.iova, a.length, a.phys, a.read, a.write) for a in areas]


def new_pages() -> int:
    """Identity of a new ``iopt_pages`` (one per MAP; COPY shares its source's)."""
    return new_slice()


def fill_domains(hw: DomainMapper, domains: Sequence[int], ents: list[MapEntry]) -> None:
    """iopt_area_fill_domains(): map into every domain; undo the ones done if one fails."""
    done: list[int] = []
    try:
        for d in domains:
            with hw_errors():
                hw.map(d, ents)
            done.append(d)
    except IommufdError:
        ranges = [(e.iova, e.size) for e in ents]
        for d in done:
            hw.unmap(d, ranges)
        raise


def unfill_domains(hw: DomainMapper, domains: Sequence[int], areas: list[Area]) -> None:
    """iopt_area_unfill_domains(): unmap from every domain; remap the done ones on failure."""
    # touching areas go as one range (the range holds nothing but these areas)
    ranges: list[tuple[int, int]] = []
    for a in areas:
        if ranges and ranges[-1][0] + ranges[-1][1] == a.iova:
            ranges[-1] = (ranges[-1][0], ranges[-1][1] + a.length)
        else:
            ranges.append((a.iova, a.length))
    done: list[int] = []
    try:
        for d in domains:
            with hw_errors():
                hw.unmap(d, ranges)
            done.append(d)
    except IommufdError:
        ents = entries(areas)
        for d in done:
            hw.map(d, ents)
        raise
