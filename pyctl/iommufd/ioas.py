"""The IOAS commands (drivers/iommu/iommufd/ioas.c, and IOMMU_OPTION of main.c).

Each command checks its arguments in the kernel's order, then makes one call
into the IOAS's page table (io_pagetable.py).  The upstream function each
check follows is named beside it.  (``u32``/``u64`` type checks come first:
a C caller cannot pass a string, a Python caller can.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import IommufdError
from .io_pagetable import Piece
from .objects import Ioas, Object
from .objtable import Ictx
from .pages import new_pages
from .pinning import ACCOUNT_MM, ACCOUNT_USER
from .ranges import Range, overlaps
from .uapi import (
    MAP_FLAGS_VALID,
    PAGE_SIZE,
    U64_MAX,
    ULONG_MAX,
    IoasMapFlags,
    OptionId,
    OptionOp,
    u32,
    u64,
)

# plain ints: IntFlag arithmetic costs more than the rest of a small MAP's checks
_W = int(IoasMapFlags.IOMMU_IOAS_MAP_WRITEABLE)
_R = int(IoasMapFlags.IOMMU_IOAS_MAP_READABLE)
_RW = _W | _R
_FIXED = int(IoasMapFlags.IOMMU_IOAS_MAP_FIXED_IOVA)


@dataclass(frozen=True, slots=True)
class IovaRanges:
    ranges: list[Range]
    alignment: int


def ioas_alloc(ictx: Ictx, flags: object) -> int:
    """iommufd_ioas_alloc_ioctl(): EOPNOTSUPP for any flag."""
    if u32("flags", flags):
        raise IommufdError("EOPNOTSUPP", f"IOAS_ALLOC flags {flags:#x} not supported")
    oid = ictx.table.new_id()
    ictx.table.add(Ioas(oid, ictx.new_iopt()))
    return oid


def ioas_destroy(obj: Object) -> None:
    """iommufd_ioas_destroy(): no domain is left (EBUSY before), so nothing is pinned."""


def _map_flags(flags: object, *iovas: tuple[str, object]) -> tuple[int, list[int]]:
    """The flag and range checks IOAS_MAP and IOAS_COPY share, in their order."""
    fl = u32("flags", flags)
    vals = [u64(n, v) for n, v in iovas]
    if fl & ~MAP_FLAGS_VALID:  # iommufd_ioas_map(), iommufd_ioas_copy()
        raise IommufdError("EOPNOTSUPP", f"map flags {fl:#x} has unknown bits")
    if any(v >= ULONG_MAX for v in vals):
        raise IommufdError("EOVERFLOW", "iova or length >= ULONG_MAX")
    if not fl & _RW:
        raise IommufdError("EINVAL", "map needs READABLE and/or WRITEABLE")
    return fl, vals


def ioas_map(
    ictx: Ictx, ioas_id: object, phys: object, length: object, flags: object, iova: object
) -> int:
    """iommufd_ioas_map() -> iopt_map_user_pages(); returns the IOVA used."""
    fl, (io, ln) = _map_flags(flags, ("iova", iova), ("length", length))
    ph = u64("phys", phys)
    ioas = ictx.ioas(ioas_id)
    if ph + ln > ULONG_MAX:  # iopt_alloc_user_pages(): check_add_overflow(uptr, length)
        raise IommufdError("EOVERFLOW", f"phys {ph:#x} + length {ln:#x} overflows")
    if ln == 0 or ln > ULONG_MAX - PAGE_SIZE:  # iopt_alloc_pages()
        raise IommufdError("EINVAL", f"length {ln:#x} is 0 or too large")
    iopt = ioas.iopt
    at = iopt.place(ln, ph, bool(fl & _FIXED), io)  # iopt_alloc_area_pages()
    write = bool(fl & _W)
    read = bool(fl & _R)
    iopt.map_pages(at, [Piece(ph, ln, write, new_pages())], read, write)
    return at


def ioas_unmap(ictx: Ictx, ioas_id: object, iova: object, length: object) -> int:
    """iommufd_ioas_unmap(); returns the bytes unmapped."""
    io = u64("iova", iova)
    ln = u64("length", length)
    ioas = ictx.ioas(ioas_id)
    if io == 0 and ln == U64_MAX:
        return ioas.iopt.unmap_all()  # iopt_unmap_all(): empty is fine
    if io >= ULONG_MAX or ln >= ULONG_MAX:
        raise IommufdError("EOVERFLOW", "iova or length >= ULONG_MAX")
    done = ioas.iopt.unmap_iova(io, ln, ictx.options.atomic_unmap)
    if not done:  # iommufd_ioas_unmap(): nothing in the range
        raise IommufdError("ENOENT", f"nothing mapped in [{io:#x}, +{ln:#x})")
    return done


def ioas_copy(
    ictx: Ictx,
    dst_id: object,
    dst_iova: object,
    src_id: object,
    src_iova: object,
    length: object,
    flags: object,
) -> int:
    """iommufd_ioas_copy(): iopt_get_pages() on the source, iopt_map_pages() on the dest."""
    fl, (ln, s_io, d_io) = _map_flags(
        flags, ("length", length), ("src_iova", src_iova), ("dst_iova", dst_iova)
    )
    src = ictx.ioas(src_id)
    pieces = src.iopt.get_pages(s_io, ln)
    dst = ictx.ioas(dst_id)
    iopt = dst.iopt
    at = iopt.place(ln, pieces[0].phys, bool(fl & _FIXED), d_io)
    write = bool(fl & _W)
    read = bool(fl & _R)
    iopt.map_pages(at, pieces, read, write)  # EPERM there, after placement
    return at


def ioas_iova_ranges(ictx: Ictx, ioas_id: object, num_iovas: object | None) -> IovaRanges:
    """iommufd_ioas_iova_ranges(): EMSGSIZE (with what would be needed) if too short."""
    ioas = ictx.ioas(ioas_id)
    ranges = ioas.iopt.iova_ranges()
    align = ioas.iopt.iova_alignment
    if num_iovas is not None and u32("num_iovas", num_iovas) < len(ranges):
        raise IommufdError(
            "EMSGSIZE",
            f"{len(ranges)} ranges do not fit {num_iovas}",
            num_iovas=len(ranges),
            out_iova_alignment=align,
        )
    return IovaRanges(ranges, align)


def ioas_allow_iovas(ictx: Ictx, ioas_id: object, ranges: object) -> None:
    """iommufd_ioas_allow_iovas(): replace the allowed list (empty = everything)."""
    ioas = ictx.ioas(ioas_id)
    if not isinstance(ranges, Sequence):
        raise IommufdError("EINVAL", "ranges must be a sequence of (start, last)")
    new: list[Range] = []
    for i, r in enumerate(ranges):  # iommufd_ioas_load_iovas()
        if not isinstance(r, tuple | list) or len(r) != 2:
            raise IommufdError("EINVAL", f"range {i} is not a (start, last) pair")
        s, e = u64(f"range {i} start", r[0]), u64(f"range {i} last", r[1])
        if s >= e:
            raise IommufdError("EINVAL", f"range {i}: start {s:#x} >= last {e:#x}")
        if any(overlaps((s, e), o) for o in new):
            raise IommufdError("EINVAL", f"range {i} overlaps another allowed range")
        new.append((s, e))
    ioas.iopt.set_allow_iova(new)  # iopt_set_allow_iova(): EADDRINUSE


def option(ictx: Ictx, option_id: object, op: object, object_id: object, val64: object) -> int:
    """iommufd_option() (main.c): the option id decides before any object is looked up."""
    oid = u32("option_id", option_id)
    opv = u32("op", op)
    obj = u32("object_id", object_id)
    val = u64("val64", val64)
    if oid == OptionId.IOMMU_OPTION_RLIMIT_MODE:
        return _rlimit_mode(ictx, opv, obj, val)
    if oid == OptionId.IOMMU_OPTION_HUGE_PAGES:
        return _huge_pages(ictx.ioas(obj), opv, val)  # iommufd_ioas_option(): ENOENT
    raise IommufdError("EOPNOTSUPP", f"unknown option {oid}")


def _rlimit_mode(ictx: Ictx, op: int, object_id: int, val: int) -> int:
    """iommufd_option_rlimit_mode()."""
    if object_id:
        raise IommufdError("EOPNOTSUPP", "RLIMIT_MODE takes object_id 0")
    if op == OptionOp.IOMMU_OPTION_OP_GET:
        return int(ictx.pins.mode == ACCOUNT_MM)
    if op == OptionOp.IOMMU_OPTION_OP_SET:
        if not ictx.cap_sys_resource:
            raise IommufdError("EPERM", "RLIMIT_MODE needs CAP_SYS_RESOURCE")
        if len(ictx.table):
            raise IommufdError("EBUSY", "RLIMIT_MODE can only change with no objects")
        if val not in (0, 1):
            raise IommufdError("EINVAL", f"RLIMIT_MODE value {val} is not 0 or 1")
        ictx.pins.mode = ACCOUNT_MM if val else ACCOUNT_USER
        return val
    raise IommufdError("EOPNOTSUPP", f"unknown option op {op}")


def _huge_pages(ioas: Ioas, op: int, val: int) -> int:
    """iommufd_ioas_option_huge_pages()."""
    if op == OptionOp.IOMMU_OPTION_OP_GET:
        return int(ioas.huge_pages)
    if op == OptionOp.IOMMU_OPTION_OP_SET:
        if val == 0:
            ioas.iopt.set_large_pages(False)  # iopt_disable_large_pages(): EINVAL, EADDRINUSE
            return 0
        if val == 1:
            ioas.iopt.set_large_pages(True)  # iopt_enable_large_pages()
            return 1
        raise IommufdError("EINVAL", f"HUGE_PAGES value {val} is not 0 or 1")
    raise IommufdError("EOPNOTSUPP", f"unknown option op {op}")
