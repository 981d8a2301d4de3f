"""The errno audit: one row per rule of upstream iommufd / VFIO cdev, citing the function.

Each row builds a state, makes one call and expects the kernel's errno (or
success).  Rows where two things are wrong at once pin down the order in
which the kernel checks them.  A rejected call must leave model and
hardware unchanged (``rejected``).  Upstream: drivers/iommu/iommufd/{main,
ioas,io_pagetable,hw_pagetable,device}.c, pages.c, drivers/vfio/{device_cdev,
iommufd}.c.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from test_iommufd_lib import make_backend, rejected, snapshot

from pyctl.iommufd import (
    DeviceHwInfo,
    InMemoryBackend,
    IommufdContext,
    IommufdError,
    IommulabHwptData,
    IommulabInvalidateEntry,
    ModelOptions,
    x86_device,
)
from pyctl.iommufd.uapi import (
    PAGE_SIZE,
    U64_MAX,
    HwptDataType,
    HwptInvalidateDataType,
    OptionId,
    OptionOp,
)

RW, R, W, FIXED = 6, 4, 2, 1
MIB = 1 << 20
MSI = 0xFEE00000
PPC = "/machine/peripheral/nvme-ppc"
NEST = 1  # IOMMU_HWPT_ALLOC_NEST_PARENT
LAB = HwptDataType.IOMMU_HWPT_DATA_IOMMULAB
INV = HwptInvalidateDataType.IOMMU_HWPT_INVALIDATE_DATA_IOMMULAB
SET, GET = OptionOp.IOMMU_OPTION_OP_SET, OptionOp.IOMMU_OPTION_OP_GET
HUGE, RLIMIT = OptionId.IOMMU_OPTION_HUGE_PAGES, OptionId.IOMMU_OPTION_RLIMIT_MODE


@dataclass
class S:
    """A fresh context: IOAS ``a`` (empty), ``nvme0`` bound as ``dev`` (detached)."""

    ctx: IommufdContext
    be: InMemoryBackend
    a: int
    dev: int
    ids: dict[str, int] = field(default_factory=dict)

    def bind(self, name: str) -> int:
        self.ids[name] = self.ctx.bind(name)
        return self.ids[name]

    def attach(self) -> S:
        self.ids["hwpt"] = self.ctx.attach(self.dev, self.a)
        return self

    def map(self, iova: int, length: int = PAGE_SIZE, phys: int = 0, flags: int = RW) -> S:
        self.ctx.ioas_map(self.a, phys, length, flags | FIXED, iova=iova)
        return self

    def parent(self) -> S:
        self.ids["parent"] = self.ctx.hwpt_alloc(self.dev, self.a, NEST)
        return self

    def nested(self) -> S:
        self.parent()
        self.ids["nested"] = self.ctx.hwpt_alloc(
            self.dev, self.ids["parent"], 0, LAB, IommulabHwptData(0x1000)
        )
        return self


def fresh(extra: list[DeviceHwInfo] | None = None, **kw: object) -> S:
    be = make_backend()
    for info in extra or []:
        be.add_device(info)
    ctx = IommufdContext(be, **kw)  # type: ignore[arg-type]
    return S(ctx, be, ctx.ioas_alloc(), ctx.bind("nvme0"))


@dataclass(frozen=True)
class Row:
    upstream: str
    errno: str | None
    call: Callable[[S], object]
    setup: Callable[[S], object] = lambda s: None
    devices: tuple[DeviceHwInfo, ...] = ()


BIG_PAGES = x86_device("big0", pgsize_bitmap=1 << 21)
MSI_MIX = DeviceHwInfo(
    "mix0", "x86", reserved=((0x8000000, 0x80FFFFF, "sw-msi"),), msi_window=(MSI, MSI + MIB - 1)
)
RELAX = x86_device("relax0", reserved=((0x100000, 0x1FFFFF, "direct-relaxable"),))
NO_MSI = DeviceHwInfo("plain0", "x86", msi_window=None)

ROWS: dict[str, Row] = {
    # ---------------------------------------------------------------- IOAS_ALLOC, DESTROY
    "ioas_alloc flags": Row(
        "iommufd_ioas_alloc_ioctl", "EOPNOTSUPP", lambda s: s.ctx.ioas_alloc(1)
    ),
    "destroy missing": Row("iommufd_object_remove", "ENOENT", lambda s: s.ctx.destroy(99)),
    "destroy ioas with hwpt": Row(
        "iommufd_object_remove", "EBUSY", lambda s: s.ctx.destroy(s.a), lambda s: s.attach()
    ),
    "destroy device": Row("iommufd_object_remove", "EBUSY", lambda s: s.ctx.destroy(s.dev)),
    "destroy hwpt with device": Row(
        "iommufd_object_remove", "EBUSY", lambda s: s.ctx.destroy(s.ids["hwpt"]), S.attach
    ),
    "destroy parent with nested": Row(
        "iommufd_object_remove", "EBUSY", lambda s: s.ctx.destroy(s.ids["parent"]), S.nested
    ),
    # ---------------------------------------------------------------- IOAS_MAP
    "map unknown flag before no R/W": Row(
        "iommufd_ioas_map", "EOPNOTSUPP", lambda s: s.ctx.ioas_map(s.a, 0, PAGE_SIZE, 8)
    ),
    "map iova >= ULONG_MAX before no R/W": Row(
        "iommufd_ioas_map", "EOVERFLOW", lambda s: s.ctx.ioas_map(s.a, 0, PAGE_SIZE, 0, U64_MAX)
    ),
    "map no R/W before the IOAS lookup": Row(
        "iommufd_ioas_map", "EINVAL", lambda s: s.ctx.ioas_map(99, 0, PAGE_SIZE, FIXED)
    ),
    "map IOAS lookup before the address": Row(
        "iommufd_get_ioas", "ENOENT", lambda s: s.ctx.ioas_map(99, U64_MAX - 10, PAGE_SIZE, RW)
    ),
    "map phys+length reaching 2^64": Row(
        "iopt_alloc_user_pages",
        "EOVERFLOW",
        lambda s: s.ctx.ioas_map(s.a, U64_MAX - PAGE_SIZE + 1, PAGE_SIZE, RW),
    ),
    "map phys overflow before length alignment": Row(
        "iopt_alloc_user_pages",
        "EOVERFLOW",
        lambda s: s.ctx.ioas_map(s.a, U64_MAX - 10, 0x800, RW),
        S.attach,
    ),
    "map length 0": Row("iopt_alloc_pages", "EINVAL", lambda s: s.ctx.ioas_map(s.a, 0, 0, RW)),
    "map length above SIZE_MAX - PAGE_SIZE": Row(
        "iopt_alloc_pages", "EINVAL", lambda s: s.ctx.ioas_map(s.a, 0, U64_MAX - 100, RW)
    ),
    "map length misaligned before reserved iova": Row(
        "iopt_alloc_area_pages",
        "EINVAL",
        lambda s: s.ctx.ioas_map(s.a, 0, 0x800, RW | FIXED, MSI),
        S.attach,
    ),
    "map fixed misaligned before overlap": Row(
        "iopt_check_iova",
        "EINVAL",
        lambda s: s.ctx.ioas_map(s.a, 0, PAGE_SIZE, RW | FIXED, 0x10800),
        lambda s: s.attach().map(0x10000),
    ),
    "map fixed overflow": Row(
        "iopt_check_iova",
        "EOVERFLOW",
        lambda s: s.ctx.ioas_map(s.a, 0, 2 * PAGE_SIZE, RW | FIXED, U64_MAX - PAGE_SIZE + 1),
    ),
    "map fixed reserved before overlap": Row(
        "iopt_check_iova",
        "EINVAL",
        lambda s: s.ctx.ioas_map(s.a, 0, 2 * MIB, RW | FIXED, MSI - MIB),
        lambda s: s.attach().map(MSI - MIB),
    ),
    "map fixed overlap": Row(
        "iopt_check_iova",
        "EEXIST",
        lambda s: s.ctx.ioas_map(s.a, 0, PAGE_SIZE, RW | FIXED, 0x10000),
        lambda s: s.map(0x10000),
    ),
    "map fixed outside allowed is fine": Row(
        "iopt_check_iova",
        None,
        lambda s: s.ctx.ioas_map(s.a, 0, PAGE_SIZE, RW | FIXED, 0x40000),
        lambda s: s.ctx.ioas_allow_iovas(s.a, [(0x10000, 0x1FFFF)]),
    ),
    "map auto alignment below IOAS alignment": Row(
        "iopt_alloc_iova", "EINVAL", lambda s: s.ctx.ioas_map(s.a, 0x800, PAGE_SIZE, RW), S.attach
    ),
    "map auto no space": Row(
        "iopt_alloc_iova",
        "ENOSPC",
        lambda s: s.ctx.ioas_map(s.a, 0, 2 * PAGE_SIZE, RW),
        lambda s: s.ctx.ioas_allow_iovas(s.a, [(0x10000, 0x10FFF)]),
    ),
    "map auto never on a hole's last byte": Row(
        "__alloc_iova_check_range",
        "ENOSPC",
        lambda s: s.ctx.ioas_map(s.a, 0, 1, RW),
        lambda s: (s.ctx.ioas_allow_iovas(s.a, [(0x1000, 0x1001)]), s.map(0x1000, 1)),
    ),
    "map page offset not aligned to the IOAS": Row(
        "iopt_insert_area",
        "EINVAL",
        lambda s: s.ctx.ioas_map(s.a, 0x800, PAGE_SIZE, RW | FIXED, 0x10000),
        S.attach,
    ),
    # ---------------------------------------------------------------- IOAS_UNMAP
    "unmap IOAS lookup before overflow": Row(
        "iommufd_ioas_unmap", "ENOENT", lambda s: s.ctx.ioas_unmap(99, U64_MAX, 1)
    ),
    "unmap iova >= ULONG_MAX": Row(
        "iommufd_ioas_unmap", "EOVERFLOW", lambda s: s.ctx.ioas_unmap(s.a, U64_MAX, 1)
    ),
    "unmap length 0": Row("iopt_unmap_iova", "EINVAL", lambda s: s.ctx.ioas_unmap(s.a, 0x1000, 0)),
    "unmap iova+length overflow": Row(
        "iopt_unmap_iova", "EOVERFLOW", lambda s: s.ctx.ioas_unmap(s.a, U64_MAX - 1, 8)
    ),
    "unmap nothing mapped": Row(
        "iommufd_ioas_unmap", "ENOENT", lambda s: s.ctx.ioas_unmap(s.a, 0x1000, 0x1000)
    ),
    "unmap split": Row(
        "iopt_unmap_iova_range",
        "ENOENT",
        lambda s: s.ctx.ioas_unmap(s.a, 0x10000, PAGE_SIZE),
        lambda s: s.map(0x10000, 2 * PAGE_SIZE),
    ),
    "unmap all of nothing": Row(
        "iopt_unmap_all", None, lambda s: s.ctx.ioas_unmap(s.a, 0, U64_MAX)
    ),
    # ---------------------------------------------------------------- IOAS_COPY
    "copy unknown flag": Row(
        "iommufd_ioas_copy", "EOPNOTSUPP", lambda s: s.ctx.ioas_copy(99, 0, 99, 0, PAGE_SIZE, 8)
    ),
    "copy overflow before no R/W": Row(
        "iommufd_ioas_copy", "EOVERFLOW", lambda s: s.ctx.ioas_copy(s.a, U64_MAX, s.a, 0, 1, 0)
    ),
    "copy no R/W before lookups": Row(
        "iommufd_ioas_copy", "EINVAL", lambda s: s.ctx.ioas_copy(99, 0, 99, 0, PAGE_SIZE, FIXED)
    ),
    "copy source before destination": Row(
        "iommufd_ioas_copy", "ENOENT", lambda s: s.ctx.ioas_copy(s.a, 0, 99, 0, PAGE_SIZE, RW)
    ),
    "copy length 0": Row(
        "iopt_get_pages", "EINVAL", lambda s: s.ctx.ioas_copy(s.a, 0, s.a, 0, 0, RW)
    ),
    "copy source not contiguous before missing destination": Row(
        "iopt_get_pages",
        "ENOENT",
        lambda s: s.ctx.ioas_copy(99, 0, s.a, 0x10000, 2 * PAGE_SIZE, RW),
        lambda s: s.map(0x10000),
    ),
    "copy destination lookup": Row(
        "iommufd_ioas_copy",
        "ENOENT",
        lambda s: s.ctx.ioas_copy(99, 0, s.a, 0x10000, PAGE_SIZE, RW),
        lambda s: s.map(0x10000),
    ),
    "copy writeable of read-only pages: placement first": Row(
        "iopt_alloc_area_pages",
        "EEXIST",
        lambda s: s.ctx.ioas_copy(s.a, 0x10000, s.a, 0x10000, PAGE_SIZE, RW | FIXED),
        lambda s: s.map(0x10000, flags=R),
    ),
    "copy writeable of read-only pages": Row(
        "iopt_insert_area",
        "EPERM",
        lambda s: s.ctx.ioas_copy(s.a, 0x20000, s.a, 0x10000, PAGE_SIZE, RW | FIXED),
        lambda s: s.map(0x10000, flags=R),
    ),
    # ---------------------------------------------------------------- IOVA_RANGES, ALLOW_IOVAS
    "iova_ranges lookup": Row(
        "iommufd_ioas_iova_ranges", "ENOENT", lambda s: s.ctx.ioas_iova_ranges(99)
    ),
    "iova_ranges short buffer": Row(
        "iommufd_ioas_iova_ranges", "EMSGSIZE", lambda s: s.ctx.ioas_iova_ranges(s.a, 1), S.attach
    ),
    "allow lookup before ranges": Row(
        "iommufd_ioas_allow_iovas", "ENOENT", lambda s: s.ctx.ioas_allow_iovas(99, [(5, 1)])
    ),
    "allow start >= last": Row(
        "iommufd_ioas_load_iovas", "EINVAL", lambda s: s.ctx.ioas_allow_iovas(s.a, [(5, 5)])
    ),
    "allow overlapping entries before reserved": Row(
        "iommufd_ioas_load_iovas",
        "EINVAL",
        lambda s: s.ctx.ioas_allow_iovas(s.a, [(MSI, MSI + 10), (MSI + 5, MSI + 20)]),
        S.attach,
    ),
    "allow over reserved": Row(
        "iopt_set_allow_iova",
        "EADDRINUSE",
        lambda s: s.ctx.ioas_allow_iovas(s.a, [(MSI, MSI + 10)]),
        S.attach,
    ),
    "allow need not cover areas": Row(
        "iopt_set_allow_iova",
        None,
        lambda s: s.ctx.ioas_allow_iovas(s.a, [(0x100000, 0x1FFFFF)]),
        lambda s: s.map(0x10000),
    ),
    # ---------------------------------------------------------------- OPTION
    "option unknown before the IOAS lookup": Row(
        "iommufd_option", "EOPNOTSUPP", lambda s: s.ctx.option(7, GET, 99)
    ),
    "option huge pages lookup": Row(
        "iommufd_ioas_option", "ENOENT", lambda s: s.ctx.option(HUGE, GET, 99)
    ),
    "option huge pages bad op": Row(
        "iommufd_ioas_option_huge_pages", "EOPNOTSUPP", lambda s: s.ctx.option(HUGE, 5, s.a)
    ),
    "option huge pages bad value": Row(
        "iommufd_ioas_option_huge_pages", "EINVAL", lambda s: s.ctx.option(HUGE, SET, s.a, 2)
    ),
    "option disable huge pages with mapped domain": Row(
        "iopt_disable_large_pages",
        "EINVAL",
        lambda s: s.ctx.option(HUGE, SET, s.a, 0),
        lambda s: s.attach().map(0x10000),
    ),
    "option disable huge pages, unaligned area": Row(
        "iopt_check_iova_alignment",
        "EADDRINUSE",
        lambda s: s.ctx.option(HUGE, SET, s.a, 0),
        lambda s: s.map(0x10800, 0x100),
    ),
    "option rlimit object_id": Row(
        "iommufd_option_rlimit_mode", "EOPNOTSUPP", lambda s: s.ctx.option(RLIMIT, GET, 1)
    ),
    "option rlimit with objects": Row(
        "iommufd_option_rlimit_mode", "EBUSY", lambda s: s.ctx.option(RLIMIT, SET, 0, 7)
    ),
    "option rlimit bad op": Row(
        "iommufd_option_rlimit_mode", "EOPNOTSUPP", lambda s: s.ctx.option(RLIMIT, 5)
    ),
    # ---------------------------------------------------------------- HWPT_ALLOC
    "hwpt data/type disagree before the device": Row(
        "iommufd_hwpt_alloc", "EINVAL", lambda s: s.ctx.hwpt_alloc(99, s.a, 0, LAB, None)
    ),
    "hwpt device lookup": Row("iommufd_get_device", "ENOENT", lambda s: s.ctx.hwpt_alloc(99, s.a)),
    "hwpt missing pt is EINVAL": Row(
        "iommufd_hwpt_alloc", "EINVAL", lambda s: s.ctx.hwpt_alloc(s.dev, 99)
    ),
    "hwpt on a device": Row(
        "iommufd_hwpt_alloc", "EINVAL", lambda s: s.ctx.hwpt_alloc(s.dev, s.dev)
    ),
    "hwpt paging unknown flag": Row(
        "iommufd_hwpt_paging_alloc", "EOPNOTSUPP", lambda s: s.ctx.hwpt_alloc(s.dev, s.a, 1 << 9)
    ),
    "hwpt paging page size above PAGE_SIZE": Row(
        "iopt_table_add_domain",
        "EINVAL",
        lambda s: s.ctx.hwpt_alloc(s.ids["big0"], s.a),
        lambda s: s.bind("big0"),
        devices=(BIG_PAGES,),
    ),
    "hwpt paging aperture over an area": Row(
        "iopt_table_add_domain",
        "EADDRINUSE",
        lambda s: s.ctx.hwpt_alloc(s.dev, s.a),
        lambda s: s.map(1 << 48),
    ),
    "hwpt paging unaligned area": Row(
        "iopt_check_iova_alignment",
        "EADDRINUSE",
        lambda s: s.ctx.hwpt_alloc(s.dev, s.a),
        lambda s: s.map(0x10800, 0x100),
    ),
    "hwpt nested flags": Row(
        "iommufd_hwpt_nested_alloc",
        "EOPNOTSUPP",
        lambda s: s.ctx.hwpt_alloc(s.dev, s.ids["parent"], NEST, LAB, IommulabHwptData(0)),
        S.parent,
    ),
    "hwpt nested on a non-parent": Row(
        "iommufd_hwpt_nested_alloc",
        "EINVAL",
        lambda s: s.ctx.hwpt_alloc(s.dev, s.ids["hwpt"], 0, LAB, IommulabHwptData(0)),
        S.attach,
    ),
    "hwpt nested foreign data type": Row(
        "domain_alloc_nested (driver)",
        "EOPNOTSUPP",
        lambda s: s.ctx.hwpt_alloc(s.dev, s.ids["parent"], 0, 1, IommulabHwptData(0)),
        S.parent,
    ),
    "hwpt nested misaligned root": Row(
        "domain_alloc_nested (driver)",
        "EINVAL",
        lambda s: s.ctx.hwpt_alloc(s.dev, s.ids["parent"], 0, LAB, IommulabHwptData(0x10)),
        S.parent,
    ),
    "invalidate lookup": Row(
        "iommufd_hwpt_invalidate", "ENOENT", lambda s: s.ctx.hwpt_invalidate(99, INV, [])
    ),
    "invalidate a paging hwpt": Row(
        "iommufd_hwpt_invalidate",
        "EINVAL",
        lambda s: s.ctx.hwpt_invalidate(s.ids["hwpt"], INV, []),
        S.attach,
    ),
    "invalidate bad data type": Row(
        "cache_invalidate_user (driver)",
        "EINVAL",
        lambda s: s.ctx.hwpt_invalidate(s.ids["nested"], 0, [IommulabInvalidateEntry(0, 0, 1)]),
        S.nested,
    ),
    # ---------------------------------------------------------------- devices (VFIO cdev)
    "bind twice": Row("vfio_df_ioctl_bind_iommufd", "EINVAL", lambda s: s.ctx.bind("nvme0")),
    "bind unknown device": Row("vfio_df_ioctl_bind_iommufd", "ENOENT", lambda s: s.ctx.bind("x")),
    "attach pt lookup": Row(
        "iommufd_device_change_pt", "ENOENT", lambda s: s.ctx.attach(s.dev, 99)
    ),
    "attach to a device": Row(
        "iommufd_device_change_pt", "EINVAL", lambda s: s.ctx.attach(s.dev, s.dev)
    ),
    "attach incompatible hwpt": Row(
        "iommufd_hwpt_attach_device",
        "EINVAL",
        lambda s: s.ctx.attach(s.dev, s.ids["wide"]),
        lambda s: s.ids.update(wide=s.ctx.hwpt_alloc(s.bind("wide0"), s.a)),
    ),
    "attach reserved regions before compatibility": Row(
        "iommufd_hw_pagetable_attach",
        "EADDRINUSE",
        lambda s: s.ctx.attach(s.dev, s.ids["wide"]),
        lambda s: (
            s.ids.update(wide=s.ctx.hwpt_alloc(s.ctx.bind("wide0"), s.a)),
            s.map(MSI),
        ),
    ),
    "attach unaligned area": Row(
        "iopt_check_iova_alignment",
        "EADDRINUSE",
        lambda s: s.ctx.attach(s.dev, s.a),
        lambda s: s.map(0x10800, 0x100),
    ),
    "attach nested without nesting": Row(
        "iommufd_hwpt_attach_device",
        "EINVAL",
        lambda s: s.ctx.attach(s.ids[PPC], s.ids["nested"]),
        lambda s: (s.nested(), s.bind(PPC)),
    ),
    "attach software and hardware MSI": Row(
        "iopt_table_enforce_dev_resv_regions",
        "EINVAL",
        lambda s: s.ctx.attach(s.ids["mix0"], s.a),
        lambda s: s.bind("mix0"),
        devices=(MSI_MIX,),
    ),
    "attach over a relaxable direct region": Row(
        "iopt_table_enforce_dev_resv_regions",
        None,
        lambda s: s.ctx.attach(s.ctx.bind("relax0"), s.a),
        lambda s: s.map(0x100000),
        devices=(RELAX,),
    ),
    "attach without an MSI window": Row(
        "iopt_table_enforce_dev_resv_regions",
        None,
        lambda s: s.ctx.attach(s.ctx.bind("plain0"), s.a),
        lambda s: s.map(MSI),
        devices=(NO_MSI,),
    ),
    "replace a detached device": Row(
        "iommufd_device_do_replace", "EINVAL", lambda s: s.ctx.replace(s.dev, s.a)
    ),
    "replace reserved regions before compatibility": Row(
        "iommufd_device_do_replace",
        "EADDRINUSE",
        lambda s: s.ctx.replace(s.dev, s.ids["wide"]),
        lambda s: (
            s.attach(),
            s.ids.update(b=s.ctx.ioas_alloc()),
            s.ctx.ioas_map(s.ids["b"], 0, PAGE_SIZE, RW | FIXED, MSI),
            s.ids.update(wide=s.ctx.hwpt_alloc(s.ctx.bind("wide0"), s.ids["b"])),
        ),
    ),
    "detach a detached device": Row(
        "vfio_iommufd_physical_detach_ioas", None, lambda s: s.ctx.detach(s.dev)
    ),
}


@pytest.mark.parametrize("name", list(ROWS))
def test_errno_rule(name: str) -> None:
    row = ROWS[name]
    s = fresh(list(row.devices))
    row.setup(s)
    if row.errno is None:
        row.call(s)
        assert s.ctx.check_hardware() == []
        return
    err = rejected(s.ctx, row.errno, lambda: row.call(s))
    assert err.code > 0


def test_every_row_cites_an_upstream_function() -> None:
    assert all(r.upstream and " " not in r.upstream.split(" (")[0] for r in ROWS.values())


# ---------------------------------------------------------------- placement (iopt_alloc_iova)
@pytest.mark.parametrize(
    ("cap", "length", "phys", "want"),
    [
        (2 * MIB, 4 * MIB, 0, 2 * MIB),  # CONFIG_TRANSPARENT_HUGEPAGE: HPAGE_SIZE
        (PAGE_SIZE, 4 * MIB, 0, PAGE_SIZE),  # without THP: PAGE_SIZE
        (None, 4 * MIB, 0, 4 * MIB),  # before the cap: roundup_pow_of_two(length)
        (2 * MIB, 16 * PAGE_SIZE, 0x3000, PAGE_SIZE),  # the address's lowest bit
        (2 * MIB, 3 * PAGE_SIZE, 0, 4 * PAGE_SIZE),  # roundup_pow_of_two
        (2 * MIB, 4 * MIB, 0x2345, 0x345),  # page offset kept, OR-ed in
    ],
)
def test_auto_iova_alignment_cap(cap: int | None, length: int, phys: int, want: int) -> None:
    """iopt_alloc_iova(): alignment min(roundup_pow_of_two(length), lowest bit of the
    address), at most max_alignment; the first fit from PAGE_SIZE, never 0."""
    ctx = IommufdContext(make_backend(), options=ModelOptions(max_iova_alignment=cap))
    ioas = ctx.ioas_alloc()
    if phys % PAGE_SIZE:
        ctx.ioas_map(ioas, 0, PAGE_SIZE, RW)  # take page 1 so the offset shows
    got = ctx.ioas_map(ioas, phys, length, RW)
    if phys % PAGE_SIZE:
        assert got % PAGE_SIZE == phys % PAGE_SIZE and got > PAGE_SIZE
    else:
        assert got == want


# ---------------------------------------------------------------- deliberate differences
def _split_setup(atomic: bool) -> tuple[IommufdContext, InMemoryBackend, int]:
    be = make_backend()
    ctx = IommufdContext(be, options=ModelOptions(atomic_unmap=atomic))
    a = ctx.ioas_alloc()
    ctx.attach(ctx.bind("nvme0"), a)
    ctx.ioas_map(a, 0x100000, 0x2000, RW | FIXED, 0x10000)  # whole in the range
    ctx.ioas_map(a, 0x200000, 0x2000, RW | FIXED, 0x12000)  # would be split
    return ctx, be, a


def test_unmap_atomic_by_default() -> None:
    ctx, _, a = _split_setup(atomic=True)
    err = rejected(ctx, "ENOENT", lambda: ctx.ioas_unmap(a, 0x10000, 0x3000))
    assert err.data["unmapped"] == 0
    assert len(ctx.areas(a)) == 2


def test_unmap_as_the_kernel_leaves_the_areas_before_the_split_unmapped() -> None:
    """iopt_unmap_iova_range(): areas go in IOVA order until one would be split."""
    ctx, be, a = _split_setup(atomic=False)
    before = ctx.pinned_pages()
    with pytest.raises(IommufdError) as ei:
        ctx.ioas_unmap(a, 0x10000, 0x3000)
    assert ei.value.errno == "ENOENT" and ei.value.data["unmapped"] == 0x2000
    assert [(x.iova, x.length) for x in ctx.areas(a)] == [(0x12000, 0x2000)]
    assert not be.translate("nvme0", 0x10000, "read").allowed
    assert be.translate("nvme0", 0x12000, "read").addr == 0x200000
    assert ctx.pinned_pages() == before - 2
    assert ctx.check_hardware() == []


@pytest.mark.parametrize(("per_page", "pinned"), [(True, 4), (False, 8)])
def test_pin_accounting_per_guest_page_or_per_iopt_pages(per_page: bool, pinned: int) -> None:
    """The model charges a guest page once; the kernel once per iopt_pages (each MAP),
    a COPY sharing its source's pages."""
    ctx = IommufdContext(make_backend(), options=ModelOptions(pin_per_guest_page=per_page))
    a, b = ctx.ioas_alloc(), ctx.ioas_alloc()
    ctx.attach(ctx.bind("nvme0"), a)
    ctx.attach(ctx.bind("edu0"), b)
    ctx.ioas_map(a, 0x100000, 4 * PAGE_SIZE, RW)
    ctx.ioas_map(a, 0x100000, 4 * PAGE_SIZE, RW)  # the same memory mapped again
    assert ctx.pinned_pages() == pinned
    iova = ctx.areas(a)[0].iova
    ctx.ioas_copy(b, 0, a, iova, 4 * PAGE_SIZE, RW)  # shares the first MAP's pages
    assert ctx.pinned_pages() == pinned
    ctx.ioas_unmap(a, 0, U64_MAX)
    assert ctx.pinned_pages() == 4
    ctx.ioas_unmap(b, 0, U64_MAX)
    assert ctx.pinned_pages() == 0


def test_detach_of_a_detached_device_changes_nothing() -> None:
    s = fresh()
    before = snapshot(s.ctx)
    s.ctx.detach(s.dev)
    assert snapshot(s.ctx) == before
