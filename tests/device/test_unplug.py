"""Hot-unplug behind iommulab-viommu (q35, ``-accel qtest``): an edu device
hot-plugged on a PCIe root port, attached to a domain, then ``device_del``'ed.
The vIOMMU forgets it: the domain no longer counts it (and can be freed), the
query no longer lists it, and a new device plugged in the same slot starts in
the vIOMMU's default mode instead of inheriting the old attachment.

No guest runs: the test plays the guest's part of native PCIe hotplug
(pciehp): it programs the root port's bus numbers and memory window, and acks
an unplug request by turning the slot's power and power indicator off (Slot
Control), as Linux's pciehp does; it turns them on when a device is plugged
(an empty slot is off after reset).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import EDU_BUF, EDU_BUF_SIZE, RAM, qemu_binary
from qemu.qmp import ExecuteError

from pyctl.qemu.pseries_qtest import PseriesQtest
from pyctl.qemu.qtest_machine import QtestMachine

IOMMU = "viommu0"
PORT_DEVFN = 4 << 3  # 00:04.0
SEC_BUS = 1
EDU_BAR = 0xFE000000
PAGE = EDU_BUF_SIZE
SRC, DST = 0x100000, 0x200000
IOVA_SRC, IOVA_DST = 0x10000000, 0x20000000
PCI_CAP_ID_EXP = 0x10
SLTCTL_PCC = 0x400  # power controller: off
SLTCTL_PIC_ON, SLTCTL_PIC_OFF = 0x100, 0x300  # power indicator
TIMEOUT = 30.0


def pattern(seed: int, n: int = PAGE) -> bytes:
    return bytes((seed * 29 + i * 5) & 0xFF for i in range(n))


class HotplugLab(QtestMachine):
    """q35 with the vIOMMU and an empty hotpluggable root port ``rp0``."""

    def __init__(
        self, default_mode: str | None = None, extra: tuple[str, ...] = (), acpi: bool = False
    ) -> None:
        viommu = f"iommulab-viommu,id={IOMMU}"
        if default_mode:
            viommu += f",default-mode={default_mode}"
        super().__init__(
            qemu_binary(),
            [
                "-machine", "q35", "-m", str(RAM >> 20),
                # native PCIe hotplug on the root port (pciehp), unless ACPI's is asked for
                "-global",
                f"ICH9-LPC.acpi-pci-hotplug-with-bridge-support={'on' if acpi else 'off'}",
                "-device", viommu,
                "-device", "pcie-root-port,id=rp0,bus=pcie.0,addr=04.0,chassis=1,slot=1",
                *extra,
            ],
            prefix="iommulab-unplug-",
        )  # fmt: skip
        self._port_setup()

    # --- config space (mechanism #1) ---
    def cfg_read(self, bus: int, devfn: int, reg: int) -> int:
        self.qt.outl(0xCF8, 0x80000000 | bus << 16 | devfn << 8 | reg)
        return self.qt.inl(0xCFC)

    def cfg_write(self, bus: int, devfn: int, reg: int, val: int) -> None:
        self.qt.outl(0xCF8, 0x80000000 | bus << 16 | devfn << 8 | reg)
        self.qt.outl(0xCFC, val)

    def _port_setup(self) -> None:
        self.cfg_write(0, PORT_DEVFN, 0x18, SEC_BUS << 16 | SEC_BUS << 8)  # sec = sub = 1
        base = EDU_BAR >> 16
        self.cfg_write(0, PORT_DEVFN, 0x20, base << 16 | base)  # a 1 MiB memory window
        self.cfg_write(0, PORT_DEVFN, 0x04, 0x6)  # memory space + bus master
        cap = self.cfg_read(0, PORT_DEVFN, 0x34) & 0xFC
        while cap and self.cfg_read(0, PORT_DEVFN, cap) & 0xFF != PCI_CAP_ID_EXP:
            cap = self.cfg_read(0, PORT_DEVFN, cap) >> 8 & 0xFC
        assert cap, "no PCIe capability on the root port"
        self.sltctl = cap + 0x18

    def slot_power(self, on: bool) -> None:
        """The guest's Slot Control write (Slot Status above it: 0 clears nothing)."""
        val = self.cfg_read(0, PORT_DEVFN, self.sltctl) & 0xFFFF & ~(SLTCTL_PCC | 0x300)
        val |= SLTCTL_PIC_ON if on else SLTCTL_PCC | SLTCTL_PIC_OFF
        self.cfg_write(0, PORT_DEVFN, self.sltctl, val)

    # --- the edu in the port's slot (01:00.0) ---
    def edu_setup(self) -> None:
        assert self.cfg_read(SEC_BUS, 0, 0) == 0x11E81234, "edu not at 01:00.0"
        self.cfg_write(SEC_BUS, 0, 0x10, EDU_BAR)
        self.cfg_write(SEC_BUS, 0, 0x04, 0x6)
        assert self.qt.readl(EDU_BAR) == 0x010000ED

    def plug(self, dev_id: str) -> None:
        self.qmp.cmd("device_add", driver="edu", id=dev_id, bus="rp0", dma_mask=0xFFFFFFFFFFFFFFFF)
        self.slot_power(True)  # an empty slot is off after reset; pciehp powers it on
        self.edu_setup()

    def unplug(self, dev_id: str) -> None:
        """device_del, the guest's ack (slot off), DEVICE_DELETED."""
        self.qmp.events()  # forget older events
        self.qmp.cmd("device_del", id=dev_id)
        self.slot_power(False)
        while self.qmp.wait_event("DEVICE_DELETED", TIMEOUT)["data"].get("device") != dev_id:
            pass

    def dma(self, src: int, dst: int, to_memory: bool) -> None:
        self.qt.writeq(EDU_BAR + 0x80, src)
        self.qt.writeq(EDU_BAR + 0x88, dst)
        self.qt.writeq(EDU_BAR + 0x90, PAGE)
        self.qt.writeq(EDU_BAR + 0x98, 1 | (2 if to_memory else 0))
        self.qt.clock_step(200_000_000)  # edu runs the DMA from a 100 ms timer
        assert self.qt.readq(EDU_BAR + 0x98) & 1 == 0, "edu DMA did not run"

    # --- QMP on viommu0 ---
    def cmd(self, name: str, **args: Any) -> Any:
        args = {k.replace("_", "-"): v for k, v in args.items()}
        args.setdefault("iommu", IOMMU)
        return self.qmp.cmd(name, **args)

    def domain(self, dom: int) -> dict[str, Any]:
        found: dict[str, Any] = next(
            d for d in self.cmd("x-iommulab-query")["domains"] if d["domain"] == dom
        )
        return found

    def devices(self) -> list[dict[str, Any]]:
        """The edu devices the vIOMMU lists (the chipset and the port are there too)."""
        devs: list[dict[str, Any]] = self.cmd("x-iommulab-query")["devices"]
        return [d for d in devs if d.get("id", "").startswith("edu")]

    def paging(self, dom: int) -> None:
        self.cmd("x-iommulab-domain-alloc", domain=dom, type="paging")
        self.cmd(
            "x-iommulab-map",
            domain=dom,
            mappings=[
                {"iova": IOVA_SRC, "size": PAGE, "addr": SRC, "read": True, "write": False},
                {"iova": IOVA_DST, "size": PAGE, "addr": DST, "read": False, "write": True},
            ],
        )

    def copy_through(self, seed: int) -> None:
        """edu reads IOVA_SRC and writes IOVA_DST; the bytes land at DST."""
        self.qt.memwrite(SRC, pattern(seed))
        self.qt.memset(DST, PAGE, 0)
        self.dma(IOVA_SRC, EDU_BUF, to_memory=False)
        self.dma(EDU_BUF, IOVA_DST, to_memory=True)
        assert self.qt.memread(DST, PAGE) == pattern(seed)


