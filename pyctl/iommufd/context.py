"""The iommufd context: what a VMM gets by opening /dev/iommu.

Objects by id, the ioctls as methods (names after the kernel's
``IOMMU_*`` commands), the kernel's checks in the kernel's order and with
its errno names.  The model is the source of truth and programs a
:class:`~pyctl.iommufd.backend.HardwareBackend`.  Every call is all or
nothing: a raised :class:`~pyctl.iommufd.errors.IommufdError` leaves the
model and the backend as they were (where the kernel itself is not atomic,
e.g. an UNMAP that meets a partially covered area after removing others,
the model validates first and is).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from .allocator import HoleSet, alloc_alignment
from .areas import Area, AreaTree
from .backend import (
    DeviceHwInfo,
    HardwareBackend,
    HwDevice,
    HwDomain,
    HwState,
    MapEntry,
    Window,
    WindowBackend,
    WindowCaps,
)
from .errors import BackendError, IommufdError
from .memory_backend import _merged
from .objects import Device, HwptNested, HwptPaging, Ioas, Object, Reserved
from .pinning import ACCOUNT_MM, ACCOUNT_USER, PinAccount, pfn_range
from .ranges import Range, complement, normalize, overlaps
from .uapi import (
    HWPT_FLAGS_KNOWN,
    HWPT_PAGING_FLAGS_SUPPORTED,
    MAP_FLAGS_VALID,
    NEST_PARENT,
    PAGE_SIZE,
    U64_MAX,
    ULONG_MAX,
    HwptDataType,
    HwptInvalidateDataType,
    IoasMapFlags,
    OptionId,
    OptionOp,
)

#: x86 interrupt (MSI) window every x86 device reserves (IOMMU_RESV_MSI)
X86_MSI_WINDOW: Range = (0xFEE00000, 0xFEEFFFFF)
#: ioctls report IDs as u32; the xarray hands out the lowest free one from 1
_MAX_ID = (1 << 31) - 1

T = TypeVar("T")
_SPACES = itertools.count()


@dataclass(frozen=True, slots=True)
class IommulabHwptData:
    """Driver data of IOMMU_HWPT_DATA_IOMMULAB: the guest's stage-1 table."""

    s1_root: int
    ias: int = 48


@dataclass(frozen=True, slots=True)
class IommulabInvalidateEntry:
    """One entry of IOMMU_HWPT_INVALIDATE_DATA_IOMMULAB."""

    iova: int = 0
    size: int = 0
    flags: int = 0


#: invalidate the whole stage-1 of the nested HWPT (iova/size must be 0)
IOMMULAB_INV_ALL = 1 << 0


@dataclass(frozen=True, slots=True)
class IovaRanges:
    ranges: list[Range]
    alignment: int


@dataclass(frozen=True, slots=True)
class WindowChange:
    """What the model did for one guest-initiated window event."""

    device: str
    dev_id: int
    kind: str
    window: Window
    #: areas (iova, length) the model had to unmap because their window vanished
    unmapped: list[tuple[int, int]]


def _u64(name: str, v: object) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise IommufdError("EINVAL", f"{name} must be an integer, not {type(v).__name__}")
    if not 0 <= v <= U64_MAX:
        raise IommufdError("EINVAL", f"{name} {v} does not fit a __u64")
    return v


def _u32(name: str, v: object) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise IommufdError("EINVAL", f"{name} must be an integer, not {type(v).__name__}")
    if not 0 <= v < (1 << 32):
        raise IommufdError("EINVAL", f"{name} {v} does not fit a __u32")
    return v


