"""VFIO type1 on iommufd (drivers/iommu/iommufd/vfio_compat.c), over the model.

One IOAS is the container's address space (the kernel's compat IOAS); each
group's devices are bound and attached to it (automatic domains).  The
rules and errnos are vfio_compat.c's: unknown flags EINVAL, unmap-all with a
range EINVAL, a range that would split an area or holds nothing ENOENT,
GET_INFO's page sizes as iommufd_get_pagesizes() and its IOVA-range
capability as the holes of the IOAS's reserved ranges.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from pyctl.iommufd import IommufdContext, IommufdError
from pyctl.iommufd.objects import HwptPaging
from pyctl.iommufd.uapi import (
    FIXED_IOVA,
    PAGE_SIZE,
    READABLE,
    U64_MAX,
    WRITEABLE,
    OptionId,
    OptionOp,
    u64,
)

from .uapi import (
    U32_MAX,
    VFIO_DMA_MAP_FLAG_READ,
    VFIO_DMA_MAP_FLAG_WRITE,
    VFIO_DMA_UNMAP_FLAG_ALL,
    VFIO_IOMMU_INFO_CAPS,
    VFIO_IOMMU_INFO_PGSIZES,
    VFIO_TYPE1_IOMMU,
    VfioIommuType1Info,
    VfioIovaRange,
)


class Type1Driver:
    """The container's type1 IOMMU once VFIO_SET_IOMMU chose it."""

    def __init__(self, ctx: IommufdContext, kind: int) -> None:
        self.ctx = ctx
        self.ioas = ctx.ioas_alloc()
        self.devs: list[int] = []
        self.kind = kind
        if kind == VFIO_TYPE1_IOMMU:  # iopt_disable_large_pages(): unmap anywhere
            ctx.option(OptionId.IOMMU_OPTION_HUGE_PAGES, OptionOp.IOMMU_OPTION_OP_SET, self.ioas, 0)

    def attach_group(self, devices: Sequence[str]) -> list[int]:
        """Bind and attach each device of a group (all or nothing)."""
        done: list[int] = []
        try:
            for name in devices:
                d = self.ctx.bind(name)
                done.append(d)
                self.ctx.attach(d, self.ioas)
        except IommufdError:
            for d in reversed(done):
                self.ctx.unbind(d)
            raise
        self.devs += done
        return done

    def detach_group(self, dev_ids: Sequence[int]) -> None:
        for d in dev_ids:
            self.ctx.unbind(d)
            self.devs.remove(d)

    def pagesizes(self) -> int:
        """iommufd_get_pagesizes()."""
        bitmap = U64_MAX
        for o in self.ctx.objects().values():
            if isinstance(o, HwptPaging) and o.ioas_id == self.ioas:
                bitmap &= o.pgsize_bitmap
        if bitmap & (PAGE_SIZE - 1):
            bitmap = (bitmap & ~(PAGE_SIZE - 1)) | PAGE_SIZE
        return max(bitmap, self.ctx.iova_alignment(self.ioas))

    def get_info(self) -> VfioIommuType1Info:
        """VFIO_IOMMU_GET_INFO with the DMA-available and IOVA-range capabilities."""
        ranges = self.ctx.ioas_iova_ranges(self.ioas).ranges
        return VfioIommuType1Info(
            VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS,
            self.pagesizes(),
            tuple(VfioIovaRange(s, e) for s, e in ranges),
            U32_MAX,
        )

    def map_dma(self, vaddr: object, iova: object, size: object, flags: object) -> None:
        """VFIO_IOMMU_MAP_DMA at exactly ``iova`` (``vaddr``: guest-physical here)."""
        fl = u64("flags", flags)
        if fl & ~(VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE):
            raise IommufdError("EINVAL", f"flags {fl:#x}: only READ and WRITE")
        prot = (READABLE if fl & VFIO_DMA_MAP_FLAG_READ else 0) | (
            WRITEABLE if fl & VFIO_DMA_MAP_FLAG_WRITE else 0
        )
        self.ctx.ioas_map(self.ioas, vaddr, size, int(prot | FIXED_IOVA), iova)  # type: ignore[arg-type]

    def unmap_dma(self, iova: object, size: object, flags: object) -> int:
        """VFIO_IOMMU_UNMAP_DMA; returns the bytes unmapped (``unmap.size``)."""
        fl = u64("flags", flags)
        io, sz = u64("iova", iova), u64("size", size)
        if fl & ~VFIO_DMA_UNMAP_FLAG_ALL:
            raise IommufdError("EINVAL", f"flags {fl:#x}: only VFIO_DMA_UNMAP_FLAG_ALL")
        if fl & VFIO_DMA_UNMAP_FLAG_ALL:
            if io or sz:
                raise IommufdError("EINVAL", "VFIO_DMA_UNMAP_FLAG_ALL takes iova 0 and size 0")
            return self.ctx.ioas_unmap(self.ioas, 0, U64_MAX)
        if self.kind == VFIO_TYPE1_IOMMU and sz:
            self._cut(io, io + sz - 1)
        return self.ctx.ioas_unmap(self.ioas, io, sz)

    def _cut(self, first: int, last: int) -> None:
        """iopt_cut_iova(): areas crossing ``first`` or ``last`` become pieces ending
        there (unmapped and mapped again as pieces: the same TCEs/PTEs)."""
        ctx = self.ctx
        for a in ctx.areas(self.ioas):
            cuts = sorted({c for c in (first, last + 1) if a.iova < c <= a.last})
            if not cuts:
                continue
            ctx.ioas_unmap(self.ioas, a.iova, a.length)
            prot = int((READABLE if a.read else 0) | (WRITEABLE if a.write else 0) | FIXED_IOVA)
            edges = [a.iova, *cuts, a.last + 1]
            for s, e in itertools.pairwise(edges):
                ctx.ioas_map(self.ioas, a.phys + (s - a.iova), e - s, prot, s)
