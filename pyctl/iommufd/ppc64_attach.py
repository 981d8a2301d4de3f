"""PPC64 paging domains: HWPT_ALLOC with a DMA window, windows of a live domain,
attach / replace, and the native BLOCKED domain.

* HWPT_ALLOC(dev, ioas, IOMMU_HWPT_DATA_PPC64_DMA_WINDOW) makes a domain of
  the device's PE with that one window; its apertures (the windows) make
  everything else reserved in the IOAS, so IOAS_IOVA_RANGES are the windows
  and automatic IOVAs land in them.
* :func:`window_add` / :func:`window_remove` change the windows of a domain,
  live or not (the proposed IOMMU_HWPT_SET_DMA_WINDOW; docs/spapr.md).
* Attaching makes the domain live on its PE: the PE's host windows become
  exactly the domain's, its TCEs exactly the domain's.  All devices of a PE
  share its domain (they share its TCE tables; EINVAL otherwise).
* Detaching the last device of a PE attaches the native BLOCKED domain: the
  PE is set blocked (every DMA faults), which cannot fail and allocates
  nothing; windows and TCEs stay, and attaching a domain again restores them.
"""

from __future__ import annotations

from .errors import IommufdError
from .io_pagetable import DomainInfo
from .objects import Device, HwptPaging, Ioas
from .objtable import Ictx
from .pages import hw_errors
from .ppc64 import Ppc64DmaWindow, Ppc64HwInfo, ppc64_hw_info
from .ppc64_domain import DomWindow, HwptPpc64, Ppc64Tables
from .ppc64_hw import TceBackend
from .ranges import overlaps
from .uapi import PAGE_SIZE, U64_MAX, u32, u64


def _tce_backend(ictx: Ictx) -> TceBackend:
    hw = ictx.backend
    if not isinstance(hw, TceBackend):
        raise IommufdError("EOPNOTSUPP", "the hardware has no sPAPR PEs")
    return hw


def check_window(info: Ppc64HwInfo, have: list[DomWindow], data: object) -> DomWindow:
    """Validate one DMA window against the PE's facts and the domain's windows."""
    if not isinstance(data, Ppc64DmaWindow):
        raise IommufdError("EINVAL", "data must be a Ppc64DmaWindow")
    size = u64("window_size", data.window_size)
    ps = u32("page_shift", data.page_shift)
    levels = u32("levels", data.levels)
    if ps >= 64 or not info.pgsizes >> ps & 1:
        raise IommufdError("EINVAL", f"page_shift {ps} not offered (pgsizes {info.pgsizes:#x})")
    if size == 0 or size & (size - 1) or size < 1 << ps:
        raise IommufdError(
            "EINVAL", f"window_size {size:#x} is not a power of two >= the page size"
        )
    if size >> ps > info.max_tces:
        raise IommufdError(
            "EINVAL", f"window_size {size:#x}: {size >> ps} TCEs exceed max_tces {info.max_tces}"
        )
    if not 1 <= levels <= info.max_levels:
        raise IommufdError("EINVAL", f"levels {levels} not in 1..{info.max_levels}")
    if len(have) >= info.max_dynamic_windows_supported:
        raise IommufdError(
            "ENOSPC", f"the domain has all {info.max_dynamic_windows_supported} windows"
        )
    if data.bus_offset is None:  # pnv_pci_ioda2_create_table(): num ? bypass : tce32
        start = info.dma64_offset if have else info.tce32_start
    else:
        start = u64("bus_offset", data.bus_offset)
        if start not in (info.tce32_start, info.dma64_offset):
            raise IommufdError(
                "EINVAL",
                f"bus_offset {start:#x}: the platform places windows only at "
                f"{info.tce32_start:#x} or {info.dma64_offset:#x}",
            )
    if start + size - 1 > U64_MAX:
        raise IommufdError("EOVERFLOW", f"window {start:#x}+{size:#x} overflows")
    for w in have:
        if overlaps((start, start + size - 1), (w.start, w.last)):
            raise IommufdError("EEXIST", f"window at {start:#x} overlaps the one at {w.start:#x}")
    return DomWindow(start, size, ps, levels)


def hwpt_alloc(ictx: Ictx, dev: Device, ioas: Ioas, flags: int, data: object) -> int:
    """IOMMU_HWPT_ALLOC with IOMMU_HWPT_DATA_PPC64_DMA_WINDOW: a domain with one window
    (or a non-empty list of windows, checked in order)."""
    hw = _tce_backend(ictx)
    info = ppc64_hw_info(dev.info)  # EOPNOTSUPP for a device on no PE
    if flags:
        raise IommufdError("EOPNOTSUPP", f"flags {flags:#x}: a PPC64 domain takes none")
    tables = Ppc64Tables(hw, info)
    # one window, or the domain's whole list of apertures at once (a PE joining a
    # VFIO container whose IOAS already has maps in every window)
    for w in data if isinstance(data, tuple | list) and data else [data]:
        tables.windows.append(check_window(info, tables.windows, w))
    hid = ictx.table.new_id()
    hwpt = HwptPpc64(hid, ioas.id, "spapr", 64, False, False, pgsize_bitmap=info.pgsizes,
                     pe=info.pe, tables=tables)  # fmt: skip
    # the IOAS's granule stays PAGE_SIZE; each window's page size is the mapper's check
    dom = DomainInfo(hid, PAGE_SIZE, 64, tuple(tables.apertures()))
    iopt = ioas.iopt
    iopt.check_add_domain(dom)  # EADDRINUSE: areas outside the window
    iopt.mappers[hid] = tables
    try:
        iopt.add_domain(dom)  # the TCEs of the IOAS's areas (EINVAL: page alignment)
    except IommufdError:
        iopt.mappers.pop(hid, None)
        raise
    ictx.table.add(hwpt)
    return hid


