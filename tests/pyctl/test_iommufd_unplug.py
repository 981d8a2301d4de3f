"""The model follows hot-unplug (DEVICE_DELETED) on the real iommulab-viommu.

q35 under qtest with two hotpluggable PCIe root ports.  No guest runs, so the
slots stay powered off (an empty slot is off after reset) and QEMU unplugs a
device from a powered-off slot at once, without the guest's ack
(pcie_cap_slot_unplug_request_cb); DMA through a re-plugged device and the
guest's part are in tests/device/test_unplug.py and the boot test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from testvm import needs_viommu, qemu_binary

from pyctl.iommufd import IommufdContext, IommufdError
from pyctl.iommufd.objects import Device, HwptPaging
from pyctl.iommufd.qmp_backend import QmpBackend
from pyctl.iommufd.unplug import UnplugFollower, deleted_paths
from pyctl.qemu.qtest_machine import QtestMachine

RW = 6
MIB = 1 << 20

_BIN = qemu_binary()
pytestmark = needs_viommu


@pytest.fixture
def vm() -> Iterator[QtestMachine]:
    assert _BIN is not None
    m = QtestMachine(
        _BIN,
        [
            "-machine", "q35", "-m", "256",
            "-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
            "-device", "iommulab-viommu,id=viommu0",
            "-device", "edu,id=edu0",
            "-device", "pcie-root-port,id=rp0,chassis=1,slot=1",
            "-device", "pcie-root-port,id=rp1,chassis=2,slot=2",
        ],
        prefix="iommulab-unplug-model-",
    )  # fmt: skip
    try:
        yield m
    finally:
        m.close()


def plug(vm: QtestMachine, dev_id: str, port: str) -> None:
    vm.qmp.cmd("device_add", driver="edu", id=dev_id, bus=port)


def unplug(vm: QtestMachine, dev_id: str) -> None:
    vm.qmp.events()
    vm.qmp.cmd("device_del", id=dev_id)
    while vm.qmp.wait_event("DEVICE_DELETED", 30)["data"].get("device") != dev_id:
        pass


def test_deleted_device_is_unbound_and_its_auto_domain_freed(vm: QtestMachine) -> None:
    hw = QmpBackend(vm.qmp)
    ctx = IommufdContext(hw)
    follower = UnplugFollower(ctx)
    plug(vm, "edu1", "rp0")
    plug(vm, "edu2", "rp1")
    ioas = ctx.ioas_alloc()
    iova = ctx.ioas_map(ioas, 0x100000, 2 * MIB, RW)
    stay = ctx.bind("edu0")
    gone = ctx.bind("edu1")
    manual_user = ctx.bind("edu2")
    auto = ctx.attach(gone, ioas)
    assert ctx.attach(stay, ioas) == auto  # the two share the automatic HWPT
    manual = ctx.hwpt_alloc(manual_user, ioas)
    ctx.attach(manual_user, manual)
    assert ctx.check_hardware() == []
    assert hw.translate("edu1", iova + 8, "write").addr == 0x100008

    unplug(vm, "edu1")
    assert follower.follow(hw) == [gone]
    objs = ctx.objects()
    assert gone not in objs
    hp = objs[auto]
    assert isinstance(hp, HwptPaging) and hp.devices == {stay}  # edu0 still holds it
    assert ctx.check_hardware() == []

    # the last user of an automatic HWPT: the domain goes with it
    ctx.detach(stay)
    assert auto not in ctx.objects()
    assert {d.domain for d in hw.query().domains} == {manual}

    # a manual HWPT loses the device's reference and can then be destroyed
    unplug(vm, "edu2")
    assert follower.follow(hw) == [manual_user]
    hm = ctx.objects()[manual]
    assert isinstance(hm, HwptPaging) and hm.devices == set()
    assert ctx.check_hardware() == []
    ctx.destroy(manual)
    assert hw.query().domains == ()
    assert ctx.check_hardware() == []

    # the names are gone; a new edu1 in the same slot binds blocked
    with pytest.raises(IommufdError) as ei:
        ctx.bind("edu2")
    assert ei.value.errno == "ENOENT"
    plug(vm, "edu1", "rp0")
    new = ctx.bind("edu1")
    assert [o.name for o in ctx.objects().values() if isinstance(o, Device)] == [
        "/machine/peripheral/edu0",
        "/machine/peripheral/edu1",
    ]
    t = hw.translate("edu1", iova, "read")
    assert not t.allowed and t.reason == "blocked"
    ctx.attach(new, ioas)
    assert hw.translate("edu1", iova + 8, "read").addr == 0x100008
    assert ctx.check_hardware() == []


def test_only_bound_devices_are_removed(vm: QtestMachine) -> None:
    hw = QmpBackend(vm.qmp)
    ctx = IommufdContext(hw)
    plug(vm, "edu1", "rp0")
    dev = ctx.bind("edu0")
    unplug(vm, "edu1")  # never bound
    events = hw.events()
    assert deleted_paths(events) == ["/machine/peripheral/edu1"]
    assert UnplugFollower(ctx).handle(events) == []
    assert UnplugFollower(ctx).handle([{"event": "RESET", "data": {}}]) == []
    assert list(ctx.objects()) == [dev]
    assert ctx.check_hardware() == []