@pytest.fixture
def hot() -> Iterator[HotplugLab]:
    lab = HotplugLab()
    try:
        yield lab
    finally:
        lab.close()


def test_unplug_forgets_the_device_and_a_new_one_starts_blocked(hot: HotplugLab) -> None:
    hot.plug("edu1")
    hot.paging(1)
    hot.cmd("x-iommulab-attach", device="edu1", mode="domain", domain=1)
    hot.copy_through(1)
    assert hot.domain(1)["devices"] == 1
    assert [(d["id"], d["mode"], d["domain"]) for d in hot.devices()] == [("edu1", "domain", 1)]
    assert hot.cmd("x-iommulab-query-counters")["iotlb-entries"] > 0
    with pytest.raises(ExecuteError, match="domain 1 is in use: 1 device"):
        hot.cmd("x-iommulab-domain-free", domain=1)

    hot.unplug("edu1")
    assert hot.devices() == []
    assert hot.domain(1)["devices"] == 0
    # the domain's IOTLB entries went with the device (the only user)
    assert hot.cmd("x-iommulab-query-counters")["iotlb-entries"] == 0
    with pytest.raises(ExecuteError, match="'edu1' is not a PCI device"):
        hot.cmd("x-iommulab-attach", device="edu1", mode="blocked")

    # A new device in the same slot, while domain 1 still maps DST: blocked.
    hot.plug("edu2")
    (dev,) = hot.devices()
    assert (dev["id"], dev["mode"], dev["requester-id"]) == ("edu2", "blocked", SEC_BUS << 8)
    assert "domain" not in dev
    hot.qt.memwrite(SRC, pattern(2))
    hot.qt.memset(DST, PAGE, 0x5A)  # canary
    hot.cmd("x-iommulab-query-faults", clear=True)
    hot.dma(IOVA_SRC, EDU_BUF, to_memory=False)
    hot.dma(EDU_BUF, IOVA_DST, to_memory=True)
    assert hot.qt.memread(DST, PAGE) == b"\x5a" * PAGE
    f = hot.cmd("x-iommulab-query-faults", clear=True)["faults"]
    assert [(x["device"], x["iova"], x["access"], x["stage"], x["reason"]) for x in f] == [
        ("/machine/peripheral/edu2", IOVA_SRC, "read", "device", "blocked"),
        ("/machine/peripheral/edu2", IOVA_DST, "write", "device", "blocked"),
    ]
    assert all(x["requester-id"] == SEC_BUS << 8 and "domain" not in x for x in f)

    # The old domain is free to go; the new device is attached by its own name.
    hot.cmd("x-iommulab-domain-free", domain=1)
    assert hot.cmd("x-iommulab-query")["domains"] == []
    hot.paging(2)
    hot.cmd("x-iommulab-attach", device="edu2", mode="domain", domain=2)
    hot.copy_through(3)
    assert hot.domain(2)["devices"] == 1
    assert hot.cmd("x-iommulab-query-faults", clear=True)["faults"] == []


