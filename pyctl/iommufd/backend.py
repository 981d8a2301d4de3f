"""The "hardware" interface the object model programs.

It is shaped after the device's QMP commands (docs/qmp.md): domain ids are
chosen by the caller; maps and unmaps are batches; a device is attached
``blocked``, ``bypass`` or to a domain; ``query`` reports everything so a
restarted control plane can rebuild its view.  sPAPR DMA windows are a
second, optional part (``WindowBackend``).  Every method is all-or-nothing:
it raises :class:`~pyctl.iommufd.errors.BackendError` and changes nothing,
or succeeds completely.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol, runtime_checkable

DomainType = Literal["paging", "nested"]
AttachMode = Literal["blocked", "bypass", "domain"]
Access = Literal["read", "write"]
Platform = Literal["x86", "spapr"]
#: the kernel's enum iommu_resv_type, as the device names them
ResvKind = Literal["direct", "direct-relaxable", "reserved", "msi", "sw-msi"]
Range = tuple[int, int]


@dataclass(frozen=True, slots=True)
class MapEntry:
    iova: int
    size: int
    addr: int
    read: bool
    write: bool


@dataclass(frozen=True, slots=True)
class HwDomain:
    domain: int
    type: DomainType
    ias: int
    parent: int | None = None
    s1_root: int | None = None
    devices: int = 0
    children: int = 0
    mappings: tuple[MapEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class HwDevice:
    device: str
    mode: AttachMode
    domain: int | None = None


@dataclass(frozen=True, slots=True)
class HwState:
    domains: tuple[HwDomain, ...]
    devices: tuple[HwDevice, ...]


class ResvRegion(NamedTuple):
    """One reserved region of a device (``iommu_get_resv_regions``): IOVA DMA cannot use."""

    start: int
    last: int
    kind: ResvKind = "reserved"


@dataclass(frozen=True, slots=True)
class SpaprPeInfo:
    """What an sPAPR PE reports (``ibm,query-pe-dma-window`` and VFIO's TCE_GET_INFO)."""

    #: the default 32-bit window every PE starts with
    dma32_start: int = 0
    dma32_size: int = 1 << 30
    #: TCE page shifts the PE implements
    page_shifts: tuple[int, ...] = (12, 16, 21, 24)
    max_windows: int = 2
    #: TCEs one window may hold, if limited
    max_tces: int | None = None
    #: TCE table levels
    levels: int = 1
    #: what the host side may create (VFIO's SPAPR_TCE_CREATE): the page shifts
    #: the PE's TCE tables implement, the largest window in TCEs (None: not
    #: reported), and TCEs per read of a table
    host_page_shifts: tuple[int, ...] = ()
    host_max_tces: int | None = None
    read_tces_max: int | None = None
    #: the PE: the PHB's index (every device on a PHB shares its TCE tables);
    #: None until the hardware places the device
    phb: int | None = None
    #: bus offset of the 64-bit window the platform chooses (policy dma64-offset)
    dma64_offset: int = 1 << 59
    #: host TCEs per bulk write (x-iommulab-spapr-put-tces), if reported
    put_tces_max: int | None = None


#: 4 KiB, 2 MiB and 1 GiB pages (bit n set = 2**n bytes)
DEFAULT_PGSIZE_BITMAP = (1 << 12) | (1 << 21) | (1 << 30)


@dataclass(frozen=True, slots=True)
class DeviceHwInfo:
    """What the hardware tells about a device behind it (the kernel's GET_HW_INFO
    plus the reserved regions ``iommu_get_resv_regions`` reports).

    The model reserves exactly ``resv_regions()`` in every IOAS the device is
    attached to (``iopt_table_enforce_dev_resv_regions``) and takes page sizes,
    address width and nesting from here; it knows no hardware constant.
    """

    device: str
    platform: Platform
    #: input address bits of its paging domains (aperture 0 .. 2**ias - 1)
    ias: int = 48
    #: supported page sizes, bit n set = 2**n bytes
    pgsize_bitmap: int = DEFAULT_PGSIZE_BITMAP
    nesting: bool = True
    #: reserved regions other than the MSI window, as (start, last, kind)
    reserved: tuple[ResvRegion, ...] = ()
    #: the MSI window (an IOMMU_RESV_MSI region), None when the device has none
    msi_window: Range | None = None
    #: sPAPR PE facts (None for a paging IOMMU's requester)
    spapr: SpaprPeInfo | None = None
    #: input bits of its nested domains' stage-1 tables (the guest's table format)
    s1_ias: int = 48
    #: first IOVA of its paging domains' aperture (geometry.aperture_start; the
    #: kernel selftest's mock domain starts at 16 MiB)
    aperture_start: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "reserved", tuple(ResvRegion(*r) for r in self.reserved))

    def resv_regions(self) -> list[ResvRegion]:
        """Every reserved region, the MSI window included, in address order."""
        out = list(self.reserved)
        if self.msi_window is not None:
            out.append(ResvRegion(self.msi_window[0], self.msi_window[1], "msi"))
        return sorted(out)


