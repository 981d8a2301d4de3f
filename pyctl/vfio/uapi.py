"""Constants and structures of the VFIO container uAPI (include/uapi/linux/vfio.h).

Names and values are the kernel's; a structure is a frozen dataclass holding
what the ioctl fills in (``argsz`` handling is the caller's business in C;
here every answer is whole).
"""

from __future__ import annotations

from dataclasses import dataclass

VFIO_API_VERSION = 0
# VFIO_CHECK_EXTENSION / VFIO_SET_IOMMU
VFIO_TYPE1_IOMMU = 1
VFIO_SPAPR_TCE_IOMMU = 2
VFIO_TYPE1v2_IOMMU = 3
VFIO_DMA_CC_IOMMU = 4
VFIO_EEH = 5
VFIO_TYPE1_NESTING_IOMMU = 6
VFIO_SPAPR_TCE_v2_IOMMU = 7
VFIO_NOIOMMU_IOMMU = 8
VFIO_UNMAP_ALL = 9
VFIO_UPDATE_VADDR = 10

VFIO_DMA_MAP_FLAG_READ = 1 << 0
VFIO_DMA_MAP_FLAG_WRITE = 1 << 1
VFIO_DMA_MAP_FLAG_VADDR = 1 << 2
VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0
VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1
VFIO_DMA_UNMAP_FLAG_VADDR = 1 << 2

VFIO_IOMMU_INFO_PGSIZES = 1 << 0
VFIO_IOMMU_INFO_CAPS = 1 << 1
VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1
VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3
VFIO_IOMMU_SPAPR_INFO_DDW = 1 << 0

U32_MAX = (1 << 32) - 1


@dataclass(frozen=True, slots=True)
class VfioIovaRange:
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class VfioIommuType1Info:
    """VFIO_IOMMU_GET_INFO with its capability chain (IOVA ranges, DMA available)."""

    flags: int
    iova_pgsizes: int
    iova_ranges: tuple[VfioIovaRange, ...]
    dma_avail: int


@dataclass(frozen=True, slots=True)
class VfioIommuSpaprTceDdwInfo:
    pgsizes: int
    max_dynamic_windows_supported: int
    levels: int


@dataclass(frozen=True, slots=True)
class VfioIommuSpaprTceInfo:
    """VFIO_IOMMU_SPAPR_TCE_GET_INFO."""

    flags: int
    dma32_window_start: int
    dma32_window_size: int
    ddw: VfioIommuSpaprTceDdwInfo
