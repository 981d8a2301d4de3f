"""sPAPR DMA windows of a bound device (a prototype uAPI; iommufd has none yet).

VFIO's sPAPR TCE v2 IOMMU offers TCE_GET_INFO / TCE_CREATE / TCE_REMOVE; these
are their iommufd-style counterparts per DEVICE (docs/iommufd.md).  A PE's
windows define its reserved regions (everything outside them), so every
change is followed in the IOAS the device is attached to.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import ppc64_attach
from .areas import Area
from .backend import Window, WindowBackend, WindowCaps
from .device import device_resv, refresh_resv
from .errors import IommufdError
from .objects import Device
from .objtable import Ictx
from .pages import hw_errors
from .ranges import overlaps
from .uapi import U64_MAX, u32, u64


@dataclass(frozen=True, slots=True)
class WindowChange:
    """What the model did for one guest-initiated window event."""

    device: str
    dev_id: int
    kind: str
    window: Window
    #: areas (iova, length) the model had to unmap because their window vanished
    unmapped: list[tuple[int, int]]


def _spapr(ictx: Ictx, dev_id: object) -> tuple[Device, WindowBackend]:
    dev = ictx.dev(dev_id)
    wb = ictx.backend
    if dev.info.platform != "spapr" or not isinstance(wb, WindowBackend):
        raise IommufdError("EOPNOTSUPP", f"device {dev.name!r} has no sPAPR DMA windows")
    return dev, wb


def window_caps(ictx: Ictx, dev_id: object) -> WindowCaps:
    """IOMMU_SPAPR_WINDOW_CAPS (VFIO_IOMMU_SPAPR_TCE_GET_INFO)."""
    dev, wb = _spapr(ictx, dev_id)
    with hw_errors():
        return wb.window_caps(dev.name)


def windows(ictx: Ictx, dev_id: object) -> list[Window]:
    dev, wb = _spapr(ictx, dev_id)
    with hw_errors():
        return wb.windows(dev.name)


def window_create(
    ictx: Ictx, dev_id: object, page_shift: object, size: object, offset: object | None
) -> Window:
    """IOMMU_SPAPR_WINDOW_CREATE (VFIO_IOMMU_SPAPR_TCE_CREATE, with a chosen start)."""
    dev, wb = _spapr(ictx, dev_id)
    with hw_errors():
        caps = wb.window_caps(dev.name)
    ps = u32("page_shift", page_shift)
    sz = u64("size", size)
    off = caps.ddw_offset if offset is None else u64("offset", offset)
    if ps not in caps.page_shifts:
        raise IommufdError("EINVAL", f"page shift {ps} not in {caps.page_shifts}")
    if sz == 0 or sz & (sz - 1) or sz < (1 << ps):
        raise IommufdError("EINVAL", f"size {sz:#x} is not a power of two >= the page size")
    if sz > caps.max_size:
        raise IommufdError("ERANGE", f"size {sz:#x} exceeds the maximum {caps.max_size:#x}")
    if caps.max_tces is not None and sz >> ps > caps.max_tces:
        raise IommufdError(
            "ERANGE", f"{sz >> ps} TCEs of 2^{ps} bytes exceed the maximum {caps.max_tces}"
        )
    if off % (1 << ps):
        raise IommufdError("EINVAL", f"offset {off:#x} not aligned to the page size")
    if off + sz - 1 > U64_MAX:
        raise IommufdError("EOVERFLOW", f"window {off:#x}+{sz:#x} overflows")
    with hw_errors():
        wins = wb.windows(dev.name)
    if len(wins) >= caps.windows_supported:
        raise IommufdError("ENOSPC", f"all {caps.windows_supported} windows in use")
    for w in wins:
        if overlaps((off, off + sz - 1), (w.start, w.last)):
            raise IommufdError("EEXIST", f"overlaps window {w.index}")
    with hw_errors():
        win = wb.create_window(dev.name, ps, sz, off)
    refresh_resv(ictx, dev)
    return win


def window_remove(ictx: Ictx, dev_id: object, index: object) -> None:
    """IOMMU_SPAPR_WINDOW_REMOVE: EBUSY while an area lies in it."""
    dev, wb = _spapr(ictx, dev_id)
    idx = u32("index", index)
    with hw_errors():
        wins = {w.index: w for w in wb.windows(dev.name)}
    w = wins.get(idx)
    if w is None:
        raise IommufdError("ENOENT", f"no window {idx}")
    if dev.hwpt_id is not None:
        iopt = ictx.ioas_of(dev.hwpt_id).iopt
        a = iopt.areas.first_overlapping(w.start, w.last)
        if a is not None:
            raise IommufdError("EBUSY", f"window {idx} holds the area at {a.iova:#x}")
        for al in iopt.allowed:  # the reservation it becomes: iopt_reserve_iova()
            if overlaps(al, (w.start, w.last)):
                raise IommufdError("EADDRINUSE", f"window {idx} is inside allowed ranges")
    with hw_errors():
        wb.remove_window(dev.name, idx)
    refresh_resv(ictx, dev)


def process_window_events(ictx: Ictx) -> list[WindowChange]:
    """Apply the guest's window changes (create, remove, reset) reported since last time.

    The device's windows after the event are the truth: areas of the attached
    IOAS that no longer lie inside a window are unmapped (model and every
    domain), and the device's reserved regions follow the windows.
    """
    wb = ictx.backend
    if not isinstance(wb, WindowBackend):
        return []
    out: list[WindowChange] = []
    events = wb.window_events()
    ppc64_attach.resync(ictx)  # PPC64 domains whose windows the guest took back
    for ev in events:
        dev_id = ictx.by_name.get(ev.device)
        if dev_id is None:
            continue
        dev = ictx.dev(dev_id)
        unmapped: list[tuple[int, int]] = []
        if dev.hwpt_id is not None:
            iopt = ictx.ioas_of(dev.hwpt_id).iopt
            seen: dict[int, Area] = {}
            for r in device_resv(ictx, dev):
                for a in iopt.areas.overlapping(r.start, r.last):
                    seen[a.iova] = a
            victims = [seen[k] for k in sorted(seen)]
            if victims:
                iopt.remove_areas(victims)
                unmapped = [(a.iova, a.length) for a in victims]
        refresh_resv(ictx, dev)
        out.append(WindowChange(ev.device, dev_id, ev.kind, ev.window, unmapped))
    return out
