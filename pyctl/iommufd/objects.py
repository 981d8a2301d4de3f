"""The objects of an iommufd context (IOAS, HWPT_PAGING, HWPT_NESTED, DEVICE)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .allocator import HoleSet, allocatable_base
from .areas import AreaTree
from .backend import DeviceHwInfo
from .ranges import Range, complement, normalize
from .uapi import ObjType


@dataclass
class Reserved:
    start: int
    last: int
    #: ("device", dev_id) for a device's reserved regions, ("hwpt", id) for an aperture
    owner: tuple[str, int]


@dataclass
class Ioas:
    id: int
    areas: AreaTree = field(default_factory=AreaTree)
    allowed: list[Range] = field(default_factory=list)
    reserved: list[Reserved] = field(default_factory=list)
    #: paging HWPTs (domains) of this IOAS, in the order they were added
    hwpts: list[int] = field(default_factory=list)
    huge_pages: bool = True
    holes: HoleSet = field(default_factory=lambda: HoleSet(allocatable_base([], [])))
    type: ObjType = ObjType.IOAS

    def reserved_ranges(self) -> list[Range]:
        return normalize((r.start, r.last) for r in self.reserved)

    def iova_ranges(self) -> list[Range]:
        return complement(self.reserved_ranges())

    def rebuild_holes(self) -> None:
        base = allocatable_base(self.allowed, self.reserved_ranges())
        if base == self.holes.base:
            return
        holes = HoleSet(base)
        for a in self.areas:
            holes.take(a.iova, a.last)
        self.holes = holes


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
    type: ObjType = ObjType.HWPT_PAGING


@dataclass
class HwptNested:
    id: int
    parent_id: int
    s1_root: int
    ias: int
    devices: set[int] = field(default_factory=set)
    type: ObjType = ObjType.HWPT_NESTED


@dataclass
class Device:
    id: int
    name: str
    info: DeviceHwInfo
    #: the HWPT (paging or nested) the device is attached to
    hwpt_id: int | None = None
    type: ObjType = ObjType.DEVICE


Object = Ioas | HwptPaging | HwptNested | Device