def test_unplug_keeps_the_other_users_of_the_domain() -> None:
    """A domain shared with a device that stays: only the unplugged one is
    dropped from it; the other keeps translating (its entries refill)."""
    lab = HotplugLab(extra=("-device", "edu,id=edu9,bus=pcie.0,addr=05.0"))
    try:
        lab.plug("edu1")
        lab.paging(1)
        for dev in ("edu1", "edu9"):
            lab.cmd("x-iommulab-attach", device=dev, mode="domain", domain=1)
        lab.copy_through(1)
        assert lab.domain(1)["devices"] == 2
        lab.unplug("edu1")
        assert lab.domain(1)["devices"] == 1
        assert [(d["id"], d["mode"], d["domain"]) for d in lab.devices()] == [("edu9", "domain", 1)]
        tr = lab.cmd("x-iommulab-translate", device="edu9", iova=IOVA_DST + 8, access="write")
        assert tr["allowed"] and tr["addr"] == DST + 8
        with pytest.raises(ExecuteError, match="in use: 1 device"):
            lab.cmd("x-iommulab-domain-free", domain=1)
    finally:
        lab.close()


def test_a_new_device_starts_in_the_default_mode_bypass() -> None:
    lab = HotplugLab(default_mode="bypass")
    try:
        lab.plug("edu1")
        lab.paging(1)
        lab.cmd("x-iommulab-attach", device="edu1", mode="domain", domain=1)
        lab.unplug("edu1")
        assert lab.domain(1)["devices"] == 0
        lab.plug("edu2")
        assert [(d["id"], d["mode"]) for d in lab.devices()] == [("edu2", "bypass")]
        # bypass: IOVA = guest physical, not domain 1's translation
        tr = lab.cmd("x-iommulab-translate", device="edu2", iova=IOVA_DST, access="write")
        assert tr["allowed"] and tr["addr"] == IOVA_DST
        lab.cmd("x-iommulab-domain-free", domain=1)
    finally:
        lab.close()