@dataclass(frozen=True, slots=True)
class Translation:
    allowed: bool
    addr: int | None = None
    read: bool = False
    write: bool = False
    stage: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Fault:
    device: str
    iova: int
    access: Access
    stage: str
    reason: str
    domain: int | None = None


@dataclass(frozen=True, slots=True)
class WindowCaps:
    """sPAPR DMA window capabilities of a device's PE (ibm,query-pe-dma-window)."""

    windows_supported: int
    page_shifts: tuple[int, ...]
    ddw_offset: int
    max_size: int
    #: TCEs a window may have (its size >> page shift), if the hardware limits that
    max_tces: int | None = None


@dataclass(frozen=True, slots=True)
class Window:
    index: int
    start: int
    size: int
    page_shift: int

    @property
    def last(self) -> int:
        return self.start + self.size - 1


@dataclass(frozen=True, slots=True)
class WindowEvent:
    """A guest-initiated window change the device reports."""

    device: str
    kind: Literal["created", "removed", "reset"]
    window: Window


def merged(maps: Iterable[MapEntry]) -> list[MapEntry]:
    """Mappings as the device reports them: touching runs with contiguous output and
    equal permissions joined (``x-iommulab-query``).  ``maps`` is in IOVA order."""
    out: list[MapEntry] = []
    for m in maps:
        if out:
            p = out[-1]
            if (
                p.iova + p.size == m.iova
                and p.addr + p.size == m.addr
                and (p.read, p.write) == (m.read, m.write)
            ):
                out[-1] = MapEntry(p.iova, p.size + m.size, p.addr, p.read, p.write)
                continue
        out.append(m)
    return out


class DomainMapper(Protocol):
    """What filling and emptying a domain needs (pages.py): map and unmap batches."""

    def map(self, domain: int, mappings: list[MapEntry]) -> None: ...

    def unmap(self, domain: int, ranges: list[tuple[int, int]]) -> int: ...


@runtime_checkable
class HardwareBackend(Protocol):
    def devices(self) -> list[DeviceHwInfo]: ...

    def device_info(self, device: str) -> DeviceHwInfo: ...

    def domain_alloc(
        self,
        domain: int,
        type: DomainType,
        *,
        parent: int | None = None,
        s1_root: int | None = None,
        ias: int | None = None,
    ) -> None: ...

    def domain_free(self, domain: int) -> None: ...

    def map(self, domain: int, mappings: list[MapEntry]) -> None: ...

    def unmap(self, domain: int, ranges: list[tuple[int, int]]) -> int: ...

    def attach(self, device: str, mode: AttachMode, domain: int | None = None) -> None: ...

    def invalidate(
        self, domain: int | None = None, iova: int | None = None, size: int | None = None
    ) -> None: ...

    def query(self) -> HwState: ...

    def translate(self, device: str, iova: int, access: Access) -> Translation: ...

    def faults(self, clear: bool = False) -> list[Fault]: ...


@runtime_checkable
class WindowBackend(Protocol):
    """sPAPR DMA windows of a device's PE (the part the ppc64 iommufd work lacks)."""

    def window_caps(self, device: str) -> WindowCaps: ...

    def windows(self, device: str) -> list[Window]: ...

    def create_window(self, device: str, page_shift: int, size: int, offset: int) -> Window: ...

    def remove_window(self, device: str, index: int) -> None: ...

    def window_events(self) -> list[WindowEvent]: ...
