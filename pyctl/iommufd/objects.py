"""The objects of an iommufd context (IOAS, HWPT_PAGING, HWPT_NESTED, DEVICE).

Each type says who holds a reference to it (``holders``): the kernel's
``obj->users`` beyond the object table's own.  IOMMU_DESTROY refuses with
EBUSY while there is any (``iommufd_object_remove``); see objtable.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .allocator import HoleSet
from .areas import AreaTree
from .backend import DeviceHwInfo
from .io_pagetable import IoPagetable, Reserved
from .ranges import Range
from .uapi import ObjType


@dataclass
class Ioas:
    """``struct iommufd_ioas``: an id around an :class:`IoPagetable`."""

    id: int
    iopt: IoPagetable
    type: ObjType = ObjType.IOAS

    # views of the page table, as the kernel reaches them through ioas->iopt
    @property
    def areas(self) -> AreaTree:
        return self.iopt.areas

    @property
    def allowed(self) -> list[Range]:
        return self.iopt.allowed

    @property
    def reserved(self) -> list[Reserved]:
        return self.iopt.reserved

    @property
    def hwpts(self) -> list[int]:
        """Paging HWPTs (domains) of this IOAS, in the order they were added."""
        return self.iopt.domain_ids

    @property
    def huge_pages(self) -> bool:
        return not self.iopt.disable_large_pages

    @property
    def holes(self) -> HoleSet:
        return self.iopt.holes

    def reserved_ranges(self) -> list[Range]:
        return self.iopt.reserved_ranges()

    def iova_ranges(self) -> list[Range]:
        return self.iopt.iova_ranges()

    def holders(self) -> list[str]:
        # each HWPT_PAGING holds its IOAS (iommufd_hwpt_paging_alloc)
        return [f"HWPT {h}" for h in self.iopt.domain_ids]


@dataclass
class HwptPaging:
    id: int
    ioas_id: int
    dev_platform: str
    ias: int
    nest_parent: bool
    auto: bool
    devices: set[int] = field(default_factory=set)
    children: set[int] = field(default_factory=set)
    pgsize_bitmap: int = 1 << 12
    type: ObjType = ObjType.HWPT_PAGING

    def holders(self) -> list[str]:
        # attached devices and nested children hold it (iommufd_hw_pagetable_attach,
        # iommufd_hwpt_nested_alloc)
        return [f"DEVICE {d}" for d in sorted(self.devices)] + [
            f"nested HWPT {c}" for c in sorted(self.children)
        ]


@dataclass
class HwptNested:
    id: int
    parent_id: int
    s1_root: int
    ias: int
    devices: set[int] = field(default_factory=set)
    type: ObjType = ObjType.HWPT_NESTED

    def holders(self) -> list[str]:
        return [f"DEVICE {d}" for d in sorted(self.devices)]


@dataclass
class Device:
    id: int
    name: str
    info: DeviceHwInfo
    #: the HWPT (paging or nested) the device is attached to
    hwpt_id: int | None = None
    type: ObjType = ObjType.DEVICE

    def holders(self) -> list[str]:
        # the binding driver is a user until unbind (iommufd_device_bind)
        return ["its VFIO binding (unbind it)"]


@dataclass
class Selftest:
    """``struct selftest_obj`` (drivers/iommu/iommufd/selftest.c): a mock device of the
    kernel's selftest and its binding, destroyed to detach and unbind it
    (:mod:`pyctl.conformance.selftest`)."""

    id: int
    dev_id: int | None = None
    type: ObjType = ObjType.SELFTEST

    def holders(self) -> list[str]:
        return []


Object = Ioas | HwptPaging | HwptNested | Device | Selftest

__all__ = ["Device", "HwptNested", "HwptPaging", "Ioas", "Object", "Reserved", "Selftest"]
