"""Pinned-page accounting: each guest-physical page is pinned (and counted) once.

A page referenced by several areas, several domains or several IOAS of the
same account holds one pin count per reference but is charged once against
the limit.  The counter is a step function over page frame numbers kept in
a sorted map (pfn -> count from here to the next key), so charging a range
costs O(log n + pieces touched) whatever its length.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Protocol

from sortedcontainers import SortedDict

from .errors import IommufdError
from .uapi import PAGE_SHIFT, PAGE_SIZE

#: RLIMIT_MEMLOCK-style accounting modes (IOMMU_OPTION_RLIMIT_MODE values)
ACCOUNT_USER = 0
ACCOUNT_MM = 1


def pfn_range(phys: int, length: int) -> tuple[int, int]:
    """First and last page frame touched by ``length`` bytes at ``phys``."""
    return phys >> PAGE_SHIFT, (phys + length - 1) >> PAGE_SHIFT


class PinAccount:
    """One accounting principal (a user, or one process's mm) with a page limit."""

    def __init__(self, limit_pages: int | None = None, name: str = "user") -> None:
        self.name = name
        self.limit_pages = limit_pages
        self.pinned_pages = 0
        self._steps = SortedDict({0: 0})

    @property
    def pinned_bytes(self) -> int:
        return self.pinned_pages * PAGE_SIZE

    def _split(self, pfn: int) -> None:
        if pfn in self._steps:
            return
        i = self._steps.bisect_right(pfn) - 1
        self._steps[pfn] = self._steps.peekitem(i)[1]

    def _apply(self, first: int, last: int, delta: int) -> None:
        self._split(first)
        self._split(last + 1)
        keys = list(self._steps.irange(first, last))
        for i, k in enumerate(keys):
            end = keys[i + 1] if i + 1 < len(keys) else last + 1
            old = self._steps[k]
            new = old + delta
            if new < 0:
                raise AssertionError("pin count below zero")
            if old == 0 and new > 0:
                self.pinned_pages += end - k
            elif old > 0 and new == 0:
                self.pinned_pages -= end - k
            self._steps[k] = new
        # merge equal neighbours at the edges and inside
        for k in [*keys, last + 1]:
            if k == 0 or k not in self._steps:
                continue
            i = self._steps.index(k)
            if self._steps.peekitem(i - 1)[1] == self._steps[k]:
                del self._steps[k]

    def count(self, pfn: int) -> int:
        i = self._steps.bisect_right(pfn) - 1
        value: int = self._steps.peekitem(i)[1]
        return value

    def _apply_many(self, ranges: list[tuple[int, int]], delta: int) -> None:
        """Apply ``delta`` to many ranges in one merge pass over the step function."""
        if len(ranges) * 16 < len(self._steps):
            for first, last in ranges:
                self._apply(first, last, delta)
            return
        events: dict[int, int] = {}
        for first, last in ranges:
            events[first] = events.get(first, 0) + delta
            events[last + 1] = events.get(last + 1, 0) - delta
        ev_keys = sorted(events)
        old = list(self._steps.items())
        out: list[tuple[int, int]] = []
        i = j = 0
        cur_old = 0
        cur_delta = 0
        while i < len(old) or j < len(ev_keys):
            k_old = old[i][0] if i < len(old) else None
            k_ev = ev_keys[j] if j < len(ev_keys) else None
            if k_ev is None or (k_old is not None and k_old <= k_ev):
                k = k_old
                assert k is not None
                cur_old = old[i][1]
                i += 1
                if k_ev == k:
                    cur_delta += events[k]
                    j += 1
            else:
                k = k_ev
                cur_delta += events[k]
                j += 1
            value = cur_old + cur_delta
            if value < 0:
                raise AssertionError("pin count below zero")
            if out and out[-1][0] == k:
                out[-1] = (k, value)
            elif not out or out[-1][1] != value:
                out.append((k, value))
        pinned = 0
        for n, (k, v) in enumerate(out):
            if v > 0:
                end = out[n + 1][0] if n + 1 < len(out) else None
                if end is None:
                    raise AssertionError("pin count does not return to zero")
                pinned += end - k
        self._steps = SortedDict(out)
        self.pinned_pages = pinned

    def pin(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Add one pin to every page of the (first, last) pfn ranges; ENOMEM over the limit.

        All or nothing: on ENOMEM no count changed.
        """
        todo = list(ranges)
        self._apply_many(todo, +1)
        if self.limit_pages is not None and self.pinned_pages > self.limit_pages:
            wanted = self.pinned_pages
            self._apply_many(todo, -1)
            raise IommufdError(
                "ENOMEM",
                f"pinning would need {wanted} pages, over the {self.name} limit of "
                f"{self.limit_pages} pages",
            )

    def unpin(self, ranges: Iterable[tuple[int, int]]) -> None:
        self._apply_many(list(ranges), -1)


class _Mapped(Protocol):
    @property
    def phys(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def pages(self) -> int: ...


#: frames of different contexts (VMs), or of different iopt_pages, are different memory:
#: each gets its own 2^52-frame slice of an account
_SLICE_SHIFT = 52
_SLICES = itertools.count(1)


def new_slice() -> int:
    """A fresh slice of frame numbers (a context's memory, or one ``iopt_pages``)."""
    return next(_SLICES)


class Pins:
    """The pinning of one context: which account is charged, and per what unit.

    ``per_guest_page`` (the model's default) charges a guest-physical page once
    however many MAPs, areas, domains or IOAS of the context reference it.  The
    kernel charges per ``iopt_pages`` (``iopt_pages_fill``/``incr_user_locked_vm``
    on ``pages->npinned``): two MAPs of the same memory are two charges, a COPY
    shares its source's; ``per_guest_page=False`` does that.
    """

    def __init__(
        self, user_account: PinAccount, mm_account: PinAccount, per_guest_page: bool = True
    ) -> None:
        self.user_account = user_account
        self.mm_account = mm_account
        self.mode = ACCOUNT_USER
        self.per_guest_page = per_guest_page
        self.space = new_slice()

    @property
    def account(self) -> PinAccount:
        return self.mm_account if self.mode == ACCOUNT_MM else self.user_account

    def pfns(self, areas: Iterable[_Mapped]) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for a in areas:
            base = (self.space if self.per_guest_page else a.pages) << _SLICE_SHIFT
            first, last = pfn_range(a.phys, a.length)
            out.append((first + base, last + base))
        return out

    def pin(self, areas: Iterable[_Mapped]) -> None:
        """All or nothing; ENOMEM over the account's limit."""
        self.account.pin(self.pfns(areas))

    def unpin(self, areas: Iterable[_Mapped]) -> None:
        self.account.unpin(self.pfns(areas))