def ppc64_hwpt(ictx: Ictx, hwpt_id: object) -> HwptPpc64:
    h = ictx.table.get_any(hwpt_id, "hwpt_id")
    if not isinstance(h, HwptPpc64):
        raise IommufdError("EINVAL", f"object {h.id} is not a PPC64 paging HWPT")
    return h


def window_add(ictx: Ictx, hwpt_id: object, data: object) -> DomWindow:
    """Add a window to a domain (set on the PE at once if the domain is live)."""
    h = ppc64_hwpt(ictx, hwpt_id)
    t = h.t
    win = check_window(t.info, t.windows, data)
    iopt = ictx.ioas(h.ioas_id).iopt
    if t.live:
        t.create_live(win)
    t.windows.append(win)
    iopt.set_apertures(h.id, t.apertures())  # a smaller reservation: cannot fail
    return win


def window_remove(ictx: Ictx, hwpt_id: object, start: object) -> None:
    """Remove the window at ``start``: EBUSY while an area lies in it, EADDRINUSE
    while an allowed range does, ENOENT if there is none."""
    h = ppc64_hwpt(ictx, hwpt_id)
    t = h.t
    at = u64("start", start)
    win = next((w for w in t.windows if w.start == at), None)
    if win is None:
        raise IommufdError("ENOENT", f"start {at:#x}: no window of HWPT {h.id} starts there")
    iopt = ictx.ioas(h.ioas_id).iopt
    a = iopt.areas.first_overlapping(win.start, win.last)
    if a is not None:
        raise IommufdError("EBUSY", f"window {at:#x} holds the area at {a.iova:#x}")
    rest = [w for w in t.windows if w is not win]
    iopt.set_apertures(h.id, sorted((w.start, w.last) for w in rest))  # EADDRINUSE
    try:
        t.remove_live(win)
    except IommufdError:
        iopt.set_apertures(h.id, t.apertures())
        raise
    t.windows = rest


# ---------------------------------------------------------------- attach
def _pe_devices(ictx: Ictx, pe: int) -> list[Device]:
    out: list[Device] = []
    for oid in ictx.table:
        o = ictx.table.find(oid)
        if isinstance(o, Device) and o.info.spapr is not None and o.info.spapr.phb == pe:
            out.append(o)
    return out


def _live_on(ictx: Ictx, pe: int) -> HwptPpc64 | None:
    for oid in ictx.table:
        o = ictx.table.find(oid)
        if isinstance(o, HwptPpc64) and o.pe == pe and o.t.live:
            return o
    return None


def _check(ictx: Ictx, dev: Device, hwpt: HwptPpc64) -> None:
    """The driver's attach_dev(): same PE; the PE's devices share one domain."""
    pe = dev.info.spapr.phb if dev.info.spapr is not None else None
    if pe != hwpt.pe:
        raise IommufdError("EINVAL", f"HWPT {hwpt.id} belongs to PE {hwpt.pe}, not the device's")
    for o in _pe_devices(ictx, hwpt.pe):
        if o.id != dev.id and o.hwpt_id is not None and o.hwpt_id != hwpt.id:
            raise IommufdError(
                "EINVAL", f"device {o.id} of the same PE is attached to HWPT {o.hwpt_id}"
            )


def make_live(ictx: Ictx, hwpt: HwptPpc64) -> None:
    """set_window for every window of ``hwpt`` (unset the PE's previous domain), unblock."""
    hw = _tce_backend(ictx)
    t = hwpt.t
    with hw_errors():  # the PE's host side is this context's from now on
        hw.claim_pe(hwpt.pe)
    if not t.live:
        old = _live_on(ictx, hwpt.pe)
        with hw_errors():
            present = hw.pe_windows(hwpt.pe)
        for g in present:  # the guest's windows are read-only to the host side
            if g.owner == "guest" and any(
                overlaps((g.start, g.last), (w.start, w.last)) for w in t.windows
            ):
                raise IommufdError(
                    "EBUSY", f"PE {hwpt.pe}: the guest's window at {g.start:#x} is in the way"
                )
        if old is not None:
            old.t.unprogram()
        with hw_errors():  # take_ownership(): host windows of no domain go
            for w in hw.pe_windows(hwpt.pe):
                if w.owner == "host":
                    hw.pe_remove_window(hwpt.pe, w.slot)
        try:
            t.program()
        except IommufdError:
            if old is not None:
                old.t.program()
            raise
    with hw_errors():
        if hw.pe_blocked(hwpt.pe):
            hw.set_blocked(hwpt.pe, False)