class IommufdContext:
    """One open /dev/iommu: IOAS, HWPT_PAGING, HWPT_NESTED and DEVICE objects by id."""

    def __init__(
        self,
        backend: HardwareBackend,
        *,
        limit_pages: int | None = None,
        user_account: PinAccount | None = None,
        cap_sys_resource: bool = True,
    ) -> None:
        self.backend = backend
        self.user_account = user_account or PinAccount(limit_pages, "user")
        self.mm_account = PinAccount(
            limit_pages if limit_pages is not None else self.user_account.limit_pages, "mm"
        )
        self.account_mode = ACCOUNT_USER
        self.cap_sys_resource = cap_sys_resource
        self._space = next(_SPACES)
        self._objects: dict[int, Object] = {}
        self._by_name: dict[str, int] = {}

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

        ctx = cls(backend, limit_pages=limit_pages, user_account=user_account)
        rebuild(ctx, backend, shared, blocked, nest_parents)
        return ctx

    # ---------------------------------------------------------------- helpers
    @property
    def account(self) -> PinAccount:
        return self.mm_account if self.account_mode == ACCOUNT_MM else self.user_account

    def _new_id(self) -> int:
        i = 1
        while i in self._objects:
            i += 1
        if i > _MAX_ID:
            raise IommufdError("ENOSPC", "no free object id")
        return i

    def _get(self, obj_id: object, cls: type[T], what: str) -> T:
        oid = _u32(f"{what} id", obj_id)
        obj = self._objects.get(oid)
        if obj is None:
            raise IommufdError("ENOENT", f"no object with id {oid}")
        if not isinstance(obj, cls):
            raise IommufdError("ENOENT", f"object {oid} is a {obj.type.value}, not a {what}")
        return obj

    def _ioas(self, ioas_id: object) -> Ioas:
        return self._get(ioas_id, Ioas, "IOAS")

    def _dev(self, dev_id: object) -> Device:
        return self._get(dev_id, Device, "DEVICE")

    @staticmethod
    @contextmanager
    def _hwerr() -> Iterator[None]:
        """A backend refusal becomes EIO (the backend changed nothing)."""
        try:
            yield
        except BackendError as e:
            raise IommufdError("EIO", f"hardware refused: {e}") from e

    def objects(self) -> dict[int, Object]:
        return dict(self._objects)

    def areas(self, ioas_id: int) -> list[Area]:
        return list(self._ioas(ioas_id).areas)

    def _domains(self, ioas: Ioas) -> list[HwptPaging]:
        return [self._objects[h] for h in ioas.hwpts]  # type: ignore[misc]

    def _alignment(self, ioas: Ioas) -> int:
        # every domain of this hardware has 4 KiB as its smallest page
        return PAGE_SIZE if (ioas.hwpts or not ioas.huge_pages) else 1

    @staticmethod
    def _entries(areas: Iterable[Area]) -> list[MapEntry]:
        return [MapEntry(a.iova, a.length, a.phys, a.read, a.write) for a in areas]

    def _pfns(self, areas: Iterable[Area]) -> list[tuple[int, int]]:
        # guest-physical pages of different contexts (VMs) are different memory:
        # each context's frames live in their own slice of the account
        base = self._space << 52
        return [(f + base, last + base) for f, last in (pfn_range(a.phys, a.length) for a in areas)]

    def _hw_map_all(self, domains: Sequence[int], entries: list[MapEntry]) -> None:
        """Map ``entries`` into every domain; undo the ones done if one fails."""
        done: list[int] = []
        try:
            for d in domains:
                with self._hwerr():
                    self.backend.map(d, entries)
                done.append(d)
        except IommufdError:
            ranges = [(e.iova, e.size) for e in entries]
            for d in done:
                self.backend.unmap(d, ranges)
            raise

    def _hw_unmap_all(self, domains: Sequence[int], areas: list[Area]) -> None:
        # areas that touch are unmapped as one range (the device accepts holes
        # and the range holds nothing but these areas)
        ranges: list[tuple[int, int]] = []
        for a in areas:
            if ranges and ranges[-1][0] + ranges[-1][1] == a.iova:
                ranges[-1] = (ranges[-1][0], ranges[-1][1] + a.length)
            else:
                ranges.append((a.iova, a.length))
        done: list[int] = []
        try:
            for d in domains:
                with self._hwerr():
                    self.backend.unmap(d, ranges)
                done.append(d)
        except IommufdError:
            entries = self._entries(areas)
            for d in done:
                self.backend.map(d, entries)
            raise

    # ---------------------------------------------------------------- objects
    def ioas_alloc(self, flags: int = 0) -> int:
        """IOMMU_IOAS_ALLOC."""
        if _u32("flags", flags):
            raise IommufdError("EOPNOTSUPP", f"IOAS_ALLOC flags {flags:#x} not supported")
        oid = self._new_id()
        self._objects[oid] = Ioas(oid)
        return oid

    def destroy(self, obj_id: int) -> None:
        """IOMMU_DESTROY: EBUSY while the object is in use."""
        oid = _u32("id", obj_id)
        obj = self._objects.get(oid)
        if obj is None:
            raise IommufdError("ENOENT", f"no object with id {oid}")
        if isinstance(obj, Ioas):
            if obj.hwpts or any(
                isinstance(o, HwptPaging) and o.ioas_id == oid for o in self._objects.values()
            ):
                raise IommufdError("EBUSY", f"IOAS {oid} has HW pagetables")
            # no domain, so nothing is pinned nor mapped in hardware
            del self._objects[oid]
        elif isinstance(obj, HwptPaging):
            if obj.devices or obj.children:
                raise IommufdError(
                    "EBUSY",
                    f"HWPT {oid} is in use: {len(obj.devices)} device(s), "
                    f"{len(obj.children)} nested HWPT(s)",
                )
            self._free_paging(obj)
        elif isinstance(obj, HwptNested):
            if obj.devices:
                raise IommufdError("EBUSY", f"HWPT {oid} has {len(obj.devices)} device(s)")
            with self._hwerr():
                self.backend.domain_free(oid)
            parent = self._objects[obj.parent_id]
            assert isinstance(parent, HwptPaging)
            parent.children.discard(oid)
            del self._objects[oid]
        else:
            raise IommufdError("EBUSY", f"DEVICE {oid} is held by its driver; unbind it")

    # ---------------------------------------------------------------- MAP/UNMAP
    def _check_map_args(self, flags: object, iova: object, length: object) -> tuple[int, int, int]:
        fl = _u32("flags", flags)
        io = _u64("iova", iova)
        ln = _u64("length", length)
        if fl & ~MAP_FLAGS_VALID:
            raise IommufdError("EOPNOTSUPP", f"map flags {fl:#x} has unknown bits")
        if io >= ULONG_MAX or ln >= ULONG_MAX:
            raise IommufdError("EOVERFLOW", "iova or length >= ULONG_MAX")
        if not fl & (IoasMapFlags.IOMMU_IOAS_MAP_WRITEABLE | IoasMapFlags.IOMMU_IOAS_MAP_READABLE):
            raise IommufdError("EINVAL", "map needs READABLE and/or WRITEABLE")
        return fl, io, ln

    def _place(self, ioas: Ioas, flags: int, iova: int, length: int, first_phys: int) -> int:
        """iopt_alloc_area_pages' checks and IOVA choice (nothing changes)."""
        align = self._alignment(ioas)
        if length & (align - 1) or not length:
            raise IommufdError("EINVAL", f"length {length:#x} not a multiple of {align:#x}")
        if not flags & IoasMapFlags.IOMMU_IOAS_MAP_FIXED_IOVA:
            if length >= ULONG_MAX // 2:
                raise IommufdError("EOVERFLOW", f"length {length:#x} too large to allocate")
            want = alloc_alignment(length, first_phys)
            if want < align:
                raise IommufdError(
                    "EINVAL", f"allocation alignment {want:#x} below IOAS alignment {align:#x}"
                )
            found = ioas.holes.find(length, want, first_phys % PAGE_SIZE)
            if found is None:
                raise IommufdError("ENOSPC", f"no free IOVA for {length:#x} bytes")
            return found
        if iova & (align - 1):
            raise IommufdError("EINVAL", f"iova {iova:#x} not aligned to {align:#x}")
        last = iova + length - 1
        if last > U64_MAX:
            raise IommufdError("EOVERFLOW", f"iova {iova:#x} + length {length:#x} overflows")
        for r in ioas.reserved:
            if overlaps((r.start, r.last), (iova, last)):
                raise IommufdError(
                    "EINVAL", f"[{iova:#x}, {last:#x}] hits reserved [{r.start:#x}, {r.last:#x}]"
                )
        hit = ioas.areas.first_overlapping(iova, last)
        if hit is not None:
            raise IommufdError(
                "EEXIST", f"[{iova:#x}, {last:#x}] overlaps the area at {hit.iova:#x}"
            )
        return iova

    def _insert(self, ioas: Ioas, areas: list[Area]) -> None:
        """Pin (if the IOAS has domains), program every domain, then record."""
        align = self._alignment(ioas)
        for a in areas:
            if (a.phys % PAGE_SIZE) & (align - 1):
                raise IommufdError(
                    "EINVAL", f"address {a.phys:#x} offset not aligned to {align:#x}"
                )
        domains = ioas.hwpts
        if domains:
            self.account.pin(self._pfns(areas))
            try:
                self._hw_map_all(domains, self._entries(areas))
            except IommufdError:
                self.account.unpin(self._pfns(areas))
                raise
        for a in areas:
            ioas.areas.add(a)
            ioas.holes.take(a.iova, a.last)

    def ioas_map(self, ioas_id: int, phys: int, length: int, flags: int, iova: int = 0) -> int:
        """IOMMU_IOAS_MAP of guest-physical memory; returns the IOVA used."""
        fl, io, ln = self._check_map_args(flags, iova, length)
        ph = _u64("phys", phys)
        ioas = self._ioas(ioas_id)
        if ln == 0:
            raise IommufdError("EINVAL", "length is 0")
        if ph + ln - 1 > U64_MAX:
            raise IommufdError("EOVERFLOW", f"phys {ph:#x} + length {ln:#x} overflows")
        at = self._place(ioas, fl, io, ln, ph)
        write = bool(fl & IoasMapFlags.IOMMU_IOAS_MAP_WRITEABLE)
        read = bool(fl & IoasMapFlags.IOMMU_IOAS_MAP_READABLE)
        self._insert(ioas, [Area(at, ln, ph, read, write, write)])
        return at

    def ioas_unmap(self, ioas_id: int, iova: int, length: int) -> int:
        """IOMMU_IOAS_UNMAP; returns the number of bytes unmapped."""
        io = _u64("iova", iova)
        ln = _u64("length", length)
        ioas = self._ioas(ioas_id)
        if io == 0 and ln == U64_MAX:
            victims = list(ioas.areas)
        else:
            if io >= ULONG_MAX or ln >= ULONG_MAX:
                raise IommufdError("EOVERFLOW", "iova or length >= ULONG_MAX")
            if not ln:
                raise IommufdError("EINVAL", "length is 0")
            last = io + ln - 1
            if last > U64_MAX:
                raise IommufdError("EOVERFLOW", f"iova {io:#x} + length {ln:#x} overflows")
            victims = list(ioas.areas.overlapping(io, last))
            if not victims:
                raise IommufdError("ENOENT", f"nothing mapped in [{io:#x}, {last:#x}]")
            for a in victims:
                if a.iova < io or a.last > last:
                    raise IommufdError(
                        "ENOENT",
                        f"[{io:#x}, {last:#x}] would split the area [{a.iova:#x}, {a.last:#x}]",
                    )
        if not victims:
            return 0
        self._remove_areas(ioas, victims)
        return sum(a.length for a in victims)

    def _remove_areas(self, ioas: Ioas, victims: list[Area]) -> None:
        if ioas.hwpts:
            self._hw_unmap_all(ioas.hwpts, victims)
            self.account.unpin(self._pfns(victims))
        if len(victims) == len(ioas.areas):
            ioas.areas = AreaTree()
            ioas.holes = HoleSet(ioas.holes.base)
            return
        for a in victims:
            ioas.areas.remove(a.iova)
            ioas.holes.give(a.iova, a.last)

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
        fl = _u32("flags", flags)
        s_io = _u64("src_iova", src_iova)
        d_io = _u64("dst_iova", dst_iova)
        ln = _u64("length", length)
        if fl & ~MAP_FLAGS_VALID:
            raise IommufdError("EOPNOTSUPP", f"copy flags {fl:#x} has unknown bits")
        if ln >= ULONG_MAX or s_io >= ULONG_MAX or d_io >= ULONG_MAX:
            raise IommufdError("EOVERFLOW", "iova or length >= ULONG_MAX")
        if not fl & (IoasMapFlags.IOMMU_IOAS_MAP_WRITEABLE | IoasMapFlags.IOMMU_IOAS_MAP_READABLE):
            raise IommufdError("EINVAL", "copy needs READABLE and/or WRITEABLE")
        src = self._ioas(src_ioas_id)
        if not ln:
            raise IommufdError("EINVAL", "length is 0")
        s_last = s_io + ln - 1
        if s_last > U64_MAX:
            raise IommufdError("EOVERFLOW", "src_iova + length overflows")
        # iopt_get_pages: the range must be covered by contiguous areas
        pieces: list[tuple[int, int, bool]] = []  # (phys, length, pages_writable)
        cur = s_io
        for a in src.areas.overlapping(s_io, s_last):
            if a.iova > cur:
                break
            end = min(a.last, s_last)
            pieces.append((a.phys + (cur - a.iova), end - cur + 1, a.pages_writable))
            cur = end + 1
            if cur > s_last:
                break
        if cur <= s_last:
            raise IommufdError("ENOENT", f"[{s_io:#x}, {s_last:#x}] is not fully mapped")
        dst = self._ioas(dst_ioas_id)
        write = bool(fl & IoasMapFlags.IOMMU_IOAS_MAP_WRITEABLE)
        read = bool(fl & IoasMapFlags.IOMMU_IOAS_MAP_READABLE)
        if write and not all(w for _p, _l, w in pieces):
            raise IommufdError("EPERM", "WRITEABLE copy of read-only pages")
        at = self._place(dst, fl, d_io, ln, pieces[0][0])
        areas: list[Area] = []
        pos = at
        for ph, plen, w in pieces:
            areas.append(Area(pos, plen, ph, read, write, w))
            pos += plen
        self._insert(dst, areas)
        return at

    # ---------------------------------------------------------------- ranges
    def ioas_iova_ranges(self, ioas_id: int, num_iovas: int | None = None) -> IovaRanges:
        """IOMMU_IOAS_IOVA_RANGES; EMSGSIZE (with ``num_iovas``) if the buffer is short."""
        ioas = self._ioas(ioas_id)
        ranges = ioas.iova_ranges()
        if num_iovas is not None and _u32("num_iovas", num_iovas) < len(ranges):
            raise IommufdError(
                "EMSGSIZE",
                f"{len(ranges)} ranges do not fit {num_iovas}",
                num_iovas=len(ranges),
                out_iova_alignment=self._alignment(ioas),
            )
        return IovaRanges(ranges, self._alignment(ioas))

    def ioas_allow_iovas(self, ioas_id: int, ranges: Sequence[Range]) -> None:
        """IOMMU_IOAS_ALLOW_IOVAS: replace the allowed list (empty = everything)."""
        ioas = self._ioas(ioas_id)
        if not isinstance(ranges, Sequence):
            raise IommufdError("EINVAL", "ranges must be a sequence of (start, last)")
        new: list[Range] = []
        for i, r in enumerate(ranges):
            if not isinstance(r, tuple | list) or len(r) != 2:
                raise IommufdError("EINVAL", f"range {i} is not a (start, last) pair")
            s, e = _u64(f"range {i} start", r[0]), _u64(f"range {i} last", r[1])
            if s >= e:
                raise IommufdError("EINVAL", f"range {i}: start {s:#x} >= last {e:#x}")
            if any(overlaps((s, e), o) for o in new):
                raise IommufdError("EINVAL", f"range {i} overlaps another allowed range")
            new.append((s, e))
        for s, e in new:
            for res in ioas.reserved:
                if overlaps((s, e), (res.start, res.last)):
                    raise IommufdError(
                        "EADDRINUSE",
                        f"allowed [{s:#x}, {e:#x}] overlaps reserved "
                        f"[{res.start:#x}, {res.last:#x}]",
                    )
        ioas.allowed = sorted(new)
        ioas.rebuild_holes()

    # ---------------------------------------------------------------- OPTION
    def option(self, option_id: int, op: int, object_id: int = 0, val64: int = 0) -> int:
        """IOMMU_OPTION; returns val64 (the value for GET)."""
        oid = _u32("option_id", option_id)
        opv = _u32("op", op)
        obj = _u32("object_id", object_id)
        val = _u64("val64", val64)
        if oid == OptionId.IOMMU_OPTION_RLIMIT_MODE:
            if obj:
                raise IommufdError("EOPNOTSUPP", "RLIMIT_MODE takes object_id 0")
            if opv == OptionOp.IOMMU_OPTION_OP_GET:
                return int(self.account_mode == ACCOUNT_MM)
            if opv == OptionOp.IOMMU_OPTION_OP_SET:
                if not self.cap_sys_resource:
                    raise IommufdError("EPERM", "RLIMIT_MODE needs CAP_SYS_RESOURCE")
                if self._objects:
                    raise IommufdError("EBUSY", "RLIMIT_MODE can only change with no objects")
                if val not in (0, 1):
                    raise IommufdError("EINVAL", f"RLIMIT_MODE value {val} is not 0 or 1")
                self.account_mode = ACCOUNT_MM if val else ACCOUNT_USER
                return val
            raise IommufdError("EOPNOTSUPP", f"unknown option op {opv}")
        ioas = self._ioas(obj)
        if oid != OptionId.IOMMU_OPTION_HUGE_PAGES:
            raise IommufdError("EOPNOTSUPP", f"unknown option {oid}")
        if opv == OptionOp.IOMMU_OPTION_OP_GET:
            return int(ioas.huge_pages)
        if opv == OptionOp.IOMMU_OPTION_OP_SET:
            if val == 0:
                if not ioas.huge_pages:
                    return 0
                if ioas.hwpts and len(ioas.areas):
                    raise IommufdError("EINVAL", "cannot disable huge pages with mapped domains")
                if any(
                    a.iova % PAGE_SIZE or a.length % PAGE_SIZE or a.phys % PAGE_SIZE
                    for a in ioas.areas
                ):
                    raise IommufdError("EADDRINUSE", "areas not aligned to PAGE_SIZE")
                ioas.huge_pages = False
                return 0
            if val == 1:
                ioas.huge_pages = True
                return 1
            raise IommufdError("EINVAL", f"HUGE_PAGES value {val} is not 0 or 1")
        raise IommufdError("EOPNOTSUPP", f"unknown option op {opv}")

    # ---------------------------------------------------------------- devices
    def bind(self, device: str) -> int:
        """Bind a device behind the IOMMU (VFIO_DEVICE_BIND_IOMMUFD); returns dev_id.

        ``device`` is the QEMU device by qdev id or QOM path.  It starts blocked.
        """
        if not isinstance(device, str) or not device:
            raise IommufdError("EINVAL", "device must be a non-empty string")
        try:
            info = self.backend.device_info(device)
        except BackendError as e:
            raise IommufdError("ENOENT", f"device {device!r}: {e}") from e
        if info.device in self._by_name:
            raise IommufdError("EBUSY", f"device {device!r} is already bound")
        oid = self._new_id()
        with self._hwerr():
            self.backend.attach(info.device, "blocked")
        self._objects[oid] = Device(oid, info.device, info)
        self._by_name[info.device] = oid
        return oid

    def unbind(self, dev_id: int) -> None:
        dev = self._dev(dev_id)
        if dev.hwpt_id is not None:
            self.detach(dev.id)
        del self._by_name[dev.name]
        del self._objects[dev.id]

    def get_hw_info(self, dev_id: int) -> DeviceHwInfo:
        """IOMMU_GET_HW_INFO."""
        return self._dev(dev_id).info

    def _device_resv(self, dev: Device) -> list[Range]:
        if dev.info.platform == "x86":
            return [X86_MSI_WINDOW]
        wins = self._windows_of(dev)
        return complement([(w.start, w.last) for w in wins])

    def _windows_of(self, dev: Device) -> list[Window]:
        wb = self.backend
        if not isinstance(wb, WindowBackend):
            return []
        with self._hwerr():
            return wb.windows(dev.name)

    @staticmethod
    def _aperture_resv(hwpt: HwptPaging) -> list[Range]:
        if hwpt.ias >= 64:
            return []
        return [(1 << hwpt.ias, U64_MAX)]

    def _check_reserve(self, ioas: Ioas, ranges: list[Range], what: str) -> None:
        """iopt_reserve_iova: EADDRINUSE if it would hit an area or an allowed range."""
        for s, e in ranges:
            a = ioas.areas.first_overlapping(s, e)
            if a is not None:
                raise IommufdError(
                    "EADDRINUSE",
                    f"{what} [{s:#x}, {e:#x}] overlaps the area at {a.iova:#x}",
                )
            for al in ioas.allowed:
                if overlaps((s, e), al):
                    raise IommufdError(
                        "EADDRINUSE",
                        f"{what} [{s:#x}, {e:#x}] overlaps allowed [{al[0]:#x}, {al[1]:#x}]",
                    )

    def _paging_of(self, hwpt_id: int) -> HwptPaging:
        h = self._objects[hwpt_id]
        if isinstance(h, HwptNested):
            h = self._objects[h.parent_id]
        assert isinstance(h, HwptPaging)
        return h

    @staticmethod
    def _compatible(hwpt: HwptPaging, info: DeviceHwInfo) -> bool:
        return hwpt.dev_platform == info.platform and hwpt.ias == info.ias

    def _add_domain_checks(self, ioas: Ioas, hwpt: HwptPaging) -> None:
        """iopt_table_add_domain's checks for a domain about to join ``ioas``."""
        if not ioas.hwpts:
            for a in ioas.areas:
                if a.iova % PAGE_SIZE or a.length % PAGE_SIZE or a.phys % PAGE_SIZE:
                    raise IommufdError(
                        "EADDRINUSE", f"area at {a.iova:#x} is not aligned to PAGE_SIZE"
                    )
        self._check_reserve(ioas, self._aperture_resv(hwpt), "aperture reservation")

    def _add_domain(self, ioas: Ioas, hwpt: HwptPaging) -> None:
        """Allocate the domain in hardware, fill it, pin if first; all or nothing."""
        self._add_domain_checks(ioas, hwpt)
        first = not ioas.hwpts
        areas = list(ioas.areas)
        if first:
            self.account.pin(self._pfns(areas))
        try:
            with self._hwerr():
                self.backend.domain_alloc(hwpt.id, "paging", ias=hwpt.ias)
            try:
                if areas:
                    with self._hwerr():
                        self.backend.map(hwpt.id, self._entries(areas))
            except IommufdError:
                self.backend.domain_free(hwpt.id)
                raise
        except IommufdError:
            if first:
                self.account.unpin(self._pfns(areas))
            raise
        ioas.hwpts.append(hwpt.id)
        for s, e in self._aperture_resv(hwpt):
            ioas.reserved.append(Reserved(s, e, ("hwpt", hwpt.id)))
        ioas.rebuild_holes()
        self._objects[hwpt.id] = hwpt

    def _free_paging(self, hwpt: HwptPaging) -> None:
        ioas = self._ioas(hwpt.ioas_id)
        with self._hwerr():
            self.backend.domain_free(hwpt.id)
        ioas.hwpts.remove(hwpt.id)
        if not ioas.hwpts:
            self.account.unpin(self._pfns(ioas.areas))
        ioas.reserved = [r for r in ioas.reserved if r.owner != ("hwpt", hwpt.id)]
        ioas.rebuild_holes()
        del self._objects[hwpt.id]

    def hwpt_alloc(
        self,
        dev_id: int,
        pt_id: int,
        flags: int = 0,
        data_type: int = HwptDataType.IOMMU_HWPT_DATA_NONE,
        data: IommulabHwptData | None = None,
    ) -> int:
        """IOMMU_HWPT_ALLOC: a paging HWPT on an IOAS, or a nested one on a NEST_PARENT."""
        fl = _u32("flags", flags)
        dt = _u32("data_type", data_type)
        if (dt == HwptDataType.IOMMU_HWPT_DATA_NONE and data is not None) or (
            dt != HwptDataType.IOMMU_HWPT_DATA_NONE and data is None
        ):
            raise IommufdError("EINVAL", "data_type and data disagree")
        dev = self._dev(dev_id)
        pt_oid = _u32("pt_id", pt_id)
        pt = self._objects.get(pt_oid)
        if pt is None:
            raise IommufdError("ENOENT", f"no object with id {pt_oid}")
        if isinstance(pt, Ioas):
            if fl & ~HWPT_FLAGS_KNOWN or fl & ~HWPT_PAGING_FLAGS_SUPPORTED:
                raise IommufdError("EOPNOTSUPP", f"HWPT_ALLOC flags {fl:#x} not supported")
            if data is not None:
                raise IommufdError("EOPNOTSUPP", "paging HWPT takes no driver data")
            hwpt = HwptPaging(
                self._new_id(),
                pt.id,
                dev.info.platform,
                dev.info.ias,
                nest_parent=bool(fl & NEST_PARENT),
                auto=False,
            )
            self._add_domain(pt, hwpt)
            return hwpt.id
        if isinstance(pt, HwptPaging):
            if fl or data is None or not dev.info.nesting:
                raise IommufdError("EOPNOTSUPP", "nested HWPT: flags must be 0, data required")
            if pt.auto or not pt.nest_parent:
                raise IommufdError("EINVAL", f"HWPT {pt.id} is not a NEST_PARENT")
            if not self._compatible(pt, dev.info):
                raise IommufdError("EINVAL", f"HWPT {pt.id} belongs to another kind of IOMMU")
            if dt != HwptDataType.IOMMU_HWPT_DATA_IOMMULAB:
                raise IommufdError("EOPNOTSUPP", f"data_type {dt} not supported by this IOMMU")
            if not isinstance(data, IommulabHwptData):
                raise IommufdError("EINVAL", "data must be IommulabHwptData")
            root = _u64("s1_root", data.s1_root)
            if root % PAGE_SIZE:
                raise IommufdError("EINVAL", f"stage-1 root {root:#x} is not 4 KiB aligned")
            if data.ias != 48:
                raise IommufdError("EINVAL", f"stage-1 address width {data.ias} is not 48")
            nid = self._new_id()
            with self._hwerr():
                self.backend.domain_alloc(nid, "nested", parent=pt.id, s1_root=root)
            self._objects[nid] = HwptNested(nid, pt.id, root, 48)
            pt.children.add(nid)
            return nid
        raise IommufdError("EINVAL", f"object {pt_oid} is a {pt.type.value}")

    def hwpt_invalidate(
        self,
        hwpt_id: int,
        data_type: int,
        entries: Sequence[IommulabInvalidateEntry],
    ) -> int:
        """IOMMU_HWPT_INVALIDATE on a nested HWPT; returns the entries handled.

        All entries are checked before any reaches the hardware; a bad one
        raises with ``entry_num`` = its index (entries before it not done).
        """
        oid = _u32("hwpt_id", hwpt_id)
        obj = self._objects.get(oid)
        if obj is None:
            raise IommufdError("ENOENT", f"no object with id {oid}")
        if not isinstance(obj, HwptNested):
            raise IommufdError("EINVAL", f"object {oid} is not a nested HWPT")
        if (
            _u32("data_type", data_type)
            != HwptInvalidateDataType.IOMMU_HWPT_INVALIDATE_DATA_IOMMULAB
        ):
            raise IommufdError("EINVAL", f"data_type {data_type} not supported", entry_num=0)
        todo: list[tuple[int | None, int | None]] = []
        for i, e in enumerate(entries):
            if not isinstance(e, IommulabInvalidateEntry):
                raise IommufdError(
                    "EINVAL", f"entry {i} is not an IommulabInvalidateEntry", entry_num=i
                )
            fl = _u32(f"entry {i} flags", e.flags)
            io, sz = _u64(f"entry {i} iova", e.iova), _u64(f"entry {i} size", e.size)
            if fl & ~IOMMULAB_INV_ALL:
                raise IommufdError("EOPNOTSUPP", f"entry {i} flags {fl:#x}", entry_num=i)
            if fl & IOMMULAB_INV_ALL:
                if io or sz:
                    raise IommufdError("EINVAL", f"entry {i}: ALL with a range", entry_num=i)
                todo.append((None, None))
                continue
            if not sz or io % PAGE_SIZE or sz % PAGE_SIZE or io + sz > (1 << 48):
                raise IommufdError("EINVAL", f"entry {i}: bad range {io:#x}+{sz:#x}", entry_num=i)
            todo.append((io, sz))
        for io_, sz_ in todo:
            with self._hwerr():
                self.backend.invalidate(oid, io_, sz_)
        return len(todo)

    def attach(self, dev_id: int, pt_id: int) -> int:
        """Attach (or replace) a device to an IOAS or HWPT; returns the HWPT id used.

        With an IOAS, a compatible automatic HWPT of that IOAS is reused or
        one is created.  Attaching an attached device replaces atomically.
        """
        dev = self._dev(dev_id)
        pt_oid = _u32("pt_id", pt_id)
        pt = self._objects.get(pt_oid)
        if pt is None:
            raise IommufdError("ENOENT", f"no object with id {pt_oid}")
        new_auto: HwptPaging | None = None
        if isinstance(pt, Ioas):
            ioas = pt
            target: HwptPaging | HwptNested | None = None
            for h in self._domains(ioas):
                if h.auto and self._compatible(h, dev.info):
                    target = h
                    break
            if target is None:
                new_auto = HwptPaging(
                    self._new_id(),
                    ioas.id,
                    dev.info.platform,
                    dev.info.ias,
                    nest_parent=False,
                    auto=True,
                )
        elif isinstance(pt, HwptPaging):
            if not self._compatible(pt, dev.info):
                raise IommufdError("EINVAL", f"HWPT {pt.id} is incompatible with the device")
            target = pt
            ioas = self._ioas(pt.ioas_id)
        elif isinstance(pt, HwptNested):
            parent = self._paging_of(pt.id)
            if not self._compatible(parent, dev.info) or not dev.info.nesting:
                raise IommufdError("EINVAL", f"HWPT {pt.id} is incompatible with the device")
            target = pt
            ioas = self._ioas(parent.ioas_id)
        else:
            raise IommufdError("EINVAL", f"object {pt_oid} is a {pt.type.value}")
        if target is not None and dev.hwpt_id == target.id:
            return target.id

        # reserved regions of the device in the target IOAS (unless already there)
        old_ioas = self._ioas(self._paging_of(dev.hwpt_id).ioas_id) if dev.hwpt_id else None
        owner = ("device", dev.id)
        resv = self._device_resv(dev)
        if old_ioas is not ioas:
            self._check_reserve(ioas, resv, "reserved region")
        created = False
        if new_auto is not None:
            self._add_domain(ioas, new_auto)
            target = new_auto
            created = True
        assert target is not None
        try:
            with self._hwerr():
                self.backend.attach(dev.name, "domain", target.id)
        except IommufdError:
            if created and new_auto is not None:
                self._free_paging(new_auto)
            raise
        old = dev.hwpt_id
        dev.hwpt_id = target.id
        target.devices.add(dev.id)
        if old is not None:
            self._release(dev, old, old_ioas, keep_resv=old_ioas is ioas)
        if old_ioas is not ioas:
            for s, e in resv:
                ioas.reserved.append(Reserved(s, e, owner))
            ioas.rebuild_holes()
        return target.id

    replace = attach

    def _release(self, dev: Device, old_hwpt: int, old_ioas: Ioas | None, keep_resv: bool) -> None:
        h = self._objects[old_hwpt]
        assert isinstance(h, HwptPaging | HwptNested)
        h.devices.discard(dev.id)
        if old_ioas is not None and not keep_resv:
            old_ioas.reserved = [r for r in old_ioas.reserved if r.owner != ("device", dev.id)]
            old_ioas.rebuild_holes()
        if isinstance(h, HwptPaging) and h.auto and not h.devices:
            self._free_paging(h)

    def detach(self, dev_id: int) -> None:
        """Detach: the device is blocked again; an unused automatic HWPT goes away."""
        dev = self._dev(dev_id)
        if dev.hwpt_id is None:
            raise IommufdError("EINVAL", f"device {dev.id} is not attached")
        with self._hwerr():
            self.backend.attach(dev.name, "blocked")
        old = dev.hwpt_id
        old_ioas = self._ioas(self._paging_of(old).ioas_id)
        dev.hwpt_id = None
        self._release(dev, old, old_ioas, keep_resv=False)

    # ---------------------------------------------------------------- sPAPR windows
    def _spapr(self, dev_id: int) -> tuple[Device, WindowBackend]:
        dev = self._dev(dev_id)
        wb = self.backend
        if dev.info.platform != "spapr" or not isinstance(wb, WindowBackend):
            raise IommufdError("EOPNOTSUPP", f"device {dev.name!r} has no sPAPR DMA windows")
        return dev, wb

    def window_caps(self, dev_id: int) -> WindowCaps:
        dev, wb = self._spapr(dev_id)
        with self._hwerr():
            return wb.window_caps(dev.name)

    def windows(self, dev_id: int) -> list[Window]:
        dev, wb = self._spapr(dev_id)
        with self._hwerr():
            return wb.windows(dev.name)

    def window_create(
        self, dev_id: int, page_shift: int, size: int, offset: int | None = None
    ) -> Window:
        """Create a DMA window (the 64-bit DDW unless ``offset`` says otherwise)."""
        dev, wb = self._spapr(dev_id)
        with self._hwerr():
            caps = wb.window_caps(dev.name)
        ps = _u32("page_shift", page_shift)
        sz = _u64("size", size)
        off = caps.ddw_offset if offset is None else _u64("offset", offset)
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
        with self._hwerr():
            wins = wb.windows(dev.name)
        if len(wins) >= caps.windows_supported:
            raise IommufdError("ENOSPC", f"all {caps.windows_supported} windows in use")
        for w in wins:
            if overlaps((off, off + sz - 1), (w.start, w.last)):
                raise IommufdError("EEXIST", f"overlaps window {w.index}")
        with self._hwerr():
            win = wb.create_window(dev.name, ps, sz, off)
        self._refresh_resv(dev)
        return win

    def window_remove(self, dev_id: int, index: int) -> None:
        dev, wb = self._spapr(dev_id)
        idx = _u32("index", index)
        with self._hwerr():
            wins = {w.index: w for w in wb.windows(dev.name)}
        w = wins.get(idx)
        if w is None:
            raise IommufdError("ENOENT", f"no window {idx}")
        if dev.hwpt_id is not None:
            ioas = self._ioas(self._paging_of(dev.hwpt_id).ioas_id)
            a = ioas.areas.first_overlapping(w.start, w.last)
            if a is not None:
                raise IommufdError("EBUSY", f"window {idx} holds the area at {a.iova:#x}")
            for al in ioas.allowed:
                if overlaps(al, (w.start, w.last)):
                    raise IommufdError("EADDRINUSE", f"window {idx} is inside allowed ranges")
        with self._hwerr():
            wb.remove_window(dev.name, idx)
        self._refresh_resv(dev)

    def _refresh_resv(self, dev: Device) -> None:
        if dev.hwpt_id is None:
            return
        ioas = self._ioas(self._paging_of(dev.hwpt_id).ioas_id)
        owner = ("device", dev.id)
        ioas.reserved = [r for r in ioas.reserved if r.owner != owner]
        ioas.reserved.extend(Reserved(s, e, owner) for s, e in self._device_resv(dev))
        ioas.rebuild_holes()

    def process_window_events(self) -> list[WindowChange]:
        """Apply the guest's window changes (create, remove, reset) reported since last time.

        The device's windows after the event are the truth: areas of the
        attached IOAS that no longer lie inside a window are unmapped (model
        and every domain), and the device's reserved regions follow the windows.
        """
        wb = self.backend
        if not isinstance(wb, WindowBackend):
            return []
        out: list[WindowChange] = []
        for ev in wb.window_events():
            dev_id = self._by_name.get(ev.device)
            if dev_id is None:
                continue
            dev = self._dev(dev_id)
            unmapped: list[tuple[int, int]] = []
            if dev.hwpt_id is not None:
                ioas = self._ioas(self._paging_of(dev.hwpt_id).ioas_id)
                seen: dict[int, Area] = {}
                for s, e in self._device_resv(dev):
                    for a in ioas.areas.overlapping(s, e):
                        seen[a.iova] = a
                victims = [seen[k] for k in sorted(seen)]
                if victims:
                    self._remove_areas(ioas, victims)
                    unmapped = [(a.iova, a.length) for a in victims]
            self._refresh_resv(dev)
            out.append(WindowChange(ev.device, dev_id, ev.kind, ev.window, unmapped))
        return out

    # ---------------------------------------------------------------- checking
    def expected_hw_state(self) -> HwState:
        """What the hardware must hold for this context's domains and devices."""
        doms: list[HwDomain] = []
        for oid in sorted(self._objects):
            o = self._objects[oid]
            if isinstance(o, HwptPaging):
                ioas = self._ioas(o.ioas_id)
                nested = [n for n in o.children if isinstance(self._objects.get(n), HwptNested)]
                doms.append(
                    HwDomain(
                        oid,
                        "paging",
                        o.ias,
                        None,
                        None,
                        len(o.devices),
                        len(nested),
                        tuple(_merged(self._entries(ioas.areas))),
                    )
                )
            elif isinstance(o, HwptNested):
                doms.append(
                    HwDomain(oid, "nested", o.ias, o.parent_id, o.s1_root, len(o.devices), 0)
                )
        devs: list[HwDevice] = []
        for oid in sorted(self._objects):
            o = self._objects[oid]
            if isinstance(o, Device):
                if o.hwpt_id is None:
                    devs.append(HwDevice(o.name, "blocked", None))
                else:
                    devs.append(HwDevice(o.name, "domain", o.hwpt_id))
        return HwState(tuple(doms), tuple(sorted(devs, key=lambda d: d.device)))

    def check_hardware(self) -> list[str]:
        """Differences between the model and the backend's query (empty = in sync)."""
        want = self.expected_hw_state()
        have = self.backend.query()
        problems: list[str] = []
        have_doms = {d.domain: d for d in have.domains}
        want_ids = {d.domain for d in want.domains}
        for d in want.domains:
            h = have_doms.get(d.domain)
            if h is None:
                problems.append(f"domain {d.domain} missing in hardware")
            elif h != d:
                problems.append(f"domain {d.domain} differs: model {d}, hardware {h}")
        for i in have_doms:
            if i not in want_ids:
                problems.append(f"hardware domain {i} unknown to the model")
        have_devs = {d.device: d for d in have.devices}
        for dv in want.devices:
            if have_devs.get(dv.device) != dv:
                problems.append(
                    f"device {dv.device}: model {dv}, hardware {have_devs.get(dv.device)}"
                )
        return problems

    def pinned_pages(self) -> int:
        return self.account.pinned_pages

    def iova_alignment(self, ioas_id: int) -> int:
        return self._alignment(self._ioas(ioas_id))

    def reserved(self, ioas_id: int) -> list[Range]:
        return normalize(self._ioas(ioas_id).reserved_ranges())
