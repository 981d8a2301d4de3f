"""The iommufd context: what a VMM gets by opening /dev/iommu.

``IommufdContext`` is a thin facade, as main.c's ioctl table is: each method
is one ioctl and dispatches to the module that implements it, named after
the kernel's file (ioas.py, hw_pagetable.py, device.py, vfio_cdev.py,
spapr.py; objtable.py for IOMMU_DESTROY).  The model is the source of truth
and programs a :class:`~pyctl.iommufd.backend.HardwareBackend`.  Every call
is all or nothing: a raised :class:`~pyctl.iommufd.errors.IommufdError`
leaves the model and the backend as they were (except where
``ModelOptions`` asks for the kernel's own partial UNMAP).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial
from typing import Literal, overload

from . import device, hw_pagetable, ioas, ppc64_attach, spapr, vfio_cdev
from .areas import Area
from .backend import DeviceHwInfo, HardwareBackend, HwState, Window, WindowCaps
from .errors import IommufdError
from .hw_pagetable import IOMMULAB_INV_ALL, IommulabHwptData, IommulabInvalidateEntry
from .hwstate import HwStateSeam
from .ioas import IovaRanges
from .objects import Object
from .objtable import Ictx, ModelOptions
from .pages import hw_errors
from .pinning import PinAccount, Pins
from .ppc64 import IOMMU_HW_INFO_TYPE_PPC64, Ppc64DmaWindow, Ppc64HwInfo, ppc64_hw_info
from .ppc64_domain import DomWindow
from .ppc64_hw import PeWindow, TceBackend
from .ranges import Range, normalize
from .spapr import WindowChange
from .uapi import HwptDataType, ObjType

__all__ = [
    "IOMMULAB_INV_ALL",
    "IommufdContext",
    "IommulabHwptData",
    "IommulabInvalidateEntry",
    "IovaRanges",
    "ModelOptions",
    "WindowChange",
]


class IommufdContext:
    """One open /dev/iommu: IOAS, HWPT_PAGING, HWPT_NESTED and DEVICE objects by id."""

    def __init__(
        self,
        backend: HardwareBackend,
        *,
        limit_pages: int | None = None,
        user_account: PinAccount | None = None,
        cap_sys_resource: bool = True,
        options: ModelOptions | None = None,
    ) -> None:
        self.backend = backend
        claim = getattr(backend, "claim", None)
        if claim is not None:  # one control plane per vIOMMU (docs/reliability.md)
            claim()
        opts = options or ModelOptions()
        user = user_account or PinAccount(limit_pages, "user")
        mm = PinAccount(limit_pages if limit_pages is not None else user.limit_pages, "mm")
        self._ictx = Ictx(backend, Pins(user, mm, opts.pin_per_guest_page), opts, cap_sys_resource)
        table = self._ictx.table
        table.register_destroy(ObjType.IOAS, ioas.ioas_destroy)
        table.register_destroy(
            ObjType.HWPT_PAGING, partial(hw_pagetable.paging_destroy, self._ictx)
        )
        table.register_destroy(
            ObjType.HWPT_NESTED, partial(hw_pagetable.nested_destroy, self._ictx)
        )
        #: expected hardware state, the check against it, restoring from it
        self.hw_state = HwStateSeam(self._ictx)

    @classmethod
    def from_hardware(
        cls,
        backend: HardwareBackend,
        *,
        shared: Iterable[Iterable[int]] = (),
        blocked: Iterable[str] = (),
        nest_parents: Iterable[int] = (),
        limit_pages: int | None = None,
        user_account: PinAccount | None = None,
        options: ModelOptions | None = None,
    ) -> IommufdContext:
        """A context reproducing what ``backend`` holds (reconnecting to a running QEMU).

        Domains keep their ids as HWPT objects; ``shared`` lists groups of
        paging domain ids that share one IOAS (otherwise each has its own);
        ``blocked`` names devices (id or QOM path) to bind although detached;
        ``nest_parents`` names paging domains allocated with NEST_PARENT.
        Raises :class:`~pyctl.iommufd.rebuild.RebuildError` listing every
        difference it cannot reproduce; the hardware is not touched.
        """
        from .rebuild import rebuild

        ctx = cls(backend, limit_pages=limit_pages, user_account=user_account, options=options)
        rebuild(ctx.hw_state, backend, shared, blocked, nest_parents)
        return ctx

    # ---------------------------------------------------------------- state
    @property
    def options(self) -> ModelOptions:
        return self._ictx.options

    @property
    def user_account(self) -> PinAccount:
        return self._ictx.pins.user_account

    @property
    def mm_account(self) -> PinAccount:
        return self._ictx.pins.mm_account

    @property
    def account(self) -> PinAccount:
        return self._ictx.pins.account

    @property
    def account_mode(self) -> int:
        return self._ictx.pins.mode

    @property
    def cap_sys_resource(self) -> bool:
        return self._ictx.cap_sys_resource

    @cap_sys_resource.setter
    def cap_sys_resource(self, value: bool) -> None:
        self._ictx.cap_sys_resource = value

    def objects(self) -> dict[int, Object]:
        return self._ictx.table.snapshot()

    def areas(self, ioas_id: int) -> list[Area]:
        return list(self._ictx.ioas(ioas_id).areas)

    def pinned_pages(self) -> int:
        return self._ictx.pins.account.pinned_pages

    def iova_alignment(self, ioas_id: int) -> int:
        return self._ictx.ioas(ioas_id).iopt.iova_alignment

    def reserved(self, ioas_id: int) -> list[Range]:
        return normalize(self._ictx.ioas(ioas_id).reserved_ranges())

    # ---------------------------------------------------------------- main.c
    def destroy(self, obj_id: int) -> None:
        """IOMMU_DESTROY: ENOENT, or EBUSY while anything holds the object."""
        self._ictx.table.destroy(obj_id)

    def option(self, option_id: int, op: int, object_id: int = 0, val64: int = 0) -> int:
        """IOMMU_OPTION; returns val64 (the value for GET)."""
        return ioas.option(self._ictx, option_id, op, object_id, val64)

    # ---------------------------------------------------------------- ioas.c
    def ioas_alloc(self, flags: int = 0) -> int:
        """IOMMU_IOAS_ALLOC."""
        return ioas.ioas_alloc(self._ictx, flags)

    def ioas_map(self, ioas_id: int, phys: int, length: int, flags: int, iova: int = 0) -> int:
        """IOMMU_IOAS_MAP of guest-physical memory; returns the IOVA used."""
        return ioas.ioas_map(self._ictx, ioas_id, phys, length, flags, iova)

    def ioas_unmap(self, ioas_id: int, iova: int, length: int) -> int:
        """IOMMU_IOAS_UNMAP; returns the number of bytes unmapped."""
        return ioas.ioas_unmap(self._ictx, ioas_id, iova, length)

    def ioas_copy(
        self,
        dst_ioas_id: int,
        dst_iova: int,
        src_ioas_id: int,
        src_iova: int,
        length: int,
        flags: int,
    ) -> int:
        """IOMMU_IOAS_COPY: map what [src_iova, +length) maps into another IOAS."""
        return ioas.ioas_copy(
            self._ictx, dst_ioas_id, dst_iova, src_ioas_id, src_iova, length, flags
        )

    def ioas_iova_ranges(self, ioas_id: int, num_iovas: int | None = None) -> IovaRanges:
        """IOMMU_IOAS_IOVA_RANGES; EMSGSIZE (with ``num_iovas``) if the buffer is short."""
        return ioas.ioas_iova_ranges(self._ictx, ioas_id, num_iovas)

    def ioas_allow_iovas(self, ioas_id: int, ranges: Sequence[Range]) -> None:
        """IOMMU_IOAS_ALLOW_IOVAS: replace the allowed list (empty = everything)."""
        ioas.ioas_allow_iovas(self._ictx, ioas_id, ranges)

    # ---------------------------------------------------------------- hw_pagetable.c
    def hwpt_alloc(
        self,
        dev_id: int,
        pt_id: int,
        flags: int = 0,
        data_type: int = HwptDataType.IOMMU_HWPT_DATA_NONE,
        data: IommulabHwptData | Ppc64DmaWindow | Sequence[Ppc64DmaWindow] | None = None,
    ) -> int:
        """IOMMU_HWPT_ALLOC: a paging HWPT on an IOAS, or a nested one on a NEST_PARENT;
        with IOMMU_HWPT_DATA_PPC64_DMA_WINDOW a PE's domain with those windows."""
        return hw_pagetable.hwpt_alloc(self._ictx, dev_id, pt_id, flags, data_type, data)

    def hwpt_invalidate(
        self, hwpt_id: int, data_type: int, entries: Sequence[IommulabInvalidateEntry]
    ) -> int:
        """IOMMU_HWPT_INVALIDATE on a nested HWPT; returns the entries handled."""
        return hw_pagetable.hwpt_invalidate(self._ictx, hwpt_id, data_type, entries)

    # ---------------------------------------------------------------- devices
    def bind(self, device: str) -> int:
        """VFIO_DEVICE_BIND_IOMMUFD of a QEMU device (qdev id or QOM path); returns dev_id."""
        return vfio_cdev.bind(self._ictx, device)

    def unbind(self, dev_id: int) -> None:
        """Closing the VFIO device file: detach, then unbind."""
        vfio_cdev.unbind(self._ictx, dev_id)

    @overload
    def get_hw_info(self, dev_id: int) -> DeviceHwInfo: ...

    @overload
    def get_hw_info(self, dev_id: int, data_type: Literal[0x1AB1]) -> Ppc64HwInfo: ...

    def get_hw_info(self, dev_id: int, data_type: int | None = None) -> DeviceHwInfo | Ppc64HwInfo:
        """IOMMU_GET_HW_INFO (with the reserved regions the device reports).

        ``data_type`` IOMMU_HW_INFO_TYPE_PPC64 (IOMMU_HW_INFO_FLAG_INPUT_TYPE)
        asks for the typed PPC64 facts of a device on an sPAPR PE
        (EOPNOTSUPP for any other device).
        """
        info = self._ictx.dev(dev_id).info
        if data_type is None:
            return info
        if data_type != IOMMU_HW_INFO_TYPE_PPC64:
            raise IommufdError("EOPNOTSUPP", f"data_type {data_type:#x} not supported")
        return ppc64_hw_info(info)

    def attach(self, dev_id: int, pt_id: int) -> int:
        """VFIO_DEVICE_ATTACH_IOMMUFD_PT: attach, or replace if attached; returns the HWPT.

        With an IOAS, a compatible automatic HWPT of that IOAS is reused or
        one is created.
        """
        return vfio_cdev.attach(self._ictx, dev_id, pt_id)

    def replace(self, dev_id: int, pt_id: int) -> int:
        """iommufd_device_replace(): move an attached device (EINVAL if not attached)."""
        return device.change_pt(self._ictx, self._ictx.dev(dev_id), pt_id, replace=True)

    def detach(self, dev_id: int) -> None:
        """VFIO_DEVICE_DETACH_IOMMUFD_PT: blocked again (nothing to do if not attached)."""
        vfio_cdev.detach(self._ictx, dev_id)

    def device_removed(self, dev_id: int) -> None:
        """The device was hot-unplugged: unbind it without programming the hardware,
        which already forgot it (:mod:`pyctl.iommufd.unplug` follows DEVICE_DELETED)."""
        device.removed(self._ictx, self._ictx.dev(dev_id))

    # ---------------------------------------------------------------- sPAPR windows
    def window_caps(self, dev_id: int) -> WindowCaps:
        return spapr.window_caps(self._ictx, dev_id)

    def windows(self, dev_id: int) -> list[Window]:
        return spapr.windows(self._ictx, dev_id)

    def window_create(
        self, dev_id: int, page_shift: int, size: int, offset: int | None = None
    ) -> Window:
        """Create a DMA window (the 64-bit DDW unless ``offset`` says otherwise)."""
        return spapr.window_create(self._ictx, dev_id, page_shift, size, offset)

    def window_remove(self, dev_id: int, index: int) -> None:
        spapr.window_remove(self._ictx, dev_id, index)

    def process_window_events(self) -> list[WindowChange]:
        """Apply the guest's window changes (create, remove, reset) reported since last time."""
        return spapr.process_window_events(self._ictx)

    # ---------------------------------------------------------------- PPC64 domains
    def hwpt_window_add(self, hwpt_id: int, window: Ppc64DmaWindow) -> DomWindow:
        """Add a DMA window to a PPC64 domain (the proposed IOMMU_HWPT_SET_DMA_WINDOW)."""
        return ppc64_attach.window_add(self._ictx, hwpt_id, window)

    def hwpt_window_remove(self, hwpt_id: int, start: int) -> None:
        """Remove the window starting at ``start`` from a PPC64 domain."""
        ppc64_attach.window_remove(self._ictx, hwpt_id, start)

    def hwpt_windows(self, hwpt_id: int) -> list[DomWindow]:
        return list(ppc64_attach.ppc64_hwpt(self._ictx, hwpt_id).t.windows)

    def pe_windows(self, dev_id: int) -> list[PeWindow]:
        """The windows the device's PE holds now (host and guest ones, with owner)."""
        info = ppc64_hw_info(self._ictx.dev(dev_id).info)
        hw = self.backend
        if not isinstance(hw, TceBackend):
            raise IommufdError("EOPNOTSUPP", "the hardware has no sPAPR PEs")
        with hw_errors():
            return hw.pe_windows(info.pe)

    def check_tces(self) -> list[str]:
        """Every live PPC64 domain's TCEs against its PE's, read back."""
        return ppc64_attach.check_tces(self._ictx)

    # ---------------------------------------------------------------- checking
    def expected_hw_state(self) -> HwState:
        """What the hardware must hold for this context's domains and devices."""
        return self.hw_state.expected()

    def check_hardware(self) -> list[str]:
        """Differences between the model and the backend's query (empty = in sync)."""
        return self.hw_state.check()
