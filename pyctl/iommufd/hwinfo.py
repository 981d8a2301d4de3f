"""DeviceHwInfo from the device's own report (``x-iommulab-query-hw-info``).

The QMP answer (``IommulabHwInfo``, docs/qmp.md) is the lab's
IOMMU_GET_HW_INFO plus the regions ``iommu_get_resv_regions`` would report;
this turns it into the typed facts the model works from, so no hardware
constant is written twice.  A backend calls :func:`device_hw_info` with the
answer for a device.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from .backend import DeviceHwInfo, Platform, ResvKind, ResvRegion, SpaprPeInfo

#: the device's translation type -> the model's kind of IOMMU.  A paging vIOMMU's
#: requester and pseries' stage-2 requester take paging domains ("x86" in the
#: model's terms: domains with an aperture); a TCE PE has DMA windows ("spapr").
_PLATFORM: dict[str, Platform] = {
    "paging": "x86",
    "spapr-stage2": "x86",
    "spapr-tce": "spapr",
}
_KINDS: frozenset[str] = frozenset({"direct", "direct-relaxable", "reserved", "msi", "sw-msi"})


def _last(r: Mapping[str, Any]) -> int:
    return int(r["start"]) + int(r["size"]) - 1


def device_hw_info(answer: Mapping[str, Any], name: str | None = None) -> DeviceHwInfo:
    """The DeviceHwInfo of one ``x-iommulab-query-hw-info`` answer.

    ``name`` is the device's key in the model (default: the requester's QOM
    path, or the vIOMMU's when the answer is about the vIOMMU itself).
    Raises ValueError for an answer this model cannot represent.
    """
    kind = answer["type"]
    platform = _PLATFORM.get(kind)
    if platform is None:
        raise ValueError(f"unknown translation type {kind!r}")
    msi = answer.get("msi-window")
    msi_window = (int(msi["start"]), _last(msi)) if msi and int(msi["size"]) else None
    reserved: list[ResvRegion] = []
    for r in answer.get("reserved-regions", []):
        t = r["type"]
        if t not in _KINDS:
            raise ValueError(f"unknown reserved region type {t!r}")
        region = ResvRegion(int(r["start"]), _last(r), cast(ResvKind, t))
        if t == "msi" and msi_window == (region.start, region.last):
            continue  # the MSI window, reported twice
        reserved.append(region)
    pe = answer.get("spapr-pe")
    spapr = None
    if pe is not None:
        win = pe["default-window"]
        host = pe.get("host-windows")
        spapr = SpaprPeInfo(
            int(win["start"]),
            int(win["size"]),
            tuple(int(s) for s in pe["page-shifts"]),
            int(pe["max-windows"]),
            int(pe["max-tces"]),
            int(pe["levels"]),
            host_page_shifts=tuple(int(s) for s in host["page-shifts"]) if host else (),
            host_max_tces=int(host["max-tces"]) if host else None,
            read_tces_max=int(host["read-tces-max"]) if host else None,
            phb=int(pe["phb"]),
            dma64_offset=int(pe["dma64-offset"]),
            put_tces_max=int(host["put-tces-max"]) if host and "put-tces-max" in host else None,
        )
    ias = answer.get("ias")
    s1 = answer.get("stage1")
    # stage 1 is reported only where nesting is offered; the field then is moot
    more = {"s1_ias": int(s1["ias"])} if s1 else {}
    return DeviceHwInfo(
        name or answer.get("device") or answer["iommu"],
        platform,
        ias=int(ias["default"]) if ias else 64,
        pgsize_bitmap=int(answer["page-sizes"]),
        nesting=bool(answer["nesting"]),
        reserved=tuple(reserved),
        msi_window=msi_window,
        spapr=spapr,
        **more,
    )
