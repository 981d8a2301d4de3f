"""Devices: bind, attach, replace, detach, removal (drivers/iommu/iommufd/device.c).

A device's reserved regions are what its DeviceHwInfo reports (plus, for an
sPAPR PE, everything outside its DMA windows); they are reserved in the IOAS
of the HWPT it is attached to (``iopt_table_enforce_dev_resv_regions``).
The checks run in the kernel's order: reserved regions first, then the
driver's compatibility test, then the hardware.
"""

from __future__ import annotations

from . import ppc64_attach
from .backend import DeviceHwInfo, ResvRegion, WindowBackend
from .errors import IommufdError
from .hw_pagetable import compatible, paging_alloc, paging_destroy, put_hwpt
from .objects import Device, HwptNested, HwptPaging, Ioas
from .objtable import Ictx
from .pages import hw_errors
from .ppc64_domain import HwptPpc64
from .ranges import Range, complement


def owner(dev: Device) -> tuple[str, int]:
    return ("device", dev.id)


def device_resv(ictx: Ictx, dev: Device) -> list[ResvRegion]:
    """iommu_get_resv_regions() of the device: what it reports, and for an sPAPR PE
    the IOVA outside its current DMA windows."""
    regions = dev.info.resv_regions()
    if dev.info.platform == "spapr":
        regions += [ResvRegion(s, e, "reserved") for s, e in complement(window_ranges(ictx, dev))]
    return regions


def window_ranges(ictx: Ictx, dev: Device) -> list[Range]:
    wb = ictx.backend
    if not isinstance(wb, WindowBackend):
        return []
    with hw_errors():
        return [(w.start, w.last) for w in wb.windows(dev.name)]


def bind(ictx: Ictx, info: DeviceHwInfo) -> int:
    """iommufd_device_bind(): a DEVICE object; DMA blocked until attached."""
    oid = ictx.table.new_id()
    with hw_errors():
        ictx.backend.attach(info.device, "blocked")
    ictx.table.add(Device(oid, info.device, info))
    ictx.by_name[info.device] = oid
    return oid


def _accepts(dev: Device, hwpt: HwptPaging | HwptNested, paging: HwptPaging) -> bool:
    """The driver's attach_dev(): EINVAL when the domain is incompatible."""
    return compatible(paging, dev.info) and (isinstance(hwpt, HwptPaging) or dev.info.nesting)


def _pt(ictx: Ictx, hwpt_id: int) -> HwptPaging | HwptNested:
    h = ictx.table.find(hwpt_id)
    assert isinstance(h, HwptPaging | HwptNested)
    return h


def do_attach(ictx: Ictx, dev: Device, hwpt: HwptPaging | HwptNested) -> int:
    """iommufd_hw_pagetable_attach() for a device attached nowhere."""
    if isinstance(hwpt, HwptPpc64):  # a PE's windows (ppc64_attach.py)
        return ppc64_attach.attach(ictx, dev, hwpt)
    if dev.hwpt_id is not None:  # igroup->hwpt is another HWPT: EINVAL
        raise IommufdError("EINVAL", f"device {dev.id} is attached to HWPT {dev.hwpt_id}")
    paging = ictx.paging_of(hwpt.id)
    iopt = ictx.ioas(paging.ioas_id).iopt
    # iommufd_device_attach_reserved_iova(): EADDRINUSE, EINVAL (MSI mix)
    resv = iopt.check_dev_resv_regions(device_resv(ictx, dev), count_msi=True)
    if not _accepts(dev, hwpt, paging):  # iommufd_hwpt_attach_device(): driver says EINVAL
        raise IommufdError("EINVAL", f"HWPT {hwpt.id} is incompatible with the device")
    with hw_errors():
        ictx.backend.attach(dev.name, "domain", hwpt.id)
    iopt.reserve(resv, owner(dev))
    hwpt.devices.add(dev.id)
    dev.hwpt_id = hwpt.id
    return hwpt.id


def do_replace(ictx: Ictx, dev: Device, hwpt: HwptPaging | HwptNested) -> int:
    """iommufd_device_do_replace(): move an attached device, all or nothing."""
    if isinstance(hwpt, HwptPpc64):
        return ppc64_attach.replace(ictx, dev, hwpt)
    if dev.hwpt_id is None:
        raise IommufdError("EINVAL", f"device {dev.id} is not attached")
    if dev.hwpt_id == hwpt.id:
        return hwpt.id
    old = _pt(ictx, dev.hwpt_id)
    paging = ictx.paging_of(hwpt.id)
    old_ioas = ictx.ioas_of(old.id)
    iopt = ictx.ioas(paging.ioas_id).iopt
    moving = iopt is not old_ioas.iopt
    resv: list[Range] = []
    if moving:  # iommufd_group_do_replace_reserved_iova(): no MSI count on replace
        resv = iopt.check_dev_resv_regions(device_resv(ictx, dev), count_msi=False)
    if not _accepts(dev, hwpt, paging):  # iommufd_hwpt_replace_device()
        raise IommufdError("EINVAL", f"HWPT {hwpt.id} is incompatible with the device")
    with hw_errors():
        ictx.backend.attach(dev.name, "domain", hwpt.id)
    if moving:
        iopt.reserve(resv, owner(dev))
        old_ioas.iopt.remove_reserved(owner(dev))
    old.devices.discard(dev.id)
    hwpt.devices.add(dev.id)
    dev.hwpt_id = hwpt.id
    put_hwpt(ictx, old.id)
    return hwpt.id


