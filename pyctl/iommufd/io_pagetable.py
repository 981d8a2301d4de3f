"""The IOVA page table of one IOAS (drivers/iommu/iommufd/io_pagetable.c).

Areas by IOVA, the allowed and reserved ranges, the domains (HWPT_PAGINGs)
that mirror the areas, the IOVA alignment they impose, and programming of
those domains with undo.  Every method checks everything before it changes
anything (or undoes what reached the hardware), so a raised
:class:`~pyctl.iommufd.errors.IommufdError` leaves the table as it was.  The
checks run in the kernel's order; the function each one follows is named
beside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .allocator import HoleSet, alloc_alignment, allocatable_base, lowest_bit
from .areas import Area, AreaTree
from .backend import DomainMapper, HardwareBackend, MapEntry, ResvRegion
from .errors import IommufdError
from .pages import entries, fill_domains, hw_errors, unfill_domains
from .pinning import Pins
from .ranges import Range, complement, intersect, normalize, overlaps
from .uapi import PAGE_SIZE, U64_MAX, ULONG_MAX


@dataclass
class Reserved:
    start: int
    last: int
    #: ("device", dev_id) for a device's reserved regions, ("hwpt", id) for an aperture
    owner: tuple[str, int]


@dataclass(frozen=True, slots=True)
class DomainInfo:
    """What the page table needs of a domain: its id, page sizes and aperture."""

    id: int
    pgsize_bitmap: int
    ias: int
    #: a list of apertures (a PPC64 domain's DMA windows) instead of 0 .. 2**ias - 1
    apertures: tuple[Range, ...] | None = None

    def aperture_resv(self) -> list[Range]:
        # iopt_table_add_domain(): IOVA outside the aperture(s) is reserved
        if self.apertures is not None:
            return complement(normalize(self.apertures))
        return [] if self.ias >= 64 else [(1 << self.ias, U64_MAX)]


class _Router:
    """The domains' programming: a domain with its own mapper (a PPC64 domain
    writing TCEs) gets its batches, every other one goes to the backend."""

    def __init__(self, hw: HardwareBackend, own: dict[int, DomainMapper]) -> None:
        self.hw = hw
        self.own = own

    def map(self, domain: int, mappings: list[MapEntry]) -> None:
        (self.own.get(domain) or self.hw).map(domain, mappings)

    def unmap(self, domain: int, ranges: list[tuple[int, int]]) -> int:
        return (self.own.get(domain) or self.hw).unmap(domain, ranges)


@dataclass(frozen=True, slots=True)
class Piece:
    """A run of memory to map (``iopt_pages_list``): address, length, writability, pages."""

    phys: int
    length: int
    writable: bool
    pages: int


class IoPagetable:
    """``struct io_pagetable``: one IOAS's areas, ranges and domains."""

    def __init__(
        self,
        hw: HardwareBackend,
        pins: Pins,
        max_alignment: int | None,
        page_size: int = PAGE_SIZE,
    ) -> None:
        #: the kernel's PAGE_SIZE (ModelOptions.page_size)
        self.page_size = page_size
        self.hw = hw
        self.pins = pins
        #: iopt_alloc_iova()'s max_alignment (HPAGE_SIZE with THP, else PAGE_SIZE)
        self.max_alignment = max_alignment
        self.areas = AreaTree()
        self.allowed: list[Range] = []
        self.reserved: list[Reserved] = []
        self.domains: list[DomainInfo] = []
        self.disable_large_pages = False
        #: iopt->iova_alignment: a software table is byte granular
        self.iova_alignment = 1
        self.holes = HoleSet(allocatable_base([], [], page_size))
        #: domains programmed by the model itself (PPC64 windows), by id
        self.mappers: dict[int, DomainMapper] = {}
        self.mapper = _Router(hw, self.mappers)

    # ------------------------------------------------------------ views
    @property
    def domain_ids(self) -> list[int]:
        return [d.id for d in self.domains]

    def _calculate_iova_alignment(self) -> None:
        """iopt_calculate_iova_alignment(), after domains or large pages changed."""
        align = self.page_size if self.disable_large_pages else 1
        for d in self.domains:
            align = max(align, lowest_bit(d.pgsize_bitmap))
        self.iova_alignment = align

    def reserved_ranges(self) -> list[Range]:
        return normalize((r.start, r.last) for r in self.reserved)

    def iova_ranges(self) -> list[Range]:
        # iommufd_ioas_iova_ranges(): the holes of reserved_itree
        return complement(self.reserved_ranges())

    def rebuild_holes(self) -> None:
        base = allocatable_base(self.allowed, self.reserved_ranges(), self.page_size)
        if base == self.holes.base:
            return
        holes = HoleSet(base)
        for a in self.areas:
            holes.take(a.iova, a.last)
        self.holes = holes

    # ------------------------------------------------------------ placing
    def alloc_iova(self, length: int, addr: int) -> int:
        """iopt_alloc_iova(): the lowest free allowed IOVA, never 0."""
        if length == 0 or length >= ULONG_MAX // 2:
            raise IommufdError("EOVERFLOW", f"length {length:#x} too large to allocate")
        want = alloc_alignment(length, addr, self.max_alignment)
        if want < self.iova_alignment:
            raise IommufdError(
                "EINVAL",
                f"allocation alignment {want:#x} below IOAS alignment {self.iova_alignment:#x}",
            )
        found = self.holes.find(length, want, addr % self.page_size, self._allowed_spans())
        if found is None:
            raise IommufdError("ENOSPC", f"no free IOVA for {length:#x} bytes")
        return found

    def _allowed_spans(self) -> list[Range]:
        """The spans iopt_alloc_iova() walks: the allowed ranges (all if none), joined
        where they touch, within PAGE_SIZE .. ULONG_MAX - PAGE_SIZE."""
        lo, hi = self.page_size, ULONG_MAX - self.page_size
        if not self.allowed:
            return [(lo, hi)]
        return intersect(normalize(self.allowed), [(lo, hi)])

    def check_iova(self, iova: int, length: int) -> None:
        """iopt_check_iova(): a FIXED_IOVA map (allowed ranges do not apply)."""
        align = self.iova_alignment
        if iova & (align - 1):
            raise IommufdError("EINVAL", f"iova {iova:#x} not aligned to {align:#x}")
        last = iova + length - 1
        if last > ULONG_MAX:
            raise IommufdError("EOVERFLOW", f"iova {iova:#x} + length {length:#x} overflows")
        for r in self.reserved:
            if overlaps((r.start, r.last), (iova, last)):
                raise IommufdError(
                    "EINVAL", f"[{iova:#x}, {last:#x}] hits reserved [{r.start:#x}, {r.last:#x}]"
                )
        hit = self.areas.first_overlapping(iova, last)
        if hit is not None:
            raise IommufdError(
                "EEXIST", f"[{iova:#x}, {last:#x}] overlaps the area at {hit.iova:#x}"
            )

    def place(self, length: int, addr: int, fixed: bool, iova: int) -> int:
        """iopt_alloc_area_pages(): the checks and the IOVA choice (nothing changes)."""
        align = self.iova_alignment
        if length & (align - 1) or not length:
            raise IommufdError("EINVAL", f"length {length:#x} not a multiple of {align:#x}")
        if not fixed:
            return self.alloc_iova(length, addr)
        self.check_iova(iova, length)
        return iova

    def map_pages(self, at: int, pieces: Sequence[Piece], read: bool, write: bool) -> list[Area]:
        """iopt_insert_area() for each piece, then iopt_fill_domains_pages()."""
        align = self.iova_alignment
        areas: list[Area] = []
        pos = at
        for p in pieces:
            if write and not p.writable:  # iopt_insert_area()
                raise IommufdError("EPERM", "WRITEABLE mapping of read-only pages")
            if (p.phys % self.page_size) & (align - 1):  # iopt_insert_area(): page_offset
                raise IommufdError(
                    "EINVAL", f"address {p.phys:#x} offset not aligned to {align:#x}"
                )
            areas.append(Area(pos, p.length, p.phys, read, write, p.writable, p.pages))
            pos += p.length
        if self.domains:
            self.pins.pin(areas)  # iopt_area_fill_domains(): pinning, ENOMEM
            try:
                fill_domains(self.mapper, self.domain_ids, entries(areas))
            except IommufdError:
                self.pins.unpin(areas)
                raise
        for a in areas:
            self.areas.add(a)
            self.holes.take(a.iova, a.last)
        return areas

    def get_pages(self, iova: int, length: int) -> list[Piece]:
        """iopt_get_pages(): the pieces of contiguous areas covering [iova, +length)."""
        if not length:
            raise IommufdError("EINVAL", "length is 0")
        last = iova + length - 1
        if last > ULONG_MAX:
            raise IommufdError("EOVERFLOW", f"iova {iova:#x} + length {length:#x} overflows")
        pieces: list[Piece] = []
        cur = iova
        for a in self.areas.overlapping(iova, last):
            if a.iova > cur:
                break
            end = min(a.last, last)
            pieces.append(Piece(a.phys + (cur - a.iova), end - cur + 1, a.pages_writable, a.pages))
            cur = end + 1
            if cur > last:
                break
        if cur <= last:
            raise IommufdError("ENOENT", f"[{iova:#x}, {last:#x}] is not fully mapped")
        return pieces

    # ------------------------------------------------------------ unmapping
    def unmap_iova(self, iova: int, length: int, atomic: bool) -> int:
        """iopt_unmap_iova(); returns the bytes unmapped (0: nothing was mapped).

        ``atomic``: the whole range is checked first and either every area in
        it goes or none.  Otherwise as iopt_unmap_iova_range(): areas go in
        IOVA order until one would have to be split (ENOENT; the ones before
        it stay unmapped, ``data["unmapped"]`` counts them).
        """
        if not length:
            raise IommufdError("EINVAL", "length is 0")
        last = iova + length - 1
        if last > ULONG_MAX:
            raise IommufdError("EOVERFLOW", f"iova {iova:#x} + length {length:#x} overflows")
        victims: list[Area] = []
        split: Area | None = None
        for a in self.areas.overlapping(iova, last):
            if a.iova < iova or a.last > last:
                split = a
                break
            victims.append(a)
        if split is not None and (atomic or not victims):
            raise IommufdError(
                "ENOENT",
                f"[{iova:#x}, {last:#x}] would split the area [{split.iova:#x}, {split.last:#x}]",
                unmapped=0,
            )
        self.remove_areas(victims)
        done = sum(a.length for a in victims)
        if split is not None:
            raise IommufdError(
                "ENOENT",
                f"[{iova:#x}, {last:#x}] would split the area [{split.iova:#x}, "
                f"{split.last:#x}]; {done:#x} bytes before it were unmapped",
                unmapped=done,
            )
        return done

    def unmap_all(self) -> int:
        """iopt_unmap_all(): every area; an empty table is fine."""
        victims = list(self.areas)
        self.remove_areas(victims)
        return sum(a.length for a in victims)

    def remove_areas(self, victims: list[Area]) -> None:
        """Unmap the areas from every domain, unpin them, forget them."""
        if not victims:
            return
        if self.domains:
            unfill_domains(self.mapper, self.domain_ids, victims)
            self.pins.unpin(victims)
        if len(victims) == len(self.areas):
            self.areas = AreaTree()
            self.holes = HoleSet(self.holes.base)
            return
        for a in victims:
            self.areas.remove(a.iova)
            self.holes.give(a.iova, a.last)

    # ------------------------------------------------------------ ranges
    def set_allow_iova(self, ranges: list[Range]) -> None:
        """iopt_set_allow_iova(): EADDRINUSE if an allowed range meets a reserved one."""
        for s, e in ranges:
            for res in self.reserved:
                if overlaps((s, e), (res.start, res.last)):
                    raise IommufdError(
                        "EADDRINUSE",
                        f"allowed [{s:#x}, {e:#x}] overlaps reserved "
                        f"[{res.start:#x}, {res.last:#x}]",
                    )
        self.allowed = sorted(ranges)
        self.rebuild_holes()

    def check_reserve(self, ranges: Iterable[Range], what: str) -> None:
        """iopt_reserve_iova(): EADDRINUSE if a range meets an area or an allowed range."""
        for s, e in ranges:
            a = self.areas.first_overlapping(s, e)
            if a is not None:
                raise IommufdError(
                    "EADDRINUSE", f"{what} [{s:#x}, {e:#x}] overlaps the area at {a.iova:#x}"
                )
            for al in self.allowed:
                if overlaps((s, e), al):
                    raise IommufdError(
                        "EADDRINUSE",
                        f"{what} [{s:#x}, {e:#x}] overlaps allowed [{al[0]:#x}, {al[1]:#x}]",
                    )

    def reserve(self, ranges: Iterable[Range], owner: tuple[str, int]) -> None:
        """Record reservations already checked with :meth:`check_reserve`."""
        self.reserved.extend(Reserved(s, e, owner) for s, e in ranges)
        self.rebuild_holes()

    def remove_reserved(self, owner: tuple[str, int]) -> None:
        """iopt_remove_reserved_iova()."""
        self.reserved = [r for r in self.reserved if r.owner != owner]
        self.rebuild_holes()

    def has_reserved(self, owner: tuple[str, int]) -> bool:
        return any(r.owner == owner for r in self.reserved)

    def check_dev_resv_regions(self, regions: Sequence[ResvRegion], count_msi: bool) -> list[Range]:
        """iopt_table_enforce_dev_resv_regions()'s checks; returns the ranges to reserve.

        DIRECT_RELAXABLE regions are not reserved; a driver offering both a
        software and a hardware MSI region, or two software ones, is refused
        (EINVAL, only counted on attach: replace passes no sw_msi_start).
        """
        todo: list[Range] = []
        hw_msi = sw_msi = 0
        for r in regions:
            if r.kind == "direct-relaxable":
                continue
            if count_msi and r.kind == "msi":
                hw_msi += 1
            if count_msi and r.kind == "sw-msi":
                sw_msi += 1
            self.check_reserve([(r.start, r.last)], f"reserved region ({r.kind})")
            todo.append((r.start, r.last))
        if (sw_msi and hw_msi) or sw_msi > 1:
            raise IommufdError("EINVAL", "the device reports an impossible mix of MSI regions")
        return todo

    # ------------------------------------------------------------ domains
    def check_add_domain(self, dom: DomainInfo) -> None:
        """iopt_table_add_domain()'s checks for a domain about to join."""
        new_align = max(lowest_bit(dom.pgsize_bitmap), self.iova_alignment)
        if new_align > self.page_size:
            raise IommufdError("EINVAL", f"domain's smallest page {new_align:#x} > PAGE_SIZE")
        if new_align != self.iova_alignment:
            self.check_alignment(new_align)
        self.check_reserve(dom.aperture_resv(), "aperture reservation")

    def check_alignment(self, align: int) -> None:
        """iopt_check_iova_alignment(): every area conforms to a larger alignment."""
        mask = align - 1
        for a in self.areas:
            if a.iova & mask or a.length & mask or (a.phys % self.page_size) & mask:
                raise IommufdError(
                    "EADDRINUSE", f"area at {a.iova:#x} is not aligned to {align:#x}"
                )

    def add_domain(self, dom: DomainInfo) -> None:
        """iopt_fill_domain() into a domain the hardware just allocated; pins if first.

        On failure nothing is pinned or mapped (the caller frees the domain).
        """
        first = not self.domains
        areas = list(self.areas)
        if first:
            self.pins.pin(areas)
        try:
            if areas:
                with hw_errors():
                    self.mapper.map(dom.id, entries(areas))
        except IommufdError:
            if first:
                self.pins.unpin(areas)
            raise
        self.domains.append(dom)
        self._calculate_iova_alignment()
        self.reserve(dom.aperture_resv(), ("hwpt", dom.id))

    def set_apertures(self, dom_id: int, apertures: Sequence[Range]) -> None:
        """A live domain's apertures changed (a window added or removed): follow its
        reservation.  EADDRINUSE, changing nothing, if the new reserved IOVA
        meets an area or an allowed range."""
        i = next(i for i, d in enumerate(self.domains) if d.id == dom_id)
        new = DomainInfo(dom_id, self.domains[i].pgsize_bitmap, 64, tuple(apertures))
        self.check_reserve(new.aperture_resv(), "aperture")
        self.domains[i] = new
        self.remove_reserved(("hwpt", dom_id))
        self.reserve(new.aperture_resv(), ("hwpt", dom_id))

    def add_restored_domain(self, dom: DomainInfo) -> None:
        """A domain the hardware already holds filled (rebuild); no pins, no checks."""
        self.domains.append(dom)
        self._calculate_iova_alignment()

    def remove_domain(self, dom_id: int) -> None:
        """iopt_table_remove_domain() after the hardware freed the domain."""
        self.domains = [d for d in self.domains if d.id != dom_id]
        self.mappers.pop(dom_id, None)
        self._calculate_iova_alignment()
        if not self.domains:
            self.pins.unpin(self.areas)
        self.remove_reserved(("hwpt", dom_id))

    def set_large_pages(self, enable: bool) -> None:
        """iopt_enable_large_pages() / iopt_disable_large_pages()."""
        if enable:
            self.disable_large_pages = False
        elif not self.disable_large_pages:
            if self.domains and len(self.areas):
                raise IommufdError("EINVAL", "cannot disable huge pages with mapped domains")
            if self.iova_alignment < self.page_size:
                self.check_alignment(self.page_size)
            self.disable_large_pages = True
        self._calculate_iova_alignment()