def test_unplugging_a_switch_forgets_the_devices_below_it() -> None:
    """A PCIe switch unplugged from the root port takes its buses along: the
    device below it leaves its domain, and the vIOMMU's requesters of the gone
    buses no longer point at them (the query and the fault queue still work)."""
    lab = HotplugLab(
        extra=(
            "-device", "x3130-upstream,id=up0,bus=rp0",
            "-device", "xio3130-downstream,id=dn0,bus=up0,chassis=2,slot=0",
            "-device", "edu,id=edu5,bus=dn0",
        )
    )  # fmt: skip
    try:
        lab.paging(1)
        lab.cmd("x-iommulab-attach", device="edu5", mode="domain", domain=1)
        assert lab.domain(1)["devices"] == 1
        lab.slot_power(True)  # populated at reset, so already on; the guest's view
        lab.unplug("up0")
        assert lab.domain(1)["devices"] == 0
        assert lab.devices() == []
        paths = {d["device"] for d in lab.cmd("x-iommulab-query")["devices"]}
        assert not any(p.startswith("/machine/peripheral/up0") for p in paths)
        assert "/machine/peripheral/dn0" not in paths
        lab.cmd("x-iommulab-query-faults")
        lab.cmd("x-iommulab-domain-free", domain=1)
        # the slot takes a new device, blocked
        lab.plug("edu6")
        assert [(d["id"], d["mode"]) for d in lab.devices()] == [("edu6", "blocked")]
    finally:
        lab.close()


def test_a_requester_shared_behind_a_pcie_to_pci_bridge_stays_while_used() -> None:
    """Behind a PCIe-to-PCI bridge every device's DMA uses one requester
    (secondary bus, 00.0): unplugging one device leaves it attached for the
    others; the last one out detaches it.  ACPI PCI hotplug (q35's default)
    completes a requested unplug at a reset, with no guest to eject it, as in
    QEMU's device-plug-test."""
    lab = HotplugLab(
        extra=(
            "-device", "pcie-pci-bridge,id=br0,bus=rp0",
            "-device", "edu,id=eduA,bus=br0,addr=1.0",
            "-device", "edu,id=eduB,bus=br0,addr=2.0",
        ),
        acpi=True,
    )  # fmt: skip
    try:
        lab.paging(1)
        lab.cmd("x-iommulab-attach", device="eduA", mode="domain", domain=1)
        assert lab.domain(1)["devices"] == 1
        tr = lab.cmd("x-iommulab-translate", device="eduB", iova=IOVA_DST, access="write")
        assert tr["allowed"] and tr["addr"] == DST  # the same requester

        def remove(dev_id: str) -> None:
            lab.qmp.events()
            lab.qmp.cmd("device_del", id=dev_id)
            lab.qmp.cmd("system_reset")
            while lab.qmp.wait_event("DEVICE_DELETED", TIMEOUT)["data"].get("device") != dev_id:
                pass

        remove("eduA")
        assert lab.domain(1)["devices"] == 1
        tr = lab.cmd("x-iommulab-translate", device="eduB", iova=IOVA_DST, access="write")
        assert tr["allowed"] and tr["addr"] == DST
        remove("eduB")
        assert lab.domain(1)["devices"] == 0
        lab.cmd("x-iommulab-domain-free", domain=1)
    finally:
        lab.close()


