"""VFIO sPAPR TCE v2 compat on the model (in-memory PEs): the kernel's rules and errnos."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from test_ppc64_iommufd import DDW, A, B, C, setup, tces

from pyctl.iommufd import InMemoryBackend, IommufdContext, IommufdError
from pyctl.iommufd.ppc64_hw import TCE_READ, TCE_WRITE
from pyctl.vfio import VfioContainer
from pyctl.vfio.uapi import (
    VFIO_DMA_MAP_FLAG_READ as RD,
)
from pyctl.vfio.uapi import (
    VFIO_DMA_MAP_FLAG_WRITE as WR,
)
from pyctl.vfio.uapi import (
    VFIO_IOMMU_SPAPR_INFO_DDW,
    VFIO_SPAPR_TCE_IOMMU,
    VFIO_SPAPR_TCE_v2_IOMMU,
    VFIO_TYPE1v2_IOMMU,
)

GIB = 1 << 30
MIB = 1 << 20


def container() -> tuple[VfioContainer, InMemoryBackend, IommufdContext]:
    ctx, be = setup()
    c = VfioContainer(ctx)
    c.group_set_container([A, B])
    c.set_iommu(VFIO_SPAPR_TCE_v2_IOMMU)
    return c, be, ctx


def err(errno: str, fn: Callable[[], Any], be: InMemoryBackend | None = None) -> str:
    before = [(p, be.pe_windows(p), tces(be, p)) for p in (0, 1)] if be else None
    with pytest.raises(IommufdError) as e:
        fn()
    assert e.value.errno == errno, str(e.value)
    if be is not None:
        assert [(p, be.pe_windows(p), tces(be, p)) for p in (0, 1)] == before
    return e.value.message


def test_extensions_set_iommu_and_info() -> None:
    ctx, _ = setup()
    c = VfioContainer(ctx)
    assert c.check_extension(VFIO_SPAPR_TCE_v2_IOMMU) == 1
    assert c.check_extension(VFIO_SPAPR_TCE_IOMMU) == 0  # v1 is not offered
    err("EINVAL", lambda: c.set_iommu(VFIO_SPAPR_TCE_v2_IOMMU))  # no group
    err("ENOTTY", lambda: c.iommu_spapr_tce_get_info())
    c.group_set_container([A, B])
    c.set_iommu(VFIO_SPAPR_TCE_v2_IOMMU)
    err("EINVAL", lambda: c.set_iommu(VFIO_SPAPR_TCE_v2_IOMMU))  # set already
    assert c.check_extension(VFIO_TYPE1v2_IOMMU) == 0
    info = c.iommu_spapr_tce_get_info()
    assert info.flags == VFIO_IOMMU_SPAPR_INFO_DDW
    assert (info.dma32_window_start, info.dma32_window_size) == (0, GIB)
    assert info.ddw.pgsizes == (1 << 12) | (1 << 16) | (1 << 24)
    assert (info.ddw.max_dynamic_windows_supported, info.ddw.levels) == (2, 1)
    err("ENOTTY", lambda: c.iommu_enable())
    err("ENOTTY", lambda: c.iommu_get_info())
    # a group spanning two PEs is refused, nothing stays bound
    ctx2, _ = setup()
    c2 = VfioContainer(ctx2)
    c2.group_set_container([A, C])
    assert "PEs [0, 1]" in err("EINVAL", lambda: c2.set_iommu(VFIO_SPAPR_TCE_v2_IOMMU))
    assert ctx2.objects() == {} and c2.driver is None


def test_qemu_flow_default_window_removed_then_ddw() -> None:
    c, be, _ = container()
    # what QEMU's vfio_spapr does: remove the default window, create its own
    c.iommu_spapr_tce_remove(0)
    assert be.pe_windows(0) == []
    s0 = c.iommu_spapr_tce_create(12, GIB, 1)
    s1 = c.iommu_spapr_tce_create(16, 1 << 32, 1)
    assert (s0, s1) == (0, DDW)
    err("ENOSPC", lambda: c.iommu_spapr_tce_create(16, GIB, 1), be)
    assert [(w.start, w.page_shift) for w in be.pe_windows(0)] == [(0, 12), (DDW, 16)]
    c.iommu_spapr_register_memory(0x1000000, 16 * MIB)
    c.iommu_map_dma(0x1000000, DDW + 0x20000, 0x20000, RD | WR)
    c.iommu_map_dma(0x1800000, 0x3000, 0x1000, RD)
    rw = TCE_READ | TCE_WRITE
    assert tces(be, 0)[DDW] == [(2, 0x1000000 | rw), (3, 0x1010000 | rw)]
    assert tces(be, 0)[0] == [(3, 0x1800000 | TCE_READ)]
    assert be.translate(B, DDW + 0x30008, "write").addr == 0x1010008
    # unmap the middle of nothing and half a run: TCEs cleared exactly
    assert c.iommu_unmap_dma(DDW + 0x30000, 0x10000) == 0
    assert tces(be, 0)[DDW] == [(2, 0x1000000 | rw)]
    c.iommu_unmap_dma(0, 1 << 20)
    assert tces(be, 0)[0] == []
    # removing a window clears its TCEs first
    c.iommu_spapr_tce_remove(DDW)
    assert [w.start for w in be.pe_windows(0)] == [0]
    c.iommu_spapr_unregister_memory(0x1000000, 16 * MIB)


def test_map_unmap_errnos_change_nothing() -> None:
    c, be, _ = container()
    c.iommu_spapr_register_memory(0x1000000, 16 * MIB)
    c.iommu_spapr_tce_create(16, 1 << 32, 1)  # default window made first, at 0
    c.iommu_map_dma(0x1000000, 0x1000, 0x1000, RD | WR)
    err("EINVAL", lambda: c.iommu_map_dma(0x1000000, 0x2000, 0x1000, RD | 8), be)  # flags
    err("ENXIO", lambda: c.iommu_map_dma(0x1000000, 2 * GIB, 0x1000, RD), be)  # no window
    err("EINVAL", lambda: c.iommu_map_dma(0x1000000, DDW, 0x1000, RD), be)  # 64K pages
    err("EINVAL", lambda: c.iommu_map_dma(0x1001000, DDW, 0x10000, RD), be)  # vaddr
    err("EINVAL", lambda: c.iommu_map_dma(0x1000000, DDW + 0x1000, 0x10000, RD), be)  # iova
    err("EINVAL", lambda: c.iommu_map_dma(0x1000000, GIB - 0x1000, 0x2000, RD), be)  # leaves
    err("EINVAL", lambda: c.iommu_map_dma(0x1000000, 0x4000, 0x1000, 0), be)  # no direction
    assert "preregistered" in err(
        "EINVAL", lambda: c.iommu_map_dma(0x3000000, 0x4000, 0x1000, RD), be
    )
    err("EEXIST", lambda: c.iommu_map_dma(0x1002000, 0x1000, 0x1000, RD), be)  # on iommufd
    err("EINVAL", lambda: c.iommu_unmap_dma(0x1000, 0x1000, 1), be)
    err("ENXIO", lambda: c.iommu_unmap_dma(3 * GIB, 0x1000), be)
    err("EINVAL", lambda: c.iommu_unmap_dma(DDW, 0x1000), be)
    err("EINVAL", lambda: c.iommu_spapr_tce_remove(1 << 40), be)
    err("EINVAL", lambda: c.iommu_spapr_tce_remove(0, flags=1), be)
    err("EINVAL", lambda: c.iommu_spapr_tce_create(16, GIB, 1, flags=1), be)


def test_create_errnos() -> None:
    c, be, _ = container()
    c.iommu_spapr_tce_remove(0)
    err("EINVAL", lambda: c.iommu_spapr_tce_create(21, GIB, 1), be)  # page size not offered
    err("EINVAL", lambda: c.iommu_spapr_tce_create(12, 3 * GIB, 1), be)  # not a power of 2
    err("EINVAL", lambda: c.iommu_spapr_tce_create(12, 1 << 40, 1), be)  # beyond max TCEs
    err("EINVAL", lambda: c.iommu_spapr_tce_create(12, GIB, 3), be)  # levels
    err("EINVAL", lambda: c.iommu_spapr_tce_create(12, GIB, 0), be)
    assert be.pe_windows(0) == []


def test_preregistration_rules() -> None:
    c, _, _ = container()
    c.iommu_spapr_register_memory(0x1000000, MIB)
    err("EBUSY", lambda: c.iommu_spapr_register_memory(0x1000000, MIB))
    err("EINVAL", lambda: c.iommu_spapr_register_memory(0x1080000, MIB))  # overlaps
    err("EINVAL", lambda: c.iommu_spapr_register_memory(0x1000800, MIB))  # unaligned
    err("EINVAL", lambda: c.iommu_spapr_register_memory(0x3000000, MIB, flags=1))
    c.iommu_spapr_register_memory(0x1100000, MIB)  # adjacent is fine
    c.iommu_map_dma(0x10F0000, 0x10000, 0x20000, RD)  # across both regions
    err("ENOENT", lambda: c.iommu_spapr_unregister_memory(0x1000000, 2 * MIB))
    err("EBUSY", lambda: c.iommu_spapr_unregister_memory(0x1000000, MIB))
    c.iommu_unmap_dma(0x10000, 0x20000)
    c.iommu_spapr_unregister_memory(0x1000000, MIB)
    err("ENOENT", lambda: c.iommu_spapr_unregister_memory(0x1000000, MIB))


def test_second_pe_joins_with_the_windows_and_maps() -> None:
    c, be, _ = container()
    c.iommu_spapr_register_memory(0x1000000, 16 * MIB)
    c.iommu_spapr_tce_create(16, 1 << 32, 1)
    c.iommu_map_dma(0x1000000, DDW, 0x10000, RD | WR)
    c.group_set_container([C])
    assert [w.start for w in be.pe_windows(1)] == [0, DDW]
    assert tces(be, 1)[DDW] == tces(be, 0)[DDW] == [(0, 0x1000000 | TCE_READ | TCE_WRITE)]
    c.iommu_map_dma(0x1100000, 0x5000, 0x1000, WR)
    assert tces(be, 1)[0] == tces(be, 0)[0] == [(5, 0x1100000 | TCE_WRITE)]
    c.group_unset_container(1)
    assert be.pe_windows(1) == [] and be.pe_blocked(1)
