"""HWPT_PAGING and HWPT_NESTED (drivers/iommu/iommufd/hw_pagetable.c).

A paging HWPT is a domain of the hardware that mirrors its IOAS's page
table; a nested one is a guest stage-1 table on a NEST_PARENT paging HWPT.
The checks run in the kernel's order; the hardware is asked only once every
check passed (a refusal there is EIO, after undoing what already reached it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from . import ppc64_attach
from .backend import DeviceHwInfo
from .errors import IommufdError
from .io_pagetable import DomainInfo
from .objects import Device, HwptNested, HwptPaging, Ioas, Object
from .objtable import Ictx
from .pages import hw_errors
from .ppc64 import IOMMU_HWPT_DATA_PPC64_DMA_WINDOW
from .ppc64_domain import HwptPpc64
from .uapi import (
    HWPT_FLAGS_KNOWN,
    HWPT_PAGING_FLAGS_SUPPORTED,
    NEST_PARENT,
    PAGE_SIZE,
    HwptDataType,
    HwptInvalidateDataType,
    u32,
    u64,
)


@dataclass(frozen=True, slots=True)
class IommulabHwptData:
    """Driver data of IOMMU_HWPT_DATA_IOMMULAB: the guest's stage-1 table."""

    s1_root: int
    ias: int = 48


@dataclass(frozen=True, slots=True)
class IommulabInvalidateEntry:
    """One entry of IOMMU_HWPT_INVALIDATE_DATA_IOMMULAB."""

    iova: int = 0
    size: int = 0
    flags: int = 0


#: invalidate the whole stage-1 of the nested HWPT (iova/size must be 0)
IOMMULAB_INV_ALL = 1 << 0


def compatible(hwpt: HwptPaging, info: DeviceHwInfo) -> bool:
    """The driver's attach_dev() test: same kind of IOMMU, same address width."""
    if isinstance(hwpt, HwptPpc64):  # a PE's domain: that PE's devices only
        return info.spapr is not None and info.spapr.phb == hwpt.pe
    return hwpt.dev_platform == info.platform and hwpt.ias == info.ias


def paging_alloc(
    ictx: Ictx, ioas: Ioas, info: DeviceHwInfo, nest_parent: bool, auto: bool
) -> HwptPaging:
    """iommufd_hwpt_paging_alloc() without the immediate attach: a filled domain."""
    hwpt = HwptPaging(
        ictx.table.new_id(),
        ioas.id,
        info.platform,
        info.ias,
        nest_parent,
        auto,
        pgsize_bitmap=info.pgsize_bitmap,
    )
    aperture = ((info.aperture_start, (1 << info.ias) - 1),) if info.aperture_start else None
    dom = DomainInfo(hwpt.id, info.pgsize_bitmap, info.ias, aperture)
    iopt = ioas.iopt
    iopt.check_add_domain(dom)  # iopt_table_add_domain(): EINVAL, EADDRINUSE
    with hw_errors():
        ictx.backend.domain_alloc(hwpt.id, "paging", ias=info.ias)
    try:
        iopt.add_domain(dom)  # iopt_fill_domain(): ENOMEM pinning
    except IommufdError:
        ictx.backend.domain_free(hwpt.id)
        raise
    ictx.table.add(hwpt)
    return hwpt


def paging_destroy(ictx: Ictx, obj: Object) -> None:
    """iommufd_hwpt_paging_destroy(): free the domain, leave the IOAS."""
    assert isinstance(obj, HwptPaging)
    if isinstance(obj, HwptPpc64):
        ppc64_attach.destroy(ictx, obj)
        return
    with hw_errors():
        ictx.backend.domain_free(obj.id)
    ictx.ioas(obj.ioas_id).iopt.remove_domain(obj.id)


def nested_destroy(ictx: Ictx, obj: Object) -> None:
    """iommufd_hwpt_nested_destroy(): free the domain, release the parent."""
    assert isinstance(obj, HwptNested)
    with hw_errors():
        ictx.backend.domain_free(obj.id)
    parent = ictx.table.find(obj.parent_id)
    assert isinstance(parent, HwptPaging)
    parent.children.discard(obj.id)


def put_hwpt(ictx: Ictx, hwpt_id: int) -> None:
    """iommufd_hw_pagetable_put(): an automatic HWPT goes with its last device."""
    h = ictx.table.find(hwpt_id)
    if isinstance(h, HwptPaging) and h.auto and not h.holders():
        paging_destroy(ictx, h)
        ictx.table.forget(h.id)