# --- pseries: the stage 2 beneath a PHB (iommulab-spapr-s2) when a PHB goes ---


def spapr_unplug_phb(vm: PseriesQtest, phb_id: str) -> None:
    """device_del of a PHB, completed by a reset (the DRC releases a PHB whose
    unplug was requested, spapr_drc_reset_all), as a guest's release would."""
    vm.qmp.events()
    vm.qmp.cmd("device_del", id=phb_id)
    vm.qmp.cmd("system_reset")
    while vm.qmp.wait_event("DEVICE_DELETED", TIMEOUT)["data"].get("device") != phb_id:
        pass


def test_spapr_s2_whose_phb_is_unplugged_serves_nothing() -> None:
    """s2 on PHB 0's bus serving PHB 1 (phb=1): PHB 1 goes, s2 stays and
    describes no PE any more (it pointed at the PHB)."""
    vm = PseriesQtest(
        qemu_binary("ppc64"),
        [
            "-device", "spapr-pci-host-bridge,index=1,id=phb1",
            "-device", "edu,id=edu1,bus=phb1.0",
            "-device", "iommulab-spapr-s2,id=s2,bus=pci.0,phb=1",
        ],
    )  # fmt: skip
    try:
        assert vm.cmd("x-iommulab-query-hw-info", device="s2")["spapr-pe"]["phb"] == 1
        vm.cmd("x-iommulab-domain-alloc", iommu="s2", domain=1, type="paging")
        vm.cmd("x-iommulab-attach", iommu="s2", device="s2", mode="domain", domain=1)
        spapr_unplug_phb(vm, "phb1")
        info = vm.cmd("x-iommulab-query-hw-info", device="s2")
        assert info["type"] == "spapr-stage2" and "spapr-pe" not in info
        assert [p["phb"] for p in vm.cmd("x-iommulab-spapr-query-phbs")] == [0]
        vm.cmd("x-iommulab-query-faults")
        # the domain stays the control plane's (the requester is s2's own)
        assert vm.cmd("x-iommulab-query", iommu="s2")["domains"][0]["devices"] == 1
    finally:
        vm.close()


def test_spapr_s2_unplugged_with_its_bus_gives_the_phb_back() -> None:
    """s2 on PHB 1's bus serving PHB 0 (phb=0): PHB 1 goes with s2 on it; PHB
    0's TCE tables output to system memory again (no stage 2 left over)."""
    vm = PseriesQtest(
        qemu_binary("ppc64"),
        [
            "-device", "spapr-pci-host-bridge,index=1,id=phb1",
            "-device", "iommulab-spapr-s2,id=s2,bus=phb1.0,phb=0",
        ],
    )  # fmt: skip

    def stage2_of_phb0() -> str | None:
        pe: dict[str, Any] = vm.cmd("x-iommulab-query-hw-info", device="edu0")["spapr-pe"]
        return pe.get("stage2")

    try:
        assert stage2_of_phb0() == "/machine/peripheral/s2"
        spapr_unplug_phb(vm, "phb1")
        assert stage2_of_phb0() is None
        with pytest.raises(ExecuteError, match="'s2' is not an iommulab-viommu"):
            vm.cmd("x-iommulab-query", iommu="s2")
        vm.cmd("x-iommulab-query-faults")
    finally:
        vm.close()
