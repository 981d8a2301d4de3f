"""The device is the source of hardware facts: the model reserves what DeviceHwInfo says."""

from __future__ import annotations

from test_iommufd_lib import rejected

from pyctl.iommufd import (
    X86_MSI_WINDOW,
    DeviceHwInfo,
    InMemoryBackend,
    IommufdContext,
    ResvRegion,
    x86_device,
)
from pyctl.iommufd.uapi import U64_MAX

RW, FIXED = 6, 1
GIB = 1 << 30


def _ctx(*infos: DeviceHwInfo) -> IommufdContext:
    return IommufdContext(InMemoryBackend(list(infos)))


def test_identity_map_over_the_x86_msi_window_when_the_device_has_none() -> None:
    """pseries' stage-2 requester has no MSI window: 4 GiB of RAM at IOVA = GPA maps."""
    ctx = _ctx(DeviceHwInfo("s2", "x86", ias=48, msi_window=None))
    ioas = ctx.ioas_alloc()
    dev = ctx.bind("s2")
    ctx.attach(dev, ioas)
    assert ctx.ioas_iova_ranges(ioas).ranges == [(0, (1 << 48) - 1)]
    for gpa in range(0, 4 * GIB, GIB):
        assert ctx.ioas_map(ioas, gpa, GIB, RW | FIXED, iova=gpa) == gpa
    assert ctx.backend.translate("s2", 0xFEE01000, "write").addr == 0xFEE01000
    assert ctx.check_hardware() == []


def test_x86_device_reserves_its_reported_window() -> None:
    ctx = _ctx(x86_device("nvme0"))
    ioas = ctx.ioas_alloc()
    dev = ctx.bind("nvme0")
    assert ctx.get_hw_info(dev).msi_window == X86_MSI_WINDOW
    ctx.attach(dev, ioas)
    assert X86_MSI_WINDOW in ctx.reserved(ioas)
    rejected(ctx, "EINVAL", lambda: ctx.ioas_map(ioas, 0, 4096, RW | FIXED, iova=0xFEE00000))


def test_reported_regions_are_reserved_exactly_and_follow_the_device() -> None:
    info = DeviceHwInfo(
        "d0",
        "x86",
        msi_window=(0x8000000, 0x80FFFFF),
        reserved=(
            (0x1000000, 0x1FFFFFF, "reserved"),
            (0x3000000, 0x3FFFFFF, "direct"),
            (0x5000000, 0x5FFFFFF, "direct-relaxable"),
        ),
    )
    assert info.resv_regions()[0] == ResvRegion(0x1000000, 0x1FFFFFF, "reserved")
    ctx = _ctx(info)
    ioas = ctx.ioas_alloc()
    dev = ctx.bind("d0")
    ctx.attach(dev, ioas)
    # relaxable direct regions are not reserved (iopt_table_enforce_dev_resv_regions)
    assert ctx.reserved(ioas) == [
        (0x1000000, 0x1FFFFFF),
        (0x3000000, 0x3FFFFFF),
        (0x8000000, 0x80FFFFF),
        (1 << 48, U64_MAX),
    ]
    ctx.detach(dev)
    assert ctx.reserved(ioas) == []


def test_spapr_device_reports_its_pe() -> None:
    be = InMemoryBackend([DeviceHwInfo("pe0", "spapr", ias=64, nesting=False)])
    ctx = IommufdContext(be)
    info = ctx.get_hw_info(ctx.bind("pe0"))
    assert info.msi_window is None
    assert info.spapr is not None and info.spapr.dma32_size == GIB
    assert info.spapr.page_shifts == be.spapr_caps.page_shifts
