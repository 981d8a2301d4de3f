"""The hardware side of PPC64 paging domains: a PE's windows and TCEs (``TceBackend``).

A PE (partitionable endpoint) is a PHB: its devices share its TCE tables
(one per LIOBN, ``slot`` 0..n-1).  The model programs a PE with host-side
windows, bulk TCE writes and the BLOCKED state, exactly the device commands
of docs/spapr.md (``x-iommulab-spapr-window-create/remove``,
``x-iommulab-spapr-put-tces``, ``x-iommulab-spapr-set-blocked``,
``x-iommulab-spapr-read-tces``).  Windows the guest created (``owner``
"guest") are read-only to the host side.

:class:`InMemoryPes` is the in-memory hardware of that interface (a part of
:class:`~pyctl.iommufd.memory_backend.InMemoryBackend`), checking every
command as the device does and changing nothing on a refusal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from .backend import Access, DeviceHwInfo, Translation
from .errors import BackendError

TCE_READ = 1 << 0
TCE_WRITE = 1 << 1
Owner = Literal["host", "guest"]


@dataclass(frozen=True, slots=True)
class PeWindow:
    """One enabled TCE table of a PE."""

    slot: int
    liobn: int
    start: int
    size: int
    page_shift: int
    owner: Owner = "host"

    @property
    def last(self) -> int:
        return self.start + self.size - 1

    @property
    def entries(self) -> int:
        return self.size >> self.page_shift


@runtime_checkable
class TceBackend(Protocol):
    """A PE's windows, TCEs and BLOCKED state (every call all or nothing)."""

    def pe_of(self, device: str) -> int: ...

    def claim_pe(self, pe: int) -> None: ...

    def pe_windows(self, pe: int) -> list[PeWindow]: ...

    def pe_create_window(self, pe: int, page_shift: int, size: int, offset: int) -> PeWindow: ...

    def pe_remove_window(self, pe: int, slot: int) -> None: ...

    def put_tces(self, pe: int, slot: int, start: int, tces: Sequence[int]) -> None: ...

    def read_pe_tces(self, pe: int, slot: int, start: int, count: int) -> list[int]: ...

    def set_blocked(self, pe: int, blocked: bool) -> None: ...

    def pe_blocked(self, pe: int) -> bool: ...


def tce_translate(
    windows: Sequence[PeWindow], get: dict[int, dict[int, int]], iova: int, access: Access
) -> Translation:
    """What the PHB does with a DMA: find the window, read the TCE, check permission."""
    for w in windows:
        if w.start <= iova <= w.last:
            idx = (iova - w.start) >> w.page_shift
            tce = get.get(w.slot, {}).get(idx, 0)
            bit = TCE_READ if access == "read" else TCE_WRITE
            if not tce & (TCE_READ | TCE_WRITE):
                return Translation(False, stage="tce", reason="not-present")
            if not tce & bit:
                return Translation(False, stage="tce", reason="permission")
            mask = (1 << w.page_shift) - 1
            return Translation(
                True,
                addr=(tce & ~mask) + (iova & mask),
                read=bool(tce & TCE_READ),
                write=bool(tce & TCE_WRITE),
            )
    return Translation(False, stage="tce", reason="no-window")


@dataclass
class _Pe:
    slots: int
    windows: dict[int, PeWindow] = field(default_factory=dict)
    tces: dict[int, dict[int, int]] = field(default_factory=dict)
    blocked: bool = False
    #: the host side programmed this PE: its windows and TCEs decide every DMA
    active: bool = False


