"""DeviceHwInfo from x-iommulab-query-hw-info: the documented answers, then the real device."""

from __future__ import annotations

from typing import Any

import pytest
from testvm import ViommuVm, needs_viommu

from pyctl.iommufd import X86_MSI_WINDOW, DeviceHwInfo, IommufdContext, ResvRegion
from pyctl.iommufd.errors import BackendError
from pyctl.iommufd.hwinfo import device_hw_info
from pyctl.iommufd.qmp_backend import QmpBackend

PAGES = (1 << 12) | (1 << 21) | (1 << 30)
Q35_EDU: dict[str, Any] = {
    "type": "paging",
    "iommu": "/machine/peripheral/viommu0",
    "device": "/machine/peripheral/edu0",
    "requester-id": 24,
    "ias": {"min": 21, "max": 57, "default": 48},
    "page-sizes": PAGES,
    "stage1": {"format": "iommulab", "ias": 48, "levels": 4, "page-sizes": PAGES},
    "nesting": True,
    "dirty-tracking": False,
    "msi-window": {"start": 0xFEE00000, "size": 1 << 20},
    "reserved-regions": [{"start": 0xFEE00000, "size": 1 << 20, "type": "msi"}],
    "iotlb-size": 4096,
    "fault-queue-size": 256,
}
PE = {
    "phb": 0,
    "buid": 576460752840294400,
    "path": "/machine/unattached/device[4]",
    "liobns": [2147483648, 2147483649],
    "ddw": True,
    "default-window": {"start": 0, "size": 1 << 30},
    "page-shifts": [12, 16, 21, 24],
    "max-windows": 2,
    "max-tces": 1 << 37,
    "levels": 1,
    "dma64-offset": 1 << 59,
    "host-windows": {
        "page-shifts": [12, 16, 21, 24, 28, 34],
        "max-tces": 1 << 24,
        "read-tces-max": 1 << 20,
    },
}
PSERIES_S2: dict[str, Any] = {
    "type": "spapr-stage2",
    "iommu": "/machine/peripheral/s2",
    "device": "/machine/peripheral/s2",
    "ias": {"min": 21, "max": 57, "default": 48},
    "page-sizes": PAGES,
    "nesting": False,
    "dirty-tracking": False,
    "reserved-regions": [],
    "spapr-pe": {**PE, "stage2": "/machine/peripheral/s2"},
}
PSERIES_EDU: dict[str, Any] = {
    "type": "spapr-tce",
    "iommu": "/machine/unattached/device[4]",
    "device": "/machine/peripheral/edu0",
    "page-sizes": 18944000,
    "nesting": False,
    "dirty-tracking": False,
    "reserved-regions": [],
    "spapr-pe": PE,
}


def test_q35_requester() -> None:
    info = device_hw_info(Q35_EDU)
    assert info == DeviceHwInfo(
        "/machine/peripheral/edu0", "x86", 48, PAGES, True, (), X86_MSI_WINDOW, None
    )
    assert info.resv_regions() == [ResvRegion(0xFEE00000, 0xFEEFFFFF, "msi")]


def test_pseries_stage2_requester_reserves_nothing() -> None:
    info = device_hw_info(PSERIES_S2, name="s2")
    assert (info.device, info.platform, info.ias, info.nesting) == ("s2", "x86", 48, False)
    assert info.msi_window is None and info.resv_regions() == []
    assert info.spapr is not None and info.spapr.max_tces == 1 << 37


def test_pseries_tce_device() -> None:
    info = device_hw_info(PSERIES_EDU)
    assert (info.platform, info.ias, info.msi_window) == ("spapr", 64, None)
    assert info.spapr is not None and info.spapr.page_shifts == (12, 16, 21, 24)
    # the guest's policy above, what the host may create here
    assert info.spapr.host_page_shifts == (12, 16, 21, 24, 28, 34)
    assert (info.spapr.host_max_tces, info.spapr.read_tces_max) == (1 << 24, 1 << 20)
    pe = {k: v for k, v in PE.items() if k != "host-windows"}
    old = device_hw_info({**PSERIES_EDU, "spapr-pe": pe}).spapr
    assert old is not None and (old.host_page_shifts, old.host_max_tces) == ((), None)


def test_other_regions_and_refusals() -> None:
    ans = {**Q35_EDU, "reserved-regions": [{"start": 0x1000, "size": 0x1000, "type": "direct"}]}
    assert device_hw_info(ans).reserved == (ResvRegion(0x1000, 0x1FFF, "direct"),)
    with pytest.raises(ValueError, match="translation type"):
        device_hw_info({**Q35_EDU, "type": "amd-v"})
    with pytest.raises(ValueError, match="reserved region type"):
        device_hw_info({**Q35_EDU, "reserved-regions": [{"start": 0, "size": 1, "type": "x"}]})


@needs_viommu
def test_the_real_device_answer_drives_the_model() -> None:
    with ViommuVm(devices=1) as vm, QmpBackend(str(vm.qmp_path)) as hw:
        try:
            answer = hw.execute("x-iommulab-query-hw-info", {"device": "edu0"})
        except BackendError as e:
            pytest.skip(f"this QEMU build has no x-iommulab-query-hw-info: {e}")
        info = device_hw_info(answer)
        assert info.msi_window == X86_MSI_WINDOW and info.ias == 48 and info.nesting
        # the model reserves what the device reported, nothing else
        ctx = IommufdContext(hw)
        ioas = ctx.ioas_alloc()
        ctx.attach(ctx.bind("edu0"), ioas)
        assert [(r.start, r.last) for r in info.resv_regions()] == [
            r for r in ctx.reserved(ioas) if r[1] < 1 << 48
        ]
