"""VFIO sPAPR TCE v2 (drivers/vfio/vfio_iommu_spapr_tce.c) over the model's PPC64 domains.

The "vfio-spapr-compat" the RFC says is missing, as a thin layer: the
container is one IOAS; each group is a PE whose devices share one PPC64
paging HWPT of that IOAS; the container's windows are every PE domain's
windows (SPAPR_TCE_CREATE adds one to each, REMOVE takes it from each);
MAP_DMA / UNMAP_DMA are IOAS maps and unmaps at a fixed IOVA, so the TCEs
follow (ppc64_domain.py).  ``vaddr`` is a guest-physical address here (the
lab's memory is the guest's).

Rules and errnos as the kernel's v2 driver: no group ENXIO; unknown flags
EINVAL; an IOVA in no window ENXIO; size, vaddr or IOVA not aligned to the
window's page size, or a run leaving the window, EINVAL; memory not
preregistered EINVAL; REGISTER_MEMORY of a region already registered
EBUSY, overlapping another EINVAL; UNREGISTER_MEMORY of an unknown region
ENOENT, of a region still mapped EBUSY; CREATE with all windows in use
ENOSPC, a page size not offered or a bad size or level count EINVAL;
REMOVE of no window EINVAL (it clears the window's TCEs first); the
default 32-bit window is created on the first MAP/UNMAP/CREATE/REMOVE
after the first group joined (``def_window_pending``).  Differences, all
because the layer sits on iommufd's IOAS: a MAP_DMA over entries already
mapped is EEXIST (v2 would replace them), and an UNMAP_DMA that cuts a
MAP_DMA's run re-maps the parts outside the range.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyctl.iommufd import IommufdContext, IommufdError
from pyctl.iommufd.ppc64 import (
    IOMMU_HW_INFO_TYPE_PPC64,
    IOMMU_HWPT_DATA_PPC64_DMA_WINDOW,
    Ppc64DmaWindow,
    Ppc64HwInfo,
)
from pyctl.iommufd.ranges import overlaps
from pyctl.iommufd.uapi import FIXED_IOVA, PAGE_SIZE, READABLE, U64_MAX, WRITEABLE, u32, u64

from .uapi import (
    VFIO_DMA_MAP_FLAG_READ,
    VFIO_DMA_MAP_FLAG_WRITE,
    VFIO_IOMMU_SPAPR_INFO_DDW,
    VfioIommuSpaprTceDdwInfo,
    VfioIommuSpaprTceInfo,
)

_DEFAULT_PAGE_SHIFT = 12  # IOMMU_PAGE_SHIFT_4K: the default window's TCE size


class SpaprTceV2Driver:
    """The container's sPAPR TCE v2 IOMMU once VFIO_SET_IOMMU chose it."""

    def __init__(self, ctx: IommufdContext) -> None:
        self.ctx = ctx
        self.ioas = ctx.ioas_alloc()
        #: PE -> (its HWPT or None before the first window, its devices)
        self.pes: dict[int, tuple[int | None, list[int]]] = {}
        #: the container's windows by slot (0: tce32_start, 1: dma64 offset)
        self.windows: dict[int, Ppc64DmaWindow] = {}
        self.info: Ppc64HwInfo | None = None
        self.def_window_pending = False
        #: preregistered memory: (vaddr, size)
        self.prereg: list[tuple[int, int]] = []

    # ------------------------------------------------------------ groups
    def attach_group(self, devices: Sequence[str]) -> list[int]:
        """A PE's devices join: bound, given the container's windows, attached."""
        ctx = self.ctx
        devs: list[int] = []
        hwpt: int | None = None
        try:
            for name in devices:
                devs.append(ctx.bind(name))
            infos = [ctx.get_hw_info(d, IOMMU_HW_INFO_TYPE_PPC64) for d in devs]
            pes = {i.pe for i in infos}
            if len(pes) != 1:
                raise IommufdError("EINVAL", f"a group is one PE, these are on PEs {sorted(pes)}")
            pe = pes.pop()
            if pe in self.pes:
                raise IommufdError("EBUSY", f"PE {pe} is in the container already")
            if self.windows:
                wins = tuple(self.windows[s] for s in sorted(self.windows))
                hwpt = ctx.hwpt_alloc(devs[0], self.ioas, 0, IOMMU_HWPT_DATA_PPC64_DMA_WINDOW,
                                      wins)  # fmt: skip
                for d in devs:
                    ctx.attach(d, hwpt)
        except IommufdError:
            for d in reversed(devs):
                ctx.unbind(d)
            if hwpt is not None:
                ctx.destroy(hwpt)
            raise
        if self.info is None:
            self.info = infos[0]
            self.def_window_pending = True
        self.pes[pe] = (hwpt, devs)
        return devs

    def detach_group(self, dev_ids: Sequence[int]) -> None:
        for pe, (hwpt, devs) in list(self.pes.items()):
            if set(dev_ids) == set(devs):
                for d in devs:
                    self.ctx.unbind(d)
                if hwpt is not None:
                    self.ctx.destroy(hwpt)
                del self.pes[pe]
                return
        raise IommufdError("EINVAL", f"devices {list(dev_ids)} are not a group of the container")

    def _info(self) -> Ppc64HwInfo:
        if self.info is None or not self.pes:
            raise IommufdError("ENXIO", "no group in the container")
        return self.info

    # ------------------------------------------------------------ info
    def get_info(self) -> VfioIommuSpaprTceInfo:
        """VFIO_IOMMU_SPAPR_TCE_GET_INFO (with the DDW part)."""
        i = self._info()
        ddw = VfioIommuSpaprTceDdwInfo(i.pgsizes, i.max_dynamic_windows_supported, i.max_levels)
        return VfioIommuSpaprTceInfo(VFIO_IOMMU_SPAPR_INFO_DDW, i.tce32_start, i.tce32_size, ddw)

    # ------------------------------------------------------------ windows
    def _create_default_window(self) -> None:
        """tce_iommu_create_default_window()."""
        if not self.def_window_pending:
            return
        i = self._info()
        self._create(_DEFAULT_PAGE_SHIFT, i.tce32_size, 1)
        self.def_window_pending = False

    def _create(self, page_shift: int, window_size: int, levels: int) -> int:
        i = self._info()
        free = [s for s in range(i.max_dynamic_windows_supported) if s not in self.windows]
        if not free:  # tce_iommu_find_free_table()
            raise IommufdError("ENOSPC", f"all {i.max_dynamic_windows_supported} windows in use")
        slot = free[0]
        start = i.dma64_offset if slot else i.tce32_start
        win = Ppc64DmaWindow(window_size, page_shift, levels, start)
        done: list[tuple[int, int | None]] = []
        try:
            for pe, (hwpt, devs) in self.pes.items():
                if hwpt is None:
                    h = self.ctx.hwpt_alloc(devs[0], self.ioas, 0,
                                            IOMMU_HWPT_DATA_PPC64_DMA_WINDOW, win)  # fmt: skip
                    done.append((pe, None))
                    self.pes[pe] = (h, devs)
                    for d in devs:
                        self.ctx.attach(d, h)
                else:
                    self.ctx.hwpt_window_add(hwpt, win)
                    done.append((pe, hwpt))
        except IommufdError:
            for pe, old in reversed(done):
                made, pdevs = self.pes[pe]
                assert made is not None
                if old is None:
                    for d in pdevs:
                        self.ctx.detach(d)
                    self.ctx.destroy(made)
                    self.pes[pe] = (None, pdevs)
                else:
                    self.ctx.hwpt_window_remove(made, start)
            raise
        self.windows[slot] = win
        return start

    def tce_create(self, page_shift: object, window_size: object, levels: object,
                   flags: object = 0) -> int:  # fmt: skip
        """VFIO_IOMMU_SPAPR_TCE_CREATE; returns ``start_addr``."""
        if u32("flags", flags):
            raise IommufdError("EINVAL", f"flags {flags:#x}: none are defined")
        ps, ws, lv = u32("page_shift", page_shift), u64("window_size", window_size), u32(
            "levels", levels)  # fmt: skip
        self._info()
        self._create_default_window()
        return self._create(ps, ws, lv)

    def _slot_at(self, start: int) -> int | None:
        return next((s for s, w in self.windows.items() if w.bus_offset == start), None)

    def tce_remove(self, start_addr: object, flags: object = 0) -> None:
        """VFIO_IOMMU_SPAPR_TCE_REMOVE: clears the window's TCEs, then removes it."""
        if u32("flags", flags):
            raise IommufdError("EINVAL", f"flags {flags:#x}: none are defined")
        start = u64("start_addr", start_addr)
        self._info()
        self._create_default_window()
        slot = self._slot_at(start)
        if slot is None:
            raise IommufdError("EINVAL", f"start_addr {start:#x}: no window starts there")
        w = self.windows[slot]
        self._clear(start, start + w.window_size - 1)
        for hwpt, _devs in self.pes.values():
            if hwpt is not None:
                self.ctx.hwpt_window_remove(hwpt, start)
        del self.windows[slot]

    def _window_of(self, iova: int) -> Ppc64DmaWindow:
        """tce_iommu_find_table(): ENXIO when no window holds ``iova``."""
        for w in self.windows.values():
            assert w.bus_offset is not None
            if w.bus_offset <= iova < w.bus_offset + w.window_size:
                return w
        raise IommufdError("ENXIO", f"iova {iova:#x} is in no window")

    # ------------------------------------------------------------ DMA
    def map_dma(self, vaddr: object, iova: object, size: object, flags: object) -> None:
        """VFIO_IOMMU_MAP_DMA into a window (TCEs = vaddr | direction)."""
        self._info()
        self._create_default_window()
        fl = u32("flags", flags)
        va, io, sz = u64("vaddr", vaddr), u64("iova", iova), u64("size", size)
        if fl & ~(VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE):
            raise IommufdError("EINVAL", f"flags {fl:#x}: only READ and WRITE")
        w = self._window_of(io)
        page = 1 << w.page_shift
        if sz & (page - 1) or va & (page - 1):
            raise IommufdError("EINVAL", f"size {sz:#x} or vaddr {va:#x} not {page:#x} aligned")
        if not fl:
            raise IommufdError("EINVAL", "flags: neither READ nor WRITE")
        assert w.bus_offset is not None
        if io & (page - 1) or not sz or io + sz > w.bus_offset + w.window_size:
            raise IommufdError("EINVAL", f"iova {io:#x}+{sz:#x} does not fit the window")
        if not self._preregistered(va, sz):  # tce_iommu_prereg_ua_to_hpa()
            raise IommufdError("EINVAL", f"vaddr {va:#x}+{sz:#x} is not preregistered")
        prot = (READABLE if fl & VFIO_DMA_MAP_FLAG_READ else 0) | (
            WRITEABLE if fl & VFIO_DMA_MAP_FLAG_WRITE else 0)  # fmt: skip
        self.ctx.ioas_map(self.ioas, va, sz, int(prot | FIXED_IOVA), io)

    def unmap_dma(self, iova: object, size: object, flags: object) -> int:
        """VFIO_IOMMU_UNMAP_DMA: clear every TCE of the range (mapped or not)."""
        self._info()
        self._create_default_window()
        if u32("flags", flags):
            raise IommufdError("EINVAL", f"flags {flags:#x}: none are defined")
        io, sz = u64("iova", iova), u64("size", size)
        w = self._window_of(io)
        page = 1 << w.page_shift
        assert w.bus_offset is not None
        if sz & (page - 1) or io & (page - 1) or io + sz > w.bus_offset + w.window_size:
            raise IommufdError("EINVAL", f"iova {io:#x}+{sz:#x} not a run of the window's pages")
        if sz:
            self._clear(io, io + sz - 1)
        return 0

    def _clear(self, first: int, last: int) -> None:
        """Unmap [first, last]; a MAP_DMA run that sticks out keeps its outer parts."""
        ctx = self.ctx
        for a in ctx.areas(self.ioas):
            if not overlaps((a.iova, a.last), (first, last)):
                continue
            ctx.ioas_unmap(self.ioas, a.iova, a.length)
            prot = (READABLE if a.read else 0) | (WRITEABLE if a.write else 0) | FIXED_IOVA
            if a.iova < first:
                ctx.ioas_map(self.ioas, a.phys, first - a.iova, int(prot), a.iova)
            if a.last > last:
                off = last + 1 - a.iova
                ctx.ioas_map(self.ioas, a.phys + off, a.last - last, int(prot), last + 1)

    # ------------------------------------------------------------ preregistration
    def _preregistered(self, va: int, size: int) -> bool:
        pos, end = va, va + size
        while pos < end:
            r = next(((s, z) for s, z in self.prereg if s <= pos < s + z), None)
            if r is None:
                return False
            pos = r[0] + r[1]
        return True

    @staticmethod
    def _region(vaddr: object, size: object, flags: object) -> tuple[int, int]:
        if u32("flags", flags):
            raise IommufdError("EINVAL", f"flags {flags:#x}: none are defined")
        va, sz = u64("vaddr", vaddr), u64("size", size)
        if va & (PAGE_SIZE - 1) or sz & (PAGE_SIZE - 1) or va + sz > U64_MAX:
            raise IommufdError("EINVAL", f"vaddr {va:#x} / size {sz:#x} not page aligned")
        return va, sz

    def register_memory(self, vaddr: object, size: object, flags: object = 0) -> None:
        """VFIO_IOMMU_SPAPR_REGISTER_MEMORY (mm_iommu_get / mm_iommu_new)."""
        va, sz = self._region(vaddr, size, flags)
        self._info()
        if (va, sz) in self.prereg:
            raise IommufdError("EBUSY", f"[{va:#x}, +{sz:#x}) is registered already")
        for s, z in self.prereg:
            if overlaps((va, va + sz - 1), (s, s + z - 1)):
                raise IommufdError("EINVAL", f"[{va:#x}, +{sz:#x}) overlaps [{s:#x}, +{z:#x})")
        self.prereg.append((va, sz))

    def unregister_memory(self, vaddr: object, size: object, flags: object = 0) -> None:
        """VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY: ENOENT if unknown, EBUSY while mapped."""
        va, sz = self._region(vaddr, size, flags)
        self._info()
        if (va, sz) not in self.prereg:
            raise IommufdError("ENOENT", f"[{va:#x}, +{sz:#x}) is not registered")
        for a in self.ctx.areas(self.ioas):
            if overlaps((a.phys, a.phys + a.length - 1), (va, va + sz - 1)):
                raise IommufdError("EBUSY", f"[{va:#x}, +{sz:#x}) is mapped at {a.iova:#x}")
        self.prereg.remove((va, sz))
