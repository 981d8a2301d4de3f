"""In-memory "hardware": the mock domain of the kernel selftest, in pure Python.

It holds what the model programmed (domains, mappings, attachments, sPAPR
windows), validates every command completely before changing anything, and
can translate an address for a device and record faults, so VMM logic can be
tested without QEMU.  ``fail_next`` injects one failure into a named method
to test the model's rollback.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from sortedcontainers import SortedDict

from .backend import (
    Access,
    AttachMode,
    DeviceHwInfo,
    DomainType,
    Fault,
    HwDevice,
    HwDomain,
    HwState,
    MapEntry,
    Range,
    SpaprPeInfo,
    Translation,
    WindowCaps,
    merged,
)
from .errors import BackendError
from .memory_windows import DEFAULT_SPAPR_CAPS, DEFAULT_SPAPR_WINDOW, InMemoryWindows
from .ppc64_hw import InMemoryPes

GRANULE = 4096
U64_LIMIT = 1 << 64


@dataclass
class _Domain:
    type: DomainType
    ias: int
    parent: int | None = None
    s1_root: int | None = None
    maps: SortedDict = field(default_factory=SortedDict)
    #: nested only: the stage-1 translations the device currently uses
    s1_visible: dict[int, tuple[int, bool, bool]] = field(default_factory=dict)


def _check_range(what: str, iova: int, size: int, limit: int = U64_LIMIT) -> None:
    for name, v in (("iova", iova), ("size", size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise BackendError(f"{what}: {name} must be a non-negative integer")
    if size == 0:
        raise BackendError(f"{what}: size must be > 0")
    if iova % GRANULE or size % GRANULE:
        raise BackendError(f"{what}: iova {iova:#x} and size {size:#x} must be 4 KiB aligned")
    if iova + size > limit:
        raise BackendError(f"{what}: range {iova:#x}+{size:#x} exceeds {limit:#x}")


class InMemoryBackend(InMemoryPes, InMemoryWindows):
    """A paging vIOMMU (x86 flavour) and/or sPAPR PEs, held in Python objects."""

    def __init__(
        self,
        devices: list[DeviceHwInfo] | None = None,
        default_mode: AttachMode = "blocked",
        spapr_caps: WindowCaps = DEFAULT_SPAPR_CAPS,
        fault_queue_size: int = 256,
    ) -> None:
        self._devinfo: dict[str, DeviceHwInfo] = {}
        self._attach: dict[str, tuple[AttachMode, int | None]] = {}
        self._domains: dict[int, _Domain] = {}
        self._faults: list[Fault] = []
        self.faults_dropped = 0
        self.fault_queue_size = fault_queue_size
        self.spapr_caps = spapr_caps
        self._windows_init()
        #: guest stage-1 tables in "guest memory": root -> {iova page: (ipa, r, w)}
        self.guest_s1: dict[int, dict[int, tuple[int, bool, bool]]] = {}
        self.fail_next: str | None = None
        self.calls: dict[str, int] = {}
        self._pes_init()
        for info in devices or []:
            self.add_device(info)
        self._default_mode = default_mode

    # -- set-up (not part of the Protocol) ---------------------------------
    def add_device(self, info: DeviceHwInfo) -> None:
        """Put a device behind this IOMMU; the facts it reports are ``info``'s.

        This is the hardware: an sPAPR device reports its PE (default window,
        page shifts, TCE limit) from ``spapr_caps`` unless ``info`` already does.
        An x86 device's MSI window is whatever ``info`` says: build it with
        :func:`x86_device` for the LAPIC window x86 IOMMUs report.
        """
        if info.platform == "spapr":
            caps = self.spapr_caps
            host_max = caps.max_tces or caps.max_size >> min(caps.page_shifts)
            pe = info.spapr or SpaprPeInfo(
                DEFAULT_SPAPR_WINDOW.start,
                DEFAULT_SPAPR_WINDOW.size,
                caps.page_shifts,
                caps.windows_supported,
                caps.max_tces,
                dma64_offset=caps.ddw_offset,
            )
            if pe.phb is None:  # each device its own PHB unless placed
                pe = replace(pe, phb=self.next_phb())
            if not pe.host_page_shifts:
                pe = replace(
                    pe,
                    host_page_shifts=caps.page_shifts,
                    host_max_tces=host_max,
                    put_tces_max=self.put_tces_max,
                )
            info = replace(info, spapr=pe)
            self._add_pe_device(info)
        self._devinfo[info.device] = info
        self._attach[info.device] = (getattr(self, "_default_mode", "blocked"), None)
        if info.platform == "spapr":
            self._add_window_device(info.device)

    def _enter(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.fail_next == name:
            self.fail_next = None
            raise BackendError(f"{name}: injected failure")

    def _dom(self, domain: int) -> _Domain:
        d = self._domains.get(domain)
        if d is None:
            raise BackendError(f"domain {domain} does not exist")
        return d

    def _dev(self, device: str) -> DeviceHwInfo:
        info = self._devinfo.get(device)
        if info is None:
            raise BackendError(f"device {device!r} is not behind this IOMMU")
        return info

    # -- HardwareBackend -----------------------------------------------------
    def devices(self) -> list[DeviceHwInfo]:
        return list(self._devinfo.values())

    def device_info(self, device: str) -> DeviceHwInfo:
        return self._dev(device)

    def domain_alloc(
        self,
        domain: int,
        type: DomainType,
        *,
        parent: int | None = None,
        s1_root: int | None = None,
        ias: int | None = None,
    ) -> None:
        self._enter("domain_alloc")
        if not isinstance(domain, int) or not 0 <= domain < (1 << 32):
            raise BackendError(f"domain id {domain!r} is not a uint32")
        if domain in self._domains:
            raise BackendError(f"domain {domain} exists")
        if type == "paging":
            if parent is not None or s1_root is not None:
                raise BackendError("paging domain takes no parent or s1-root")
            bits = 48 if ias is None else ias
            if not 21 <= bits <= 64:
                raise BackendError(f"ias {bits} out of 21..64")
            self._domains[domain] = _Domain("paging", bits)
        elif type == "nested":
            if parent is None or s1_root is None:
                raise BackendError("nested domain needs parent and s1-root")
            if ias is not None:
                raise BackendError("nested domain takes no ias")
            p = self._dom(parent)
            if p.type != "paging":
                raise BackendError(f"parent {parent} is not a paging domain")
            if s1_root % GRANULE:
                raise BackendError(f"s1-root {s1_root:#x} is not 4 KiB aligned")
            d = _Domain("nested", 48, parent=parent, s1_root=s1_root)
            d.s1_visible = dict(self.guest_s1.get(s1_root, {}))
            self._domains[domain] = d
        else:
            raise BackendError(f"unknown domain type {type!r}")

    def _users(self, domain: int) -> tuple[int, int]:
        devs = sum(1 for m, d in self._attach.values() if m == "domain" and d == domain)
        kids = sum(1 for d in self._domains.values() if d.parent == domain)
        return devs, kids

    def domain_free(self, domain: int) -> None:
        self._enter("domain_free")
        self._dom(domain)
        devs, kids = self._users(domain)
        if devs or kids:
            raise BackendError(
                f"domain {domain} is in use: {devs} device(s), {kids} nested domain(s)"
            )
        del self._domains[domain]

    def map(self, domain: int, mappings: list[MapEntry]) -> None:
        self._enter("map")
        d = self._dom(domain)
        if d.type != "paging":
            raise BackendError(f"domain {domain} is not a paging domain")
        if not mappings:
            raise BackendError("map: 'mappings' is empty")
        batch = sorted(mappings, key=lambda m: m.iova)
        prev_last = -1
        for m in batch:
            _check_range("map", m.iova, m.size, min(1 << d.ias, U64_LIMIT))
            _check_range("map", m.addr, m.size)
            if not (m.read or m.write):
                raise BackendError(f"map: mapping at {m.iova:#x} has neither read nor write")
            if m.iova <= prev_last:
                raise BackendError(f"map: batch overlaps itself at {m.iova:#x}")
            prev_last = m.iova + m.size - 1
            if self._find(d, m.iova, prev_last):
                raise BackendError(f"map: {m.iova:#x}+{m.size:#x} overlaps an existing mapping")
        for m in batch:
            d.maps[m.iova] = m

    @staticmethod
    def _find(d: _Domain, start: int, last: int) -> list[MapEntry]:
        out: list[MapEntry] = []
        i = d.maps.bisect_right(start) - 1
        if i >= 0:
            m: MapEntry = d.maps.peekitem(i)[1]
            if m.iova + m.size - 1 >= start:
                out.append(m)
        first = out[0].iova if out else None
        out.extend(d.maps[k] for k in d.maps.irange(start, last) if k != first)
        return out

    def unmap(self, domain: int, ranges: list[tuple[int, int]]) -> int:
        """``ranges`` are (iova, size); mappings are cut at the range edges."""
        self._enter("unmap")
        d = self._dom(domain)
        if d.type != "paging":
            raise BackendError(f"domain {domain} is not a paging domain")
        if not ranges:
            raise BackendError("unmap: 'ranges' is empty")
        for iova, size in ranges:
            _check_range("unmap", iova, size)
        total = 0
        for iova, size in ranges:
            last = iova + size - 1
            if d.maps and iova <= d.maps.peekitem(0)[0]:
                m_end: MapEntry = d.maps.peekitem(-1)[1]
                if m_end.iova + m_end.size - 1 <= last:
                    total += sum(m.size for m in d.maps.values())
                    d.maps.clear()
                    continue
            for m in self._find(d, iova, last):
                del d.maps[m.iova]
                m_last = m.iova + m.size - 1
                if m.iova < iova:
                    d.maps[m.iova] = MapEntry(m.iova, iova - m.iova, m.addr, m.read, m.write)
                if m_last > last:
                    off = last + 1 - m.iova
                    d.maps[last + 1] = MapEntry(
                        last + 1, m_last - last, m.addr + off, m.read, m.write
                    )
                total += min(m_last, last) - max(m.iova, iova) + 1
        return total

    def attach(self, device: str, mode: AttachMode, domain: int | None = None) -> None:
        self._enter("attach")
        self._dev(device)
        if mode == "domain":
            if domain is None:
                raise BackendError("attach: mode domain needs a domain")
            self._dom(domain)
        elif mode in ("blocked", "bypass"):
            if domain is not None:
                raise BackendError(f"attach: mode {mode} takes no domain")
        else:
            raise BackendError(f"attach: unknown mode {mode!r}")
        self._attach[device] = (mode, domain)

    def invalidate(
        self, domain: int | None = None, iova: int | None = None, size: int | None = None
    ) -> None:
        self._enter("invalidate")
        if (iova is None) != (size is None):
            raise BackendError("invalidate: iova and size go together")
        if iova is not None and size is not None:
            _check_range("invalidate", iova, size)
        targets = list(self._domains.items())
        if domain is not None:
            self._dom(domain)
            targets = [(i, d) for i, d in targets if i == domain or d.parent == domain]
        for _i, d in targets:
            if d.type != "nested" or d.s1_root is None:
                continue
            table = self.guest_s1.get(d.s1_root, {})
            if iova is None or size is None:
                d.s1_visible = dict(table)
                continue
            for page in range(iova, iova + size, GRANULE):
                if page in table:
                    d.s1_visible[page] = table[page]
                else:
                    d.s1_visible.pop(page, None)

    def query(self) -> HwState:
        doms = []
        for i in sorted(self._domains):
            d = self._domains[i]
            devs, kids = self._users(i)
            doms.append(
                HwDomain(
                    domain=i,
                    type=d.type,
                    ias=d.ias,
                    parent=d.parent,
                    s1_root=d.s1_root,
                    devices=devs,
                    children=kids,
                    mappings=tuple(merged(d.maps.values())),
                )
            )
        devices = tuple(HwDevice(n, m, dom) for n, (m, dom) in sorted(self._attach.items()))
        return HwState(tuple(doms), devices)

    def _s2(self, d: _Domain, addr: int, access: Access) -> Translation:
        if d.ias < 64 and addr >= (1 << d.ias):
            return Translation(False, stage="stage2", reason="address-size")
        hit = self._find(d, addr, addr)
        if not hit:
            return Translation(False, stage="stage2", reason="not-present")
        m = hit[0]
        if (access == "read" and not m.read) or (access == "write" and not m.write):
            return Translation(False, stage="stage2", reason="permission")
        return Translation(True, addr=m.addr + (addr - m.iova), read=m.read, write=m.write)

    def translate(self, device: str, iova: int, access: Access) -> Translation:
        info = self._dev(device)
        if not isinstance(iova, int) or not 0 <= iova < U64_LIMIT:
            raise BackendError(f"translate: bad iova {iova!r}")
        if access not in ("read", "write"):
            raise BackendError(f"translate: bad access {access!r}")
        pe = self.pe_translate(device, iova, access)
        if pe is not None:
            return pe
        mode, domain = self._attach[device]
        if mode == "blocked":
            return Translation(False, stage="device", reason="blocked")
        if info.platform == "spapr" and not self._in_window(device, iova):
            return Translation(False, stage="device", reason="address-size")
        if mode == "bypass" or domain is None:
            return Translation(True, addr=iova, read=True, write=True)
        d = self._domains[domain]
        if d.type == "paging":
            return self._s2(d, iova, access)
        parent = self._domains[d.parent if d.parent is not None else -1]
        if iova >= (1 << 48):
            return Translation(False, stage="stage1", reason="address-size")
        root = self._s2(parent, d.s1_root or 0, "read")
        if not root.allowed:
            return root
        entry = d.s1_visible.get(iova & ~(GRANULE - 1))
        if entry is None:
            return Translation(False, stage="stage1", reason="not-present")
        ipa, r, w = entry
        if (access == "read" and not r) or (access == "write" and not w):
            return Translation(False, stage="stage1", reason="permission")
        t = self._s2(parent, ipa + (iova % GRANULE), access)
        if not t.allowed:
            return t
        return Translation(True, addr=t.addr, read=r and t.read, write=w and t.write)

    def dma(self, device: str, iova: int, access: Access) -> Translation:
        """A DMA by ``device``: like translate, but a refusal is recorded as a fault."""
        t = self.translate(device, iova, access)
        if not t.allowed:
            _mode, domain = self._attach[device]
            if len(self._faults) >= self.fault_queue_size:
                self.faults_dropped += 1
            else:
                self._faults.append(
                    Fault(device, iova, access, t.stage or "", t.reason or "", domain)
                )
        return t

    def faults(self, clear: bool = False) -> list[Fault]:
        out = list(self._faults)
        if clear:
            self._faults.clear()
            self.faults_dropped = 0
        return out

    # -- guest side of nesting -------------------------------------------------
    def guest_write_stage1(
        self, s1_root: int, iova: int, size: int, ipa: int, read: bool = True, write: bool = True
    ) -> None:
        """The guest writes stage-1 entries (not visible until invalidated)."""
        table = self.guest_s1.setdefault(s1_root, {})
        for off in range(0, size, GRANULE):
            table[iova + off] = (ipa + off, read, write)

    def guest_clear_stage1(self, s1_root: int, iova: int, size: int) -> None:
        table = self.guest_s1.setdefault(s1_root, {})
        for off in range(0, size, GRANULE):
            table.pop(iova + off, None)


#: The interrupt window of x86 (the LAPIC's MSI address range), which x86 IOMMUs
#: report as an IOMMU_RESV_MSI region: a fact of the hardware this backend plays.
X86_MSI_WINDOW: Range = (0xFEE00000, 0xFEEFFFFF)


def x86_device(name: str, **facts: Any) -> DeviceHwInfo:
    """A requester of an x86 paging IOMMU, as such hardware reports it: the
    LAPIC's MSI window reserved (``IOMMU_RESV_MSI``), other facts as given."""
    facts.setdefault("msi_window", X86_MSI_WINDOW)
    return DeviceHwInfo(name, "x86", **facts)


__all__ = [
    "DEFAULT_SPAPR_CAPS",
    "DEFAULT_SPAPR_WINDOW",
    "X86_MSI_WINDOW",
    "InMemoryBackend",
    "x86_device",
]
