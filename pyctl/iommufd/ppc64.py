"""The PPC64 part of the iommufd uAPI the model offers (types only).

What the RFC author's branch reports and takes (reference 001): GET_HW_INFO
of type ``IOMMU_HW_INFO_TYPE_PPC64`` and HWPT_ALLOC driver data of type
``IOMMU_HWPT_DATA_PPC64_DMA_WINDOW``.  The numeric type values are not in
any kernel yet: they are the project's own (like ``IOMMU_HWPT_DATA_IOMMULAB``).
Every value of :class:`Ppc64HwInfo` comes from the device's report
(``x-iommulab-query-hw-info``'s ``spapr-pe``), never from a constant here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .backend import DeviceHwInfo
from .errors import IommufdError

#: project-specific values (no upstream number exists yet)
IOMMU_HW_INFO_TYPE_PPC64: Final = 0x1AB1
IOMMU_HWPT_DATA_PPC64_DMA_WINDOW: Final = 0x1AB1


@dataclass(frozen=True, slots=True)
class Ppc64HwInfo:
    """``struct iommu_hw_info_ppc64`` (the author's fields, plus max TCEs and dma64 offset)."""

    #: the 32-bit window's place: where a PE's first window goes
    tce32_start: int
    tce32_size: int
    #: TCE page sizes the PE's tables implement, bit n = 2^n bytes
    pgsizes: int
    #: windows a PE (a paging domain) may hold at once
    max_dynamic_windows_supported: int
    max_levels: int
    #: TCEs one window may hold
    max_tces: int
    #: where the platform puts the 64-bit window (4 GiB or 1 << 59)
    dma64_offset: int
    #: the PE (PHB index)
    pe: int
    #: host TCEs per bulk write, if the device reports it
    put_tces_max: int | None = None
    type: int = IOMMU_HW_INFO_TYPE_PPC64

    def page_shifts(self) -> list[int]:
        return [b for b in range(64) if self.pgsizes >> b & 1]


def ppc64_hw_info(info: DeviceHwInfo) -> Ppc64HwInfo:
    """IOMMU_GET_HW_INFO of a device on an sPAPR PE, from the facts it reported.

    The host side creates the windows of a paging domain, so page sizes and
    the TCE limit are the PE's host-side facts when the device reports them
    (``host-windows``), else its DDW policy's.
    """
    pe = info.spapr
    if info.platform != "spapr" or pe is None or pe.phb is None:
        raise IommufdError("EOPNOTSUPP", f"device {info.device!r} is not on an sPAPR PE")
    shifts = pe.host_page_shifts or pe.page_shifts
    max_tces = pe.host_max_tces if pe.host_max_tces is not None else pe.max_tces
    if max_tces is None:
        raise IommufdError("EOPNOTSUPP", f"device {info.device!r} reports no TCE limit")
    pgsizes = 0
    for s in shifts:
        pgsizes |= 1 << s
    return Ppc64HwInfo(
        pe.dma32_start,
        pe.dma32_size,
        pgsizes,
        pe.max_windows,
        pe.levels,
        max_tces,
        pe.dma64_offset,
        pe.phb,
        pe.put_tces_max,
    )


@dataclass(frozen=True, slots=True)
class Ppc64DmaWindow:
    """``struct iommu_hwpt_ppc64_dma_window``: one DMA window of a paging domain.

    ``bus_offset`` None lets the platform choose, as pnv_pci_ioda2_create_table
    does: the domain's first window at ``tce32_start``, the second at
    ``dma64_offset``.  Given, it must be one of those two.
    """

    window_size: int
    page_shift: int
    levels: int = 1
    bus_offset: int | None = None


__all__ = [
    "IOMMU_HWPT_DATA_PPC64_DMA_WINDOW",
    "IOMMU_HW_INFO_TYPE_PPC64",
    "Ppc64DmaWindow",
    "Ppc64HwInfo",
    "ppc64_hw_info",
]
