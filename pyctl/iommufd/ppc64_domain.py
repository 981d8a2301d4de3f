"""A PPC64 paging domain: a list of DMA windows whose TCEs mirror the IOAS.

The review of the ppc64 iommufd RFC (reference 001) asked for a paging
domain that holds a list of apertures; here it is the domain's windows.
:class:`Ppc64Tables` is the domain's page table: the TCEs of each window,
kept by the model (as the kernel keeps a domain's ``iommu_table`` whether or
not it is set on the PE), and, while the domain is *live* on its PE, written
to the PE's tables with bulk ``put_tces`` calls.  It is the
:class:`~pyctl.iommufd.backend.DomainMapper` of its HWPT: the IOAS maps and
unmaps through it (io_pagetable.py routes them here).

A map must lie in one window and be aligned to that window's page size
(EINVAL otherwise, nothing written); a failed write is undone, so every
call is all or nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from .backend import MapEntry
from .errors import BackendError, IommufdError
from .objects import HwptPaging
from .pages import hw_errors
from .ppc64 import Ppc64HwInfo
from .ppc64_hw import TCE_READ, TCE_WRITE, PeWindow, TceBackend
from .ranges import Range


@dataclass
class DomWindow:
    """One window of a domain: its place, page size, levels, and its TCE runs."""

    start: int
    size: int
    page_shift: int
    levels: int
    #: first index -> (count, first TCE); TCE k of a run = first + (k << page_shift)
    runs: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: the PE's table (slot) holding it while the domain is live
    slot: int | None = None

    @property
    def last(self) -> int:
        return self.start + self.size - 1

    @property
    def entries(self) -> int:
        return self.size >> self.page_shift

    def tces(self) -> Iterator[tuple[int, int]]:
        """(index, TCE) of every valid entry, in index order."""
        for s in sorted(self.runs):
            n, first = self.runs[s]
            step = 1 << self.page_shift
            for k in range(n):
                yield s + k, first + k * step

    def used(self) -> int:
        return sum(n for n, _ in self.runs.values())


def _perm(m: MapEntry) -> int:
    return (TCE_READ if m.read else 0) | (TCE_WRITE if m.write else 0)


class Ppc64Tables:
    """The TCE tables of one PPC64 paging domain, on one PE."""

    def __init__(self, hw: TceBackend, info: Ppc64HwInfo) -> None:
        self.hw = hw
        self.info = info
        self.pe = info.pe
        self.windows: list[DomWindow] = []
        #: the domain's windows are the PE's (set_window done)
        self.live = False

    def apertures(self) -> list[Range]:
        return sorted((w.start, w.last) for w in self.windows)

    def window_at(self, iova: int, last: int) -> DomWindow | None:
        for w in self.windows:
            if w.start <= iova and last <= w.last:
                return w
        return None

    # ------------------------------------------------------------ hardware writes
    def _chunk(self) -> int:
        return self.info.put_tces_max or 1 << 16

    def _put(self, w: DomWindow, start: int, tces: list[int]) -> None:
        assert w.slot is not None
        step = self._chunk()
        for i in range(0, len(tces), step):
            self.hw.put_tces(self.pe, w.slot, start + i, tces[i : i + step])

    def _write_runs(self, todo: list[tuple[DomWindow, int, int, int]]) -> None:
        """Write (window, index, count, first TCE or 0 to clear) to the PE; undo on failure."""
        if not self.live:
            return
        done: list[tuple[DomWindow, int, int, int]] = []
        try:
            for w, s, n, first in todo:
                done.append((w, s, n, first))  # a run may fail half written
                step = 1 << w.page_shift if first else 0
                with hw_errors():
                    self._put(w, s, [first + k * step for k in range(n)] if first else [0] * n)
        except IommufdError:
            for w, s, n, first in done:  # back to what the shadow still holds
                if first:
                    self._put(w, s, [0] * n)
                else:
                    self._restore(w, s, n)
            raise

    def _restore(self, w: DomWindow, s: int, n: int) -> None:
        for rs, (rn, first) in self._runs_in(w, s, s + n - 1):
            self._put(w, rs, [first + k * (1 << w.page_shift) for k in range(rn)])

    @staticmethod
    def _runs_in(w: DomWindow, s: int, last: int) -> list[tuple[int, tuple[int, int]]]:
        return [(k, v) for k, v in sorted(w.runs.items()) if k <= last and k + v[0] - 1 >= s]

    # ------------------------------------------------------------ DomainMapper
    def map(self, domain: int, mappings: list[MapEntry]) -> None:
        """Write the TCEs of ``mappings`` (checked first: window, page alignment)."""
        todo: list[tuple[DomWindow, int, int, int]] = []
        for m in mappings:
            w = self.window_at(m.iova, m.iova + m.size - 1)
            if w is None:
                raise IommufdError("EINVAL", f"iova {m.iova:#x}+{m.size:#x} is in no DMA window")
            mask = (1 << w.page_shift) - 1
            for name, v in (("iova", m.iova), ("length", m.size), ("phys", m.addr)):
                if v & mask:
                    raise IommufdError(
                        "EINVAL",
                        f"{name} {v:#x} not aligned to the window's {1 << w.page_shift:#x} pages",
                    )
            todo.append((w, (m.iova - w.start) >> w.page_shift, m.size >> w.page_shift,
                         m.addr | _perm(m)))  # fmt: skip
        self._write_runs(todo)
        for w, s, n, first in todo:
            w.runs[s] = (n, first)

    def unmap(self, domain: int, ranges: list[tuple[int, int]]) -> int:
        """Clear the TCEs of ``ranges`` (iova, size); returns the bytes that were mapped."""
        todo: list[tuple[DomWindow, int, int, int]] = []
        cut: list[tuple[DomWindow, int, int]] = []
        total = 0
        for iova, size in ranges:
            for w in self.windows:
                lo, hi = max(iova, w.start), min(iova + size - 1, w.last)
                if lo > hi:
                    continue
                s = (lo - w.start) >> w.page_shift
                e = (hi - w.start) >> w.page_shift
                hit = self._runs_in(w, s, e)
                if hit:
                    todo.append((w, s, e - s + 1, 0))
                    cut.append((w, s, e))
                    for rs, (rn, _) in hit:
                        total += (min(rs + rn - 1, e) - max(rs, s) + 1) << w.page_shift
        self._write_runs(todo)
        for w, s, e in cut:
            for rs, (rn, first) in self._runs_in(w, s, e):
                del w.runs[rs]
                step = 1 << w.page_shift
                if rs < s:
                    w.runs[rs] = (s - rs, first)
                if rs + rn - 1 > e:
                    w.runs[e + 1] = (rs + rn - 1 - e, first + (e + 1 - rs) * step)
        return total

    # ------------------------------------------------------------ set_window / unset_window
    def create_live(self, w: DomWindow) -> None:
        """Enable one window on the PE and write its TCEs (removed again on failure)."""
        with hw_errors():
            pw = self.hw.pe_create_window(self.pe, w.page_shift, w.size, w.start)
        w.slot = pw.slot
        try:
            for s, (n, first) in sorted(w.runs.items()):
                with hw_errors():
                    self._put(w, s, [first + k * (1 << w.page_shift) for k in range(n)])
        except IommufdError:
            self.remove_live(w)
            raise

    def remove_live(self, w: DomWindow) -> None:
        if w.slot is not None:
            with hw_errors():
                self.hw.pe_remove_window(self.pe, w.slot)
            w.slot = None

    def program(self) -> None:
        """Set every window on the PE (the PE's other host windows were removed)."""
        done: list[DomWindow] = []
        try:
            for w in self.windows:
                self.create_live(w)
                done.append(w)
        except IommufdError:
            for w in done:
                self.remove_live(w)
            raise
        self.live = True

    def unprogram(self) -> None:
        for w in self.windows:
            self.remove_live(w)
        self.live = False

    def check(self) -> list[str]:
        """Differences between the TCEs this domain holds and the PE's (live only)."""
        if not self.live:
            return []
        problems: list[str] = []
        try:
            have = {w.slot: w for w in self.hw.pe_windows(self.pe)}
            for w in self.windows:
                pw: PeWindow | None = have.get(w.slot) if w.slot is not None else None
                if pw is None or (pw.start, pw.size, pw.page_shift) != (
                    w.start, w.size, w.page_shift):  # fmt: skip
                    problems.append(f"window {w.start:#x} not on PE {self.pe}: {pw}")
                    continue
                want = dict(w.tces())
                got = self.hw.read_pe_tces(self.pe, pw.slot, 0, pw.entries)
                for i, t in enumerate(got):
                    if t != want.get(i, 0):
                        problems.append(
                            f"window {w.start:#x} TCE {i}: PE {t:#x}, model {want.get(i, 0):#x}"
                        )
                        break
        except BackendError as e:
            problems.append(f"PE {self.pe}: {e}")
        return problems


@dataclass(eq=False)
class HwptPpc64(HwptPaging):
    """A HWPT_PAGING of a PE: its windows (apertures) and TCEs."""

    pe: int = -1
    tables: Ppc64Tables | None = None

    @property
    def t(self) -> Ppc64Tables:
        assert self.tables is not None
        return self.tables


__all__ = ["DomWindow", "HwptPpc64", "Ppc64Tables"]