def attach(ictx: Ictx, dev: Device, hwpt: HwptPpc64) -> int:
    if dev.hwpt_id is not None:
        raise IommufdError("EINVAL", f"device {dev.id} is attached to HWPT {dev.hwpt_id}")
    _check(ictx, dev, hwpt)
    iopt = ictx.ioas(hwpt.ioas_id).iopt
    resv = iopt.check_dev_resv_regions(dev.info.resv_regions(), count_msi=True)
    make_live(ictx, hwpt)
    iopt.reserve(resv, ("device", dev.id))
    hwpt.devices.add(dev.id)
    dev.hwpt_id = hwpt.id
    return hwpt.id


def replace(ictx: Ictx, dev: Device, hwpt: HwptPpc64) -> int:
    """Move the device's PE to another domain of the PE: every device of the PE on
    the old domain moves with it (iommufd_device_do_replace() replaces the group's
    domain and moves the group's references)."""
    old = ictx.table.find(dev.hwpt_id) if dev.hwpt_id is not None else None
    if old is None:
        raise IommufdError("EINVAL", f"device {dev.id} is not attached")
    if old.id == hwpt.id:
        return hwpt.id
    if not isinstance(old, HwptPpc64):
        raise IommufdError("EINVAL", f"device {dev.id} is on HWPT {old.id}, not a PE's domain")
    pe = dev.info.spapr.phb if dev.info.spapr is not None else None
    if pe != hwpt.pe:
        raise IommufdError("EINVAL", f"HWPT {hwpt.id} belongs to PE {hwpt.pe}, not the device's")
    group = [d for d in _pe_devices(ictx, hwpt.pe) if d.hwpt_id == old.id]
    iopt = ictx.ioas(hwpt.ioas_id).iopt
    old_iopt = ictx.ioas(old.ioas_id).iopt
    moving = iopt is not old_iopt
    resv = {
        d.id: iopt.check_dev_resv_regions(d.info.resv_regions(), False) if moving else []
        for d in group
    }
    make_live(ictx, hwpt)
    for d in group:
        if moving:
            iopt.reserve(resv[d.id], ("device", d.id))
            old_iopt.remove_reserved(("device", d.id))
        old.devices.discard(d.id)
        hwpt.devices.add(d.id)
        d.hwpt_id = hwpt.id
    return hwpt.id


def detach(ictx: Ictx, dev: Device, hwpt: HwptPaging) -> None:
    """The device leaves; the last one of its PE attaches the BLOCKED domain."""
    assert isinstance(hwpt, HwptPpc64)
    rest = [d for d in _pe_devices(ictx, hwpt.pe) if d.id != dev.id and d.hwpt_id is not None]
    if not rest:
        with hw_errors():
            _tce_backend(ictx).set_blocked(hwpt.pe, True)
    ictx.ioas(hwpt.ioas_id).iopt.remove_reserved(("device", dev.id))
    hwpt.devices.discard(dev.id)
    dev.hwpt_id = None


def destroy(ictx: Ictx, hwpt: HwptPpc64) -> None:
    """iommufd_hwpt_paging_destroy() of a PE's domain: unset its windows if live."""
    if hwpt.t.live:
        hwpt.t.unprogram()
    ictx.ioas(hwpt.ioas_id).iopt.remove_domain(hwpt.id)


def resync(ictx: Ictx) -> list[int]:
    """After the guest changed a PE (window-reset takes the PE back): a live domain
    whose windows are no longer all on its PE is live no more (its TCEs stay in
    the model; attaching it again sets them).  Returns the HWPTs that lost it."""
    hw = ictx.backend
    if not isinstance(hw, TceBackend):
        return []
    out: list[int] = []
    for oid in list(ictx.table):
        o = ictx.table.find(oid)
        if not (isinstance(o, HwptPpc64) and o.t.live):
            continue
        with hw_errors():
            have = {(w.slot, w.start, w.size, w.page_shift) for w in hw.pe_windows(o.pe)
                    if w.owner == "host"}  # fmt: skip
        if any((w.slot, w.start, w.size, w.page_shift) not in have for w in o.t.windows):
            for w in o.t.windows:
                w.slot = None
            o.t.live = False
            out.append(o.id)
    return out


def check_tces(ictx: Ictx) -> list[str]:
    """Every live PPC64 domain against its PE's windows and TCEs (read back)."""
    out: list[str] = []
    for oid in ictx.table:
        o = ictx.table.find(oid)
        if isinstance(o, HwptPpc64):
            out += [f"HWPT {o.id}: {p}" for p in o.t.check()]
    return out


__all__ = ["attach", "check_tces", "detach", "hwpt_alloc", "replace", "window_add"]
