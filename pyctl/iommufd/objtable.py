"""The object table and the context state (drivers/iommu/iommufd/main.c).

``ObjectTable`` is the ctx's ``objects`` xarray: ids are the lowest free
from 1 (``xa_alloc`` with ``XA_FLAGS_ALLOC1``, EBUSY when the 31-bit space is
full); lookup by id and type (ENOENT, ``iommufd_get_object``); IOMMU_DESTROY
(``iommufd_object_remove``): ENOENT, EBUSY while another object or a driver
holds it (each type's ``holders()``, the kernel's ``users`` refcount), else
the type's destroy hook (``iommufd_object_ops[type].destroy``).

``Ictx`` is ``struct iommufd_ctx``: the hardware, the table, the pinning,
the bound devices by name and the options of the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from .allocator import HPAGE_SIZE
from .backend import HardwareBackend
from .errors import IommufdError
from .io_pagetable import IoPagetable
from .objects import Device, HwptNested, HwptPaging, Ioas, Object
from .pinning import Pins
from .uapi import PAGE_SIZE, ObjType, u32

#: ids are u32 in the uAPI; the xarray hands them out below 2^31 (xa_limit_31b)
MAX_ID = (1 << 31) - 1

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ModelOptions:
    """Where the model deliberately differs from the kernel, and the switch back.

    ``atomic_unmap``: UNMAP checks the whole range first and unmaps all or
    nothing; False = ``iopt_unmap_iova_range()``: areas go in IOVA order until
    one would be split, those before it stay unmapped.
    ``pin_per_guest_page``: a guest page is charged once per account; False =
    the kernel's per-``iopt_pages`` charge (each MAP its own, COPY shared).
    ``max_iova_alignment``: ``iopt_alloc_iova()``'s cap on the automatic IOVA
    alignment: HPAGE_SIZE (2 MiB) with CONFIG_TRANSPARENT_HUGEPAGE, PAGE_SIZE
    without (None: no cap, as kernels before the cap).
    ``page_size``: the kernel's PAGE_SIZE (64 KiB on a ppc64le kernel built with
    64K pages): the IOAS alignment without huge pages, the largest domain page
    an IOAS accepts, the in-page offset of a user address, the allocator's
    first IOVA.  Pin accounting counts 4 KiB pages whatever it is.
    """

    atomic_unmap: bool = True
    pin_per_guest_page: bool = True
    max_iova_alignment: int | None = HPAGE_SIZE
    page_size: int = PAGE_SIZE


class ObjectTable:
    """The ctx's objects by id, with the destroy rules of main.c."""

    def __init__(self) -> None:
        self._objects: dict[int, Object] = {}
        self._destroy: dict[ObjType, Callable[[Object], None]] = {}

    def register_destroy(self, type: ObjType, hook: Callable[[Object], None]) -> None:
        """``iommufd_object_ops[type].destroy``: undo the object in hardware and relations."""
        self._destroy[type] = hook

    # -- ids and lookup ---------------------------------------------------------
    def new_id(self) -> int:
        """_iommufd_object_alloc(): xa_alloc, lowest free id from 1; EBUSY when full."""
        i = 1
        while i in self._objects:
            i += 1
        if i > MAX_ID:
            raise IommufdError("EBUSY", "no free object id")
        return i

    def add(self, obj: Object) -> None:
        """iommufd_object_finalize()."""
        self._objects[obj.id] = obj

    def forget(self, oid: int) -> None:
        """Drop an object whose relations the caller has already undone."""
        del self._objects[oid]

    def get_any(self, obj_id: object, what: str = "id") -> Object:
        """iommufd_get_object(IOMMUFD_OBJ_ANY): ENOENT."""
        oid = u32(what, obj_id)
        obj = self._objects.get(oid)
        if obj is None:
            raise IommufdError("ENOENT", f"no object with id {oid}")
        return obj

    def get(self, obj_id: object, cls: type[T], what: str) -> T:
        """iommufd_get_object(type): ENOENT for a missing id or another type."""
        obj = self.get_any(obj_id, f"{what} id")
        if not isinstance(obj, cls):
            raise IommufdError("ENOENT", f"object {obj.id} is a {obj.type.value}, not a {what}")
        return obj

    def find(self, oid: int) -> Object | None:
        return self._objects.get(oid)

    def __contains__(self, oid: object) -> bool:
        return oid in self._objects

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._objects))

    def __len__(self) -> int:
        return len(self._objects)

    def snapshot(self) -> dict[int, Object]:
        return dict(self._objects)

    def clear(self) -> None:
        self._objects.clear()

    # -- IOMMU_DESTROY ------------------------------------------------------------
    def destroy(self, obj_id: object) -> None:
        """iommufd_destroy() -> iommufd_object_remove(): ENOENT, EBUSY, destroy."""
        obj = self.get_any(obj_id)
        held = obj.holders()
        if held:
            raise IommufdError(
                "EBUSY", f"{obj.type.value} {obj.id} is in use: held by {', '.join(held)}"
            )
        self._destroy[obj.type](obj)
        del self._objects[obj.id]


class Ictx:
    """``struct iommufd_ctx``: what every command of the model works on."""

    def __init__(
        self,
        backend: HardwareBackend,
        pins: Pins,
        options: ModelOptions,
        cap_sys_resource: bool,
    ) -> None:
        self.backend = backend
        self.pins = pins
        self.options = options
        self.cap_sys_resource = cap_sys_resource
        self.table = ObjectTable()
        #: bound devices: QOM path -> DEVICE id (one binding per device, as VFIO's cdev)
        self.by_name: dict[str, int] = {}

    def new_iopt(self) -> IoPagetable:
        """iopt_init_table()."""
        opts = self.options
        return IoPagetable(self.backend, self.pins, opts.max_iova_alignment, opts.page_size)

    def ioas(self, ioas_id: object) -> Ioas:
        """iommufd_get_ioas()."""
        return self.table.get(ioas_id, Ioas, "IOAS")

    def dev(self, dev_id: object) -> Device:
        """iommufd_get_device()."""
        return self.table.get(dev_id, Device, "DEVICE")

    def paging_of(self, hwpt_id: int) -> HwptPaging:
        """find_hwpt_paging(): the paging HWPT itself, or a nested one's parent."""
        h = self.table.find(hwpt_id)
        if isinstance(h, HwptNested):
            h = self.table.find(h.parent_id)
        assert isinstance(h, HwptPaging)
        return h

    def ioas_of(self, hwpt_id: int) -> Ioas:
        return self.ioas(self.paging_of(hwpt_id).ioas_id)
