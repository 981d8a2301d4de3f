"""The selftest's mock IOMMU as the model's hardware, with the facts the kernel reports.

The runner's probe (``P``) opens a context of its own, attaches a mock
device to an IOAS and answers GET_HW_INFO and IOVA_RANGES of that IOAS: the
allowed ranges are the mock domain's aperture minus the device's reserved
regions, the IOVA alignment its smallest page.  :func:`facts_from_probe`
turns that answer into :class:`MockFacts`, and every mock device of the
model reports them; nothing here copies a constant of selftest.c.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from sortedcontainers import SortedDict

from pyctl.iommufd.backend import (
    Access,
    AttachMode,
    DeviceHwInfo,
    DomainType,
    Fault,
    HwDevice,
    HwDomain,
    HwState,
    MapEntry,
    ResvRegion,
    Translation,
    merged,
)
from pyctl.iommufd.errors import BackendError

from .protocol import Answer, ProtocolError, errno_name

Range = tuple[int, int]


@dataclass(frozen=True, slots=True)
class MockFacts:
    """What the kernel says about its mock devices."""

    page_size: int  # the guest kernel's PAGE_SIZE
    hw_info_type: int  # IOMMU_GET_HW_INFO out_data_type (IOMMU_HW_INFO_TYPE_SELFTEST)
    test_reg: int
    capabilities: int
    hpage_size: int  # THP's PMD size, iopt_alloc_iova()'s alignment cap (0: no THP)
    pgsize: int  # the mock domain's smallest page (the IOAS's IOVA alignment)
    aperture: Range
    reserved: tuple[Range, ...]  # holes inside the aperture
    #: the kernel cannot create mock devices: IOMMU_TEST_OP_MOCK_DOMAIN's errno
    #: (then the device facts above are placeholders for the generator only)
    mock_errno: str | None = None
    #: iopt_alloc_iova()'s cap on the automatic IOVA alignment (HPAGE_SIZE) when
    #: the kernel shows one below two pages (differ.Session probes it), else 0
    iova_cap: int = 0
    #: the mock driver takes IOMMU_HWPT_DATA_SELFTEST for a paging HWPT (from 6.19 its
    #: pagetable_type picks the mock page table; 6.12: EOPNOTSUPP); differ.Session probes it
    paging_data: bool = False
    #: the mock driver takes IOMMU_HWPT_ALLOC_PASID (from 6.19: a PASID-compatible HWPT,
    #: which only matters to PASID attaches, never generated); differ.Session probes it
    pasid_flag: bool = False
    #: sizeof(struct iommu_hwpt_selftest), the longest selftest data the mock driver
    #: takes (6.12: 4, its iotlb; 6.19: 8, with pagetable_type); differ.Session probes it
    selftest_data_len: int = 4

    def device(self, name: str) -> DeviceHwInfo:
        start, last = self.aperture
        if last + 1 & last:
            raise ProtocolError(f"aperture end {last:#x} + 1 is not a power of two")
        return DeviceHwInfo(
            name,
            "x86",
            ias=last.bit_length(),
            pgsize_bitmap=self.pgsize,
            nesting=True,
            reserved=tuple(ResvRegion(s, e, "reserved") for s, e in self.reserved),
            aperture_start=start,
        )


def facts_from_probe(ans: Answer) -> MockFacts:
    if ans.errno is not None:
        raise ProtocolError(f"the runner's probe failed: {ans.errno} (is CONFIG_IOMMUFD_TEST on?)")
    v = ans.values
    if len(v) < 8 or len(v) != 8 + 2 * v[7]:
        raise ProtocolError(f"bad probe answer {ans}")
    page, thp, mock_err = v[0], v[1], v[2]
    if mock_err:  # no mock devices: IOAS calls only
        return MockFacts(
            page, 0, 0, 0, thp, page, (1 << 24, (1 << 31) - 1), (), errno_name(mock_err)
        )
    if v[7] == 0:
        raise ProtocolError(f"bad probe answer {ans}: no IOVA range")
    ranges = [(v[8 + 2 * i], v[9 + 2 * i]) for i in range(v[7])]
    holes = tuple((a[1] + 1, b[0] - 1) for a, b in itertools.pairwise(ranges))
    return MockFacts(page, v[3], v[4], v[5], thp, v[6], (ranges[0][0], ranges[-1][1]), holes)


@dataclass
class _Domain:
    type: DomainType
    ias: int
    parent: int | None = None
    s1_root: int | None = None
    maps: SortedDict = field(default_factory=SortedDict)


class MockHardware:
    """The mock IOMMU: domains of ``facts.pgsize`` pages inside the aperture, and the
    mock devices, one per IOMMU_TEST_OP_MOCK_DOMAIN (``new_device``)."""

    def __init__(self, facts: MockFacts) -> None:
        self.facts = facts
        self._devices: dict[str, DeviceHwInfo] = {}
        self._attach: dict[str, tuple[AttachMode, int | None]] = {}
        self._domains: dict[int, _Domain] = {}
        self._count = 0

    def new_device(self) -> str:
        """mock_dev_create(): a new device on the mock bus."""
        name = f"iommufd_mock{self._count}"
        self._count += 1
        self._devices[name] = self.facts.device(name)
        self._attach[name] = ("blocked", None)
        return name

    def remove_device(self, name: str) -> None:
        """mock_dev_destroy()."""
        del self._devices[name]
        del self._attach[name]

    # -- HardwareBackend -------------------------------------------------
    def devices(self) -> list[DeviceHwInfo]:
        return list(self._devices.values())

    def device_info(self, device: str) -> DeviceHwInfo:
        try:
            return self._devices[device]
        except KeyError:
            raise BackendError(f"no mock device {device!r}") from None

    def domain_alloc(
        self,
        domain: int,
        type: DomainType,
        *,
        parent: int | None = None,
        s1_root: int | None = None,
        ias: int | None = None,
    ) -> None:
        if domain in self._domains:
            raise BackendError(f"domain {domain} exists")
        if type == "nested" and (parent not in self._domains):
            raise BackendError(f"nested domain {domain}: no parent {parent}")
        if ias is None:  # a nested domain: the stage-1 format's width
            ias = self.facts.device("").s1_ias
        self._domains[domain] = _Domain(type, ias, parent, s1_root)

    def domain_free(self, domain: int) -> None:
        # The model frees a domain with its mappings (the IOAS forgets them
        # after); the kernel unmaps first.  Not visible through the uAPI.
        self._dom(domain)
        if ("domain", domain) in self._attach.values():
            raise BackendError(f"domain {domain} freed while a device uses it")
        del self._domains[domain]

    def _dom(self, domain: int) -> _Domain:
        try:
            return self._domains[domain]
        except KeyError:
            raise BackendError(f"no domain {domain}") from None

    def map(self, domain: int, mappings: list[MapEntry]) -> None:
        d = self._dom(domain)
        pg = self.facts.pgsize
        start, last = self.facts.aperture
        for m in mappings:
            if m.iova % pg or m.size % pg or m.addr % pg or not m.size:
                raise BackendError(f"map {m.iova:#x}+{m.size:#x}: not {pg:#x} aligned")
            if m.iova < start or m.iova + m.size - 1 > last:
                raise BackendError(f"map {m.iova:#x}+{m.size:#x} outside the aperture")
            lo = d.maps.bisect_right(m.iova) - 1
            if lo >= 0:
                k = d.maps.keys()[lo]
                if k + d.maps[k].size > m.iova:
                    raise BackendError(f"map {m.iova:#x}: already mapped")
            nxt = d.maps.bisect_left(m.iova)
            if nxt < len(d.maps) and d.maps.keys()[nxt] < m.iova + m.size:
                raise BackendError(f"map {m.iova:#x}+{m.size:#x}: already mapped")
        for m in mappings:
            d.maps[m.iova] = m

    def unmap(self, domain: int, ranges: list[tuple[int, int]]) -> int:
        d = self._dom(domain)
        done = 0
        for iova, size in ranges:
            for k in list(d.maps.irange(iova, iova + size - 1)):
                m = d.maps[k]
                if k + m.size > iova + size:
                    raise BackendError(f"unmap {iova:#x}+{size:#x} splits {k:#x}+{m.size:#x}")
                done += m.size
                del d.maps[k]
        return done

    def attach(self, device: str, mode: AttachMode, domain: int | None = None) -> None:
        if device not in self._devices:
            raise BackendError(f"no mock device {device!r}")
        if mode == "domain":
            self._dom(domain if domain is not None else -1)
        self._attach[device] = (mode, domain)

    def invalidate(
        self, domain: int | None = None, iova: int | None = None, size: int | None = None
    ) -> None:
        if domain is not None:
            self._dom(domain)

    def query(self) -> HwState:
        users = [dom for mode, dom in self._attach.values() if mode == "domain"]
        parents = [d.parent for d in self._domains.values()]
        doms = tuple(
            HwDomain(
                i,
                d.type,
                d.ias,
                d.parent,
                d.s1_root,
                users.count(i),
                parents.count(i),
                tuple(merged(list(d.maps.values()))),
            )
            for i, d in sorted(self._domains.items())
        )
        devs = tuple(HwDevice(n, m, dom) for n, (m, dom) in sorted(self._attach.items()))
        return HwState(doms, devs)

    def translate(self, device: str, iova: int, access: Access) -> Translation:
        mode, dom = self._attach[device]
        if mode != "domain" or dom is None:
            return Translation(False)
        d = self._domains[dom]
        i = d.maps.bisect_right(iova) - 1
        if i < 0:
            return Translation(False)
        m = d.maps[d.maps.keys()[i]]
        if iova >= m.iova + m.size:
            return Translation(False)
        return Translation(True, m.addr + iova - m.iova, m.read, m.write)

    def faults(self, clear: bool = False) -> list[Fault]:
        return []