def hwpt_alloc(
    ictx: Ictx, dev_id: object, pt_id: object, flags: object, data_type: object, data: object
) -> int:
    """iommufd_hwpt_alloc(): a paging HWPT on an IOAS or a nested one on a NEST_PARENT."""
    fl = u32("flags", flags)
    dt = u32("data_type", data_type)
    if (dt == HwptDataType.IOMMU_HWPT_DATA_NONE) != (data is None):
        raise IommufdError("EINVAL", "data_type and data disagree")
    dev = ictx.dev(dev_id)  # iommufd_get_device(): ENOENT
    pt_oid = u32("pt_id", pt_id)
    pt = ictx.table.find(pt_oid)
    if pt is None:  # iommufd_hwpt_alloc(): a failed pt lookup is EINVAL here
        raise IommufdError("EINVAL", f"no object with id {pt_oid}")
    if isinstance(pt, Ioas) and dt == IOMMU_HWPT_DATA_PPC64_DMA_WINDOW:
        return ppc64_attach.hwpt_alloc(ictx, dev, pt, fl, data)
    if isinstance(pt, Ioas):
        # iommufd_hwpt_paging_alloc(): unknown flags, then the driver's refusals
        if fl & ~HWPT_FLAGS_KNOWN or fl & ~HWPT_PAGING_FLAGS_SUPPORTED:
            raise IommufdError("EOPNOTSUPP", f"HWPT_ALLOC flags {fl:#x} not supported")
        if data is not None:
            raise IommufdError("EOPNOTSUPP", "paging HWPT takes no driver data")
        return paging_alloc(ictx, pt, dev.info, bool(fl & NEST_PARENT), auto=False).id
    if isinstance(pt, HwptPaging):
        return _nested_alloc(ictx, pt, dev, fl, dt, data)
    raise IommufdError("EINVAL", f"object {pt_oid} is a {pt.type.value}")


def _nested_alloc(
    ictx: Ictx, parent: HwptPaging, dev: Device, fl: int, dt: int, data: object
) -> int:
    """iommufd_hwpt_nested_alloc() and the iommulab driver's domain_alloc_nested()."""
    # FAULT_ID_VALID would be allowed by the kernel; the model has no fault objects
    if fl or data is None or not dev.info.nesting:
        raise IommufdError("EOPNOTSUPP", "nested HWPT: flags must be 0, data required")
    if parent.auto or not parent.nest_parent:
        raise IommufdError("EINVAL", f"HWPT {parent.id} is not a NEST_PARENT")
    if not compatible(parent, dev.info):  # parent->common.domain->owner != ops
        raise IommufdError("EINVAL", f"HWPT {parent.id} belongs to another kind of IOMMU")
    if dt != HwptDataType.IOMMU_HWPT_DATA_IOMMULAB:
        raise IommufdError("EOPNOTSUPP", f"data_type {dt} not supported by this IOMMU")
    if not isinstance(data, IommulabHwptData):
        raise IommufdError("EINVAL", "data must be IommulabHwptData")
    root = u64("s1_root", data.s1_root)
    if root % PAGE_SIZE:
        raise IommufdError("EINVAL", f"stage-1 root {root:#x} is not 4 KiB aligned")
    s1_ias = dev.info.s1_ias  # the stage-1 format the device reports
    if data.ias != s1_ias:
        raise IommufdError("EINVAL", f"stage-1 address width {data.ias} is not {s1_ias}")
    nid = ictx.table.new_id()
    with hw_errors():
        ictx.backend.domain_alloc(nid, "nested", parent=parent.id, s1_root=root)
    ictx.table.add(HwptNested(nid, parent.id, root, s1_ias))
    parent.children.add(nid)
    return nid


def hwpt_invalidate(
    ictx: Ictx, hwpt_id: object, data_type: object, entries: Sequence[object]
) -> int:
    """iommufd_hwpt_invalidate() and the driver's cache_invalidate_user().

    All entries are checked before any reaches the hardware (the model's
    choice; the kernel reports how many it did): a bad one raises with
    ``entry_num`` = its index and no entry was applied.
    """
    obj = ictx.table.get_any(hwpt_id, "hwpt_id")  # ENOENT
    if not isinstance(obj, HwptNested):
        raise IommufdError("EINVAL", f"object {obj.id} is not a nested HWPT")
    if u32("data_type", data_type) != HwptInvalidateDataType.IOMMU_HWPT_INVALIDATE_DATA_IOMMULAB:
        raise IommufdError("EINVAL", f"data_type {data_type} not supported", entry_num=0)
    todo: list[tuple[int | None, int | None]] = []
    for i, e in enumerate(entries):
        if not isinstance(e, IommulabInvalidateEntry):
            raise IommufdError(
                "EINVAL", f"entry {i} is not an IommulabInvalidateEntry", entry_num=i
            )
        fl = u32(f"entry {i} flags", e.flags)
        io, sz = u64(f"entry {i} iova", e.iova), u64(f"entry {i} size", e.size)
        if fl & ~IOMMULAB_INV_ALL:
            raise IommufdError("EOPNOTSUPP", f"entry {i} flags {fl:#x}", entry_num=i)
        if fl & IOMMULAB_INV_ALL:
            if io or sz:
                raise IommufdError("EINVAL", f"entry {i}: ALL with a range", entry_num=i)
            todo.append((None, None))
            continue
        if not sz or io % PAGE_SIZE or sz % PAGE_SIZE or io + sz > (1 << obj.ias):
            raise IommufdError("EINVAL", f"entry {i}: bad range {io:#x}+{sz:#x}", entry_num=i)
        todo.append((io, sz))
    for io_, sz_ in todo:
        with hw_errors():
            ictx.backend.invalidate(obj.id, io_, sz_)
    return len(todo)
