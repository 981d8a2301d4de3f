"""VFIO type1 compat on the model (iommufd's vfio_compat.c rules and errnos)."""

from __future__ import annotations

import pytest
from test_iommufd_lib import make_ctx

from pyctl.iommufd import U64_MAX, X86_MSI_WINDOW, IommufdError
from pyctl.vfio import VfioContainer
from pyctl.vfio.uapi import (
    U32_MAX,
    VFIO_DMA_UNMAP_FLAG_ALL,
    VFIO_IOMMU_INFO_CAPS,
    VFIO_IOMMU_INFO_PGSIZES,
    VFIO_TYPE1_IOMMU,
    VFIO_UNMAP_ALL,
    VFIO_TYPE1v2_IOMMU,
    VfioIovaRange,
)
from pyctl.vfio.uapi import (
    VFIO_DMA_MAP_FLAG_READ as RD,
)
from pyctl.vfio.uapi import (
    VFIO_DMA_MAP_FLAG_WRITE as WR,
)


def errno(fn: object) -> str:
    with pytest.raises(IommufdError) as e:
        fn()  # type: ignore[operator]
    return e.value.errno


def test_type1v2_info_map_unmap() -> None:
    ctx, be = make_ctx()
    c = VfioContainer(ctx)
    c.group_set_container(["nvme0"])
    assert c.check_extension(VFIO_UNMAP_ALL) == 1
    c.set_iommu(VFIO_TYPE1v2_IOMMU)
    info = c.iommu_get_info()
    assert info.flags == VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS
    assert info.iova_pgsizes == (1 << 12) | (1 << 21) | (1 << 30)
    lo, hi = X86_MSI_WINDOW
    assert info.iova_ranges == (
        VfioIovaRange(0, lo - 1), VfioIovaRange(hi + 1, (1 << 48) - 1))  # fmt: skip
    assert info.dma_avail == U32_MAX
    c.iommu_map_dma(0x200000, 0x100000, 0x4000, RD | WR)
    c.iommu_map_dma(0x300000, 0x200000, 0x1000, RD)
    assert be.translate("nvme0", 0x100010, "write").addr == 0x200010
    assert errno(lambda: c.iommu_map_dma(0, 0x500000, 0x1000, RD | 4)) == "EINVAL"  # VADDR
    assert errno(lambda: c.iommu_map_dma(0, lo, 0x1000, RD)) == "EINVAL"  # reserved
    assert errno(lambda: c.iommu_map_dma(0, 0x100000, 0x1000, RD)) == "EEXIST"
    assert errno(lambda: c.iommu_unmap_dma(0x101000, 0x1000)) == "ENOENT"  # would split
    assert errno(lambda: c.iommu_unmap_dma(0x900000, 0x1000)) == "ENOENT"  # nothing
    assert errno(lambda: c.iommu_unmap_dma(0, 0x1000, 1)) == "EINVAL"  # dirty bitmap
    assert errno(lambda: c.iommu_unmap_dma(0, 1, VFIO_DMA_UNMAP_FLAG_ALL)) == "EINVAL"
    assert c.iommu_unmap_dma(0x100000, 0x4000) == 0x4000
    assert c.iommu_unmap_dma(0, 0, VFIO_DMA_UNMAP_FLAG_ALL) == 0x1000
    assert c.iommu_unmap_dma(0, 0, VFIO_DMA_UNMAP_FLAG_ALL) == 0
    assert ctx.ioas_unmap(c.driver.ioas, 0, U64_MAX) == 0  # type: ignore[union-attr]
    assert errno(lambda: c.iommu_spapr_tce_get_info()) == "ENOTTY"


def test_type1_unmaps_inside_a_map() -> None:
    ctx, _ = make_ctx()
    c = VfioContainer(ctx)
    c.group_set_container(["nvme0"])
    c.set_iommu(VFIO_TYPE1_IOMMU)  # large pages off, as vfio_compat does
    assert c.iommu_get_info().iova_pgsizes & ((1 << 12) - 1) == 0
    c.iommu_map_dma(0x200000, 0x100000, 0x4000, RD | WR)
    assert c.iommu_unmap_dma(0x101000, 0x1000) == 0x1000  # iopt_cut_iova()
    assert [(a.iova, a.length, a.phys) for a in ctx.areas(c.driver.ioas)] == [  # type: ignore[union-attr]
        (0x100000, 0x1000, 0x200000), (0x102000, 0x2000, 0x202000)]  # fmt: skip
    assert ctx.check_hardware() == []
    assert c.check_extension(VFIO_TYPE1_IOMMU) == 1


def test_groups_and_ordering() -> None:
    ctx, _ = make_ctx()
    c = VfioContainer(ctx)
    assert errno(lambda: c.iommu_map_dma(0, 0, 0x1000, RD)) == "ENOTTY"
    assert errno(lambda: c.set_iommu(VFIO_TYPE1v2_IOMMU)) == "EINVAL"  # no group
    c.group_set_container(["nvme0"])
    assert errno(lambda: c.set_iommu(42)) == "EINVAL"
    c.set_iommu(VFIO_TYPE1v2_IOMMU)
    c.group_set_container(["edu0"])  # joins the container's IOAS
    c.iommu_map_dma(0x200000, 0x100000, 0x1000, RD)
    assert errno(lambda: c.group_set_container(["edu0"])) == "EINVAL"
    c.group_unset_container(1)
    c.group_unset_container(0)
    assert c.driver is None