def _auto_get_domain(ictx: Ictx, dev: Device, ioas: Ioas, replace: bool) -> int:
    """iommufd_device_auto_get_domain(): reuse an automatic HWPT of the IOAS, or make one.

    Each automatic HWPT is tried in turn; EINVAL (incompatible) moves on, any
    other error is the answer.  Attach makes the new domain with the device
    attached first (immediate_attach: reserved regions before the domain's own
    checks); replace makes it first and then moves the device.
    """
    step = do_replace if replace else do_attach
    for hid in list(ioas.hwpts):
        h = ictx.table.find(hid)
        if not (isinstance(h, HwptPaging) and h.auto):
            continue
        try:
            return step(ictx, dev, h)
        except IommufdError as e:
            if e.errno != "EINVAL":
                raise
    if not replace:
        ioas.iopt.check_dev_resv_regions(device_resv(ictx, dev), count_msi=True)
    new = paging_alloc(ictx, ioas, dev.info, nest_parent=False, auto=True)
    try:
        return step(ictx, dev, new)
    except IommufdError:
        paging_destroy(ictx, new)  # iommufd_object_abort_and_destroy()
        ictx.table.forget(new.id)
        raise


def change_pt(ictx: Ictx, dev: Device, pt_id: object, replace: bool) -> int:
    """iommufd_device_change_pt(): attach or replace to an IOAS or a HWPT."""
    pt = ictx.table.get_any(pt_id, "pt_id")  # ENOENT
    if isinstance(pt, HwptPaging | HwptNested):
        return do_replace(ictx, dev, pt) if replace else do_attach(ictx, dev, pt)
    if isinstance(pt, Ioas):
        if replace and dev.hwpt_id is None:  # iommufd_device_do_replace(): EINVAL
            raise IommufdError("EINVAL", f"device {dev.id} is not attached")
        return _auto_get_domain(ictx, dev, pt, replace)
    raise IommufdError("EINVAL", f"object {pt.id} is a {pt.type.value}, not a page table")


def detach(ictx: Ictx, dev: Device) -> None:
    """iommufd_device_detach(): blocked again; an unused automatic HWPT goes away."""
    assert dev.hwpt_id is not None
    old = _pt(ictx, dev.hwpt_id)
    if isinstance(old, HwptPpc64):  # the PE's native BLOCKED domain
        ppc64_attach.detach(ictx, dev, old)
        return
    with hw_errors():
        ictx.backend.attach(dev.name, "blocked")
    ictx.ioas_of(old.id).iopt.remove_reserved(owner(dev))
    old.devices.discard(dev.id)
    dev.hwpt_id = None
    put_hwpt(ictx, old.id)


def removed(ictx: Ictx, dev: Device) -> None:
    """The device is gone (hot-unplug): the DEVICE object goes, with its HWPT reference.

    A kernel cannot lose a bound device: VFIO's remove waits for the VMM to
    close the device file, and that close is vfio_df_unbind_iommufd() ->
    iommufd_device_unbind(): detach, then destroy the DEVICE.  Here the vIOMMU
    has already forgotten the device on unplug (it detached it; its domain no
    longer counts it), so nothing is programmed for the device: the model
    drops its reserved regions, its HWPT's reference and the object.  An
    automatic HWPT it was the last user of is freed (iommufd_hw_pagetable_put),
    in the hardware too; should that free fail, the device is gone all the
    same and the unused HWPT stays in the model and the hardware, in sync.
    """
    old = _pt(ictx, dev.hwpt_id) if dev.hwpt_id is not None else None
    if old is not None:
        ictx.ioas_of(old.id).iopt.remove_reserved(owner(dev))
        old.devices.discard(dev.id)
        dev.hwpt_id = None
    del ictx.by_name[dev.name]
    ictx.table.forget(dev.id)
    if old is not None:
        put_hwpt(ictx, old.id)


def refresh_resv(ictx: Ictx, dev: Device) -> None:
    """The device's reserved regions changed (sPAPR windows): follow them in its IOAS."""
    if dev.hwpt_id is None:
        return
    iopt = ictx.ioas_of(dev.hwpt_id).iopt
    iopt.remove_reserved(owner(dev))
    regions = [r for r in device_resv(ictx, dev) if r.kind != "direct-relaxable"]
    iopt.reserve([(r.start, r.last) for r in regions], owner(dev))
