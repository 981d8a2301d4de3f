"""x-iommulab-query-hw-info: what the hardware is, for a vIOMMU or a requester.

Real QEMU (q35 and pseries, ``-accel qtest``).  Each fact is checked against
the device's configuration (properties given on the command line) and
against what the device does or reports elsewhere (x-iommulab-query,
x-iommulab-spapr-query-phbs, domain-alloc limits), so a value copied from
somewhere else instead of read from the device would fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import IOMMU, Lab, qemu_binary
from qemu.qmp import ExecuteError

from pyctl.qemu.pseries_qtest import PseriesQtest
from pyctl.qemu.qtest_machine import QtestMachine

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
LEAVES = 4 * KiB | 2 * MiB | 1 * GiB
EDU_RID = 3 << 3  # 00:03.0


def hw(m: Lab | PseriesQtest, device: str) -> dict[str, Any]:
    res: dict[str, Any] = m.qmp.cmd("x-iommulab-query-hw-info", device=device)
    return res


# --- q35: iommulab-viommu ---


def test_viommu_defaults(lab: Lab) -> None:
    info = hw(lab, IOMMU)
    q = lab.cmd("x-iommulab-query")
    assert info == {
        "type": "paging",
        "iommu": q["path"],
        "ias": {"min": 21, "max": 57, "default": 48},
        "page-sizes": LEAVES,
        "stage1": {"format": "iommulab", "ias": 48, "levels": 4, "page-sizes": LEAVES},
        "nesting": True,
        "dirty-tracking": False,
        "msi-window": {"start": 0xFEE00000, "size": 1 * MiB},
        "reserved-regions": [{"start": 0xFEE00000, "size": 1 * MiB, "type": "msi"}],
        "iotlb-size": q["iotlb-size"],
        "fault-queue-size": q["fault-queue-size"],
        "limits": {
            "max-domains": 4096,
            "max-tables-per-domain": 1 << 16,
            "table-budget-bytes": 256 * MiB,
            "table-memory-limit": 1024 * MiB,
            "table-memory": 0,
            "max-batch": 1 << 20,
        },
    }
    # the same answer by QOM path
    assert hw(lab, q["path"]) == info


def test_requester_adds_device_and_requester_id(lab: Lab) -> None:
    viommu = hw(lab, IOMMU)
    info = hw(lab, "edu0")
    assert info.pop("device") == "/machine/peripheral/edu0"
    assert info.pop("requester-id") == EDU_RID
    assert info == viommu
    devs = {d["device"]: d for d in lab.cmd("x-iommulab-query")["devices"]}
    assert devs["/machine/peripheral/edu0"]["requester-id"] == EDU_RID


def test_ias_limits_are_what_domain_alloc_accepts(lab: Lab) -> None:
    ias = hw(lab, IOMMU)["ias"]
    lab.cmd("x-iommulab-domain-alloc", domain=1, type="paging")
    lab.cmd("x-iommulab-domain-alloc", domain=2, type="paging", ias=ias["min"])
    lab.cmd("x-iommulab-domain-alloc", domain=3, type="paging", ias=ias["max"])
    for bad in (ias["min"] - 1, ias["max"] + 1):
        with pytest.raises(ExecuteError, match="ias"):
            lab.cmd("x-iommulab-domain-alloc", domain=4, type="paging", ias=bad)
    got = {d["domain"]: d["ias"] for d in lab.cmd("x-iommulab-query")["domains"]}
    assert got == {1: ias["default"], 2: ias["min"], 3: ias["max"]}


def test_properties_are_reflected(lab_factory: Any) -> None:
    lab = lab_factory(
        [",msi-base=0xfec00000,msi-size=0x200000,iotlb-size=1024,fault-queue-size=64"]
    )
    for name in (IOMMU, "edu0"):
        info = hw(lab, name)
        assert info["msi-window"] == {"start": 0xFEC00000, "size": 2 * MiB}
        assert info["reserved-regions"] == [{"start": 0xFEC00000, "size": 2 * MiB, "type": "msi"}]
        assert (info["iotlb-size"], info["fault-queue-size"]) == (1024, 64)


def test_no_msi_window(lab_factory: Any) -> None:
    lab = lab_factory([",msi-size=0"])
    for name in (IOMMU, "edu0"):
        info = hw(lab, name)
        assert "msi-window" not in info and info["reserved-regions"] == []


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("nosuch", "'nosuch' is not a device"),
        ("", "is not a device"),
        ("/machine/q35", "neither an iommulab vIOMMU nor a PCI device"),
    ],
)
def test_bad_device_is_a_clear_error(lab: Lab, device: str, message: str) -> None:
    before = lab.cmd("x-iommulab-query")
    with pytest.raises(ExecuteError, match=message):
        hw(lab, device)
    assert lab.cmd("x-iommulab-query") == before and lab.alive()


def test_pci_device_behind_no_viommu() -> None:
    m = QtestMachine(
        qemu_binary(),
        ["-machine", "q35", "-m", "128", "-device", "edu,id=edu0,addr=03.0"],
        prefix="iommulab-hwinfo-",
    )
    try:
        with pytest.raises(ExecuteError, match="behind no iommulab vIOMMU"):
            m.qmp.cmd("x-iommulab-query-hw-info", device="edu0")
    finally:
        m.close()


# --- pseries: TCE PE and iommulab-spapr-s2 ---


def pseries(extra: list[str] | None = None) -> PseriesQtest:
    return PseriesQtest(qemu_binary("ppc64"), extra or [])


@pytest.fixture
def vm() -> Iterator[PseriesQtest]:
    p = pseries()
    try:
        yield p
    finally:
        p.close()


def expected_pe(p: dict[str, Any], stage2: str | None = None) -> dict[str, Any]:
    """The PE facts as x-iommulab-spapr-query-phbs states them."""
    pol = p["policy"]
    pe = {
        "phb": p["phb"],
        "buid": p["buid"],
        "path": p["path"],
        "liobns": p["liobns"],
        "ddw": pol["ddw"],
        "default-window": {"start": 0, "size": pol["default-window-size"]},
        "page-shifts": pol["page-shifts"],
        "max-windows": pol["windows"],
        "max-tces": pol["max-tces"],
        "levels": 2,  # directory and leaves (patch 0016)
        "table-memory-limit": pol["table-memory-limit"],
        "dma64-offset": pol["dma64-offset"],
        # what the host side may create, the same facts in both answers
        "host-windows": p["host-windows"],
        "blocked": p["blocked"],
    }
    if stage2:
        pe["stage2"] = stage2
    return pe


def test_tce_pe_facts_equal_query_phbs(vm: PseriesQtest) -> None:
    info = hw(vm, "edu0")
    p = vm.phb()
    assert info == {
        "type": "spapr-tce",
        "iommu": p["path"],
        "device": "/machine/peripheral/edu0",
        "requester-id": EDU_RID,
        "page-sizes": sum(1 << s for s in p["policy"]["page-shifts"]),
        "nesting": False,
        "dirty-tracking": False,
        "reserved-regions": [],
        "fault-queue-size": 256,
        "spapr-pe": expected_pe(p),
    }
    # the default window the PE has is the one reported
    (w,) = p["windows"]
    assert (w["bus-offset"], w["size"]) == (0, info["spapr-pe"]["default-window"]["size"])


def test_tce_pe_follows_the_ddw_policy(vm: PseriesQtest) -> None:
    vm.cmd(
        "x-iommulab-spapr-set-ddw-policy",
        page_shifts=[16, 24],
        windows=1,
        max_tces=1 << 20,
        dma64_offset=4 * GiB,
        default_window_size=256 * MiB,
        ddw=False,
    )
    info = hw(vm, "edu0")
    assert info["spapr-pe"] == expected_pe(vm.phb())
    assert info["page-sizes"] == 64 * KiB | 16 * MiB
    assert info["spapr-pe"]["default-window"] == {"start": 0, "size": 256 * MiB}
    assert info["spapr-pe"]["dma64-offset"] == 4 * GiB and not info["spapr-pe"]["ddw"]


def test_stage2_facts() -> None:
    vm = pseries(["-device", "iommulab-spapr-s2,id=s2,addr=04.0"])
    try:
        info = hw(vm, "s2")
        p = vm.phb()
        q = vm.cmd("x-iommulab-query", iommu="s2")
        (dev,) = q["devices"]
        assert info == {
            "type": "spapr-stage2",
            "iommu": "/machine/peripheral/s2",
            "device": "/machine/peripheral/s2",
            "requester-id": dev["requester-id"],
            "ias": {"min": 21, "max": 57, "default": 48},
            "page-sizes": LEAVES,
            "nesting": False,
            "dirty-tracking": False,
            "reserved-regions": [],  # no MSI window beneath TCEs (guest RAM there)
            "iotlb-size": q["iotlb-size"],
            "fault-queue-size": q["fault-queue-size"],
            "limits": {
                "max-domains": 4096,
                "max-tables-per-domain": 1 << 16,
                "table-budget-bytes": 256 * MiB,
                "table-memory-limit": 1024 * MiB,
                "table-memory": 0,
                "max-batch": 1 << 20,
            },
            "spapr-pe": expected_pe(p, stage2="/machine/peripheral/s2"),
        }
        # a device on the PHB: its PE, with the stage 2 beneath named
        assert hw(vm, "edu0")["spapr-pe"] == expected_pe(p, stage2="/machine/peripheral/s2")
        # no nesting offered, none accepted
        with pytest.raises(ExecuteError, match="no nested domains"):
            vm.cmd("x-iommulab-domain-alloc", iommu="s2", domain=1, type="paging")
            vm.cmd(
                "x-iommulab-domain-alloc",
                iommu="s2",
                domain=2,
                type="nested",
                parent=1,
                s1_root=0,
            )
        assert [d["domain"] for d in vm.cmd("x-iommulab-query", iommu="s2")["domains"]] == [1]
    finally:
        vm.close()


def test_stage2_msi_window_when_configured() -> None:
    vm = pseries(
        ["-device", "iommulab-spapr-s2,id=s2,addr=04.0,msi-base=0x40000000,msi-size=0x10000"]
    )
    try:
        info = hw(vm, "s2")
        assert info["msi-window"] == {"start": 0x40000000, "size": 0x10000}
        assert info["reserved-regions"] == [{"start": 0x40000000, "size": 0x10000, "type": "msi"}]
    finally:
        vm.close()


def test_pseries_bad_device(vm: PseriesQtest) -> None:
    with pytest.raises(ExecuteError, match="'nope' is not a device"):
        hw(vm, "nope")
    assert vm.alive() and hw(vm, "edu0")["type"] == "spapr-tce"