class InMemoryPes:
    """In-memory PEs: TCE tables per slot, host/guest windows, BLOCKED."""

    #: host-side limits of the in-memory PHBs (what the hardware reports)
    put_tces_max = 1 << 20

    def _pes_init(self) -> None:
        self._pes: dict[int, _Pe] = {}
        self._pe_of: dict[str, int] = {}

    def _add_pe_device(self, info: DeviceHwInfo) -> None:
        pe = info.spapr
        assert pe is not None and pe.phb is not None
        self._pe_of[info.device] = pe.phb
        self._pes.setdefault(pe.phb, _Pe(pe.max_windows))

    def next_phb(self) -> int:
        return max(self._pes, default=-1) + 1

    def _pe(self, pe: int) -> _Pe:
        p = self._pes.get(pe) if isinstance(pe, int) else None
        if p is None:
            raise BackendError(f"'phb' {pe!r}: no such PHB")
        return p

    def _win(self, pe: int, slot: int) -> tuple[_Pe, PeWindow]:
        p = self._pe(pe)
        w = p.windows.get(slot)
        if w is None:
            raise BackendError(f"'liobn': window {slot} of PHB {pe} is not enabled")
        return p, w

    @staticmethod
    def liobn(pe: int, slot: int) -> int:
        return 0x80000000 | (pe << 8) | slot

    def pe_of(self, device: str) -> int:
        pe = self._pe_of.get(device)
        if pe is None:
            raise BackendError(f"device {device!r} is on no PHB")
        return pe

    def claim_pe(self, pe: int) -> None:
        """The host side of an in-memory PHB has one user: nothing to claim."""
        self._pe(pe)

    def pe_windows(self, pe: int) -> list[PeWindow]:
        return sorted(self._pe(pe).windows.values(), key=lambda w: w.slot)

    def _create(self, pe: int, page_shift: int, size: int, offset: int, owner: Owner) -> PeWindow:
        p = self._pe(pe)
        if not 12 <= page_shift <= 34:
            raise BackendError(f"'page-shift' {page_shift} not implemented")
        if size <= 0 or size & (size - 1) or size < (1 << page_shift):
            raise BackendError(f"'size' {size:#x} is not a power of two >= the page size")
        if offset % (1 << page_shift) or offset + size > 1 << 64:
            raise BackendError(f"'bus-offset' {offset:#x} invalid")
        free = [s for s in range(p.slots) if s not in p.windows]
        if not free:
            raise BackendError(f"PHB {pe}: all {p.slots} TCE tables in use")
        for w in p.windows.values():
            if offset <= w.last and w.start <= offset + size - 1:
                raise BackendError(f"'bus-offset' {offset:#x}: overlaps LIOBN {w.liobn:#x}")
        win = PeWindow(free[0], self.liobn(pe, free[0]), offset, size, page_shift, owner)
        p.windows[win.slot] = win
        p.tces[win.slot] = {}
        if owner == "host":
            p.active = True
        return win

    def pe_create_window(self, pe: int, page_shift: int, size: int, offset: int) -> PeWindow:
        return self._create(pe, page_shift, size, offset, "host")

    def guest_pe_create_window(self, pe: int, page_shift: int, size: int, offset: int) -> PeWindow:
        """The guest's RTAS create on a PE (read-only to the host side)."""
        return self._create(pe, page_shift, size, offset, "guest")

    def pe_remove_window(self, pe: int, slot: int) -> None:
        p, w = self._win(pe, slot)
        if w.owner != "host":
            raise BackendError(f"'liobn' {w.liobn:#x} is a guest window")
        del p.windows[slot]
        del p.tces[slot]

    def put_tces(self, pe: int, slot: int, start: int, tces: Sequence[int]) -> None:
        p, w = self._win(pe, slot)
        if w.owner != "host":
            raise BackendError(f"'liobn' {w.liobn:#x} is a guest window")
        if not tces or len(tces) > self.put_tces_max:
            raise BackendError(f"'tces': 1 .. {self.put_tces_max} entries, not {len(tces)}")
        if start < 0 or start + len(tces) > w.entries:
            raise BackendError(f"'start' {start}: {len(tces)} TCEs do not fit {w.entries}")
        bad = ((1 << w.page_shift) - 1) & ~(TCE_READ | TCE_WRITE)
        for i, t in enumerate(tces):
            if not 0 <= t < 1 << 64 or t & bad:
                raise BackendError(f"'tces' entry {i}: {t:#x} has reserved bits")
        table = p.tces[slot]
        for i, t in enumerate(tces):
            if t:
                table[start + i] = t
            else:
                table.pop(start + i, None)

    def read_pe_tces(self, pe: int, slot: int, start: int, count: int) -> list[int]:
        _p, w = self._win(pe, slot)
        if start < 0 or count < 0 or start + count > w.entries:
            raise BackendError(f"'start' {start} + 'count' {count} beyond {w.entries}")
        table = self._pes[pe].tces[slot]
        return [table.get(i, 0) for i in range(start, start + count)]

    def set_blocked(self, pe: int, blocked: bool) -> None:
        p = self._pe(pe)
        p.blocked = bool(blocked)
        p.active = True

    def pe_blocked(self, pe: int) -> bool:
        return self._pe(pe).blocked

    def pe_translate(self, device: str, iova: int, access: Access) -> Translation | None:
        """The PHB's answer for a device on a PE the host side programmed, else None."""
        pe = self._pe_of.get(device)
        p = self._pes.get(pe) if pe is not None else None
        if p is None or not p.active:
            return None
        if p.blocked:
            return Translation(False, stage="tce", reason="blocked")
        return tce_translate(list(p.windows.values()), p.tces, iova, access)


__all__ = ["TCE_READ", "TCE_WRITE", "InMemoryPes", "PeWindow", "TceBackend", "tce_translate"]
