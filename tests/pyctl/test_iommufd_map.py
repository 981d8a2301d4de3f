"""IOAS MAP / UNMAP / COPY / IOVA_RANGES / ALLOW_IOVAS / OPTION and pin accounting."""

from __future__ import annotations

from typing import Any

import pytest
from test_iommufd_lib import FIXED, GIB, MIB, RW, R, make_ctx, rejected, snapshot

from pyctl.iommufd import U64_MAX, IommufdError
from pyctl.iommufd.uapi import PAGE_SIZE, OptionId, OptionOp

SET, GET = OptionOp.IOMMU_OPTION_OP_SET, OptionOp.IOMMU_OPTION_OP_GET
HUGE, RLIMIT = OptionId.IOMMU_OPTION_HUGE_PAGES, OptionId.IOMMU_OPTION_RLIMIT_MODE


# ------------------------------------------------------------------ MAP
def test_allocated_iova_is_aligned_to_size_class_and_never_zero() -> None:
    ctx, _ = make_ctx()
    ioas = ctx.ioas_alloc()
    a = ctx.ioas_map(ioas, 0, 3 * PAGE_SIZE, RW)
    assert a != 0 and a % (4 * PAGE_SIZE) == 0
    b = ctx.ioas_map(ioas, 0, 2 * MIB, RW)
    assert b % (2 * MIB) == 0
    c = ctx.ioas_map(ioas, 0, PAGE_SIZE, RW)
    # lowest free page (the 3-page area went to 16 KiB alignment, page 1 stayed free)
    assert c == PAGE_SIZE
    areas = ctx.areas(ioas)
    assert [(x.iova, x.length) for x in areas] == sorted(
        [(a, 3 * PAGE_SIZE), (b, 2 * MIB), (c, PAGE_SIZE)]
    )


def test_allocation_alignment_limited_by_user_address() -> None:
    ctx, _ = make_ctx()
    ioas = ctx.ioas_alloc()
    # phys 0x5000 has lowest bit 0x1000: alignment min(roundup(64K), 4K) = 4K
    a = ctx.ioas_map(ioas, 0x5000, 0x10000, RW)
    assert a == PAGE_SIZE


def test_fixed_iova_map_and_errors() -> None:
    ctx, _ = make_ctx()
    ioas = ctx.ioas_alloc()
    assert ctx.ioas_map(ioas, 0x1000_0000, MIB, RW | FIXED, iova=0) == 0
    rejected(ctx, "EEXIST", lambda: ctx.ioas_map(ioas, 0, PAGE_SIZE, RW | FIXED, iova=MIB - 1))
    # touching is fine
    assert ctx.ioas_map(ioas, 0, PAGE_SIZE, R | FIXED, iova=MIB) == MIB


@pytest.mark.parametrize(
    ("kwargs", "errno"),
    [
        ({"flags": 0x8 | RW}, "EOPNOTSUPP"),
        ({"flags": FIXED}, "EINVAL"),  # neither READABLE nor WRITEABLE
        ({"iova": U64_MAX, "flags": RW | FIXED}, "EOVERFLOW"),
        ({"length": U64_MAX}, "EOVERFLOW"),
        ({"length": 0}, "EINVAL"),
        (
            {"iova": U64_MAX - PAGE_SIZE + 1, "flags": RW | FIXED, "length": 2 * PAGE_SIZE},
            "EOVERFLOW",
        ),
        ({"phys": U64_MAX - 10}, "EOVERFLOW"),
        ({"iova": "0x1000"}, "EINVAL"),
        ({"length": 4096.0}, "EINVAL"),
        ({"flags": True}, "EINVAL"),
        ({"iova": -1}, "EINVAL"),
        ({"ioas": 999}, "ENOENT"),
        ({"ioas": "x"}, "EINVAL"),
    ],
)
def test_map_bad_input_changes_nothing(kwargs: dict[str, object], errno: str) -> None:
    ctx, _ = make_ctx()
    ioas = ctx.ioas_alloc()
    ctx.ioas_map(ioas, 0, MIB, RW)
    args: dict[str, Any] = {"ioas": ioas, "phys": 0, "length": PAGE_SIZE, "flags": RW, "iova": 0}
    args.update(kwargs)
    a = args
    rejected(
        ctx,
        errno,
        lambda: ctx.ioas_map(a["ioas"], a["phys"], a["length"], a["flags"], iova=a["iova"]),
    )


def test_map_into_reserved_is_einval_and_alloc_avoids_it() -> None:
    ctx, _ = make_ctx()
    ioas = ctx.ioas_alloc()
    dev = ctx.bind("nvme0")
    ctx.attach(dev, ioas)
    rejected(ctx, "EINVAL", lambda: ctx.ioas_map(ioas, 0, PAGE_SIZE, RW | FIXED, iova=0xFEE01000))
    # aperture of a 48-bit domain is reserved too
    rejected(ctx, "EINVAL", lambda: ctx.ioas_map(ioas, 0, PAGE_SIZE, RW | FIXED, iova=1 << 48))
    ctx.ioas_allow_iovas(ioas, [(0xFE000000, 0xFEDFFFFF), (0xFF000000, 0xFFFFFFFF)])
    got = [ctx.ioas_map(ioas, 0, MIB, RW) for _ in range(15)]
    assert all(0xFE000000 <= g < 0xFEE00000 for g in got[:14])
    assert got[14] == 0xFF000000


def test_alignment_with_domain_is_page_size() -> None:
    ctx, _ = make_ctx()
    ioas = ctx.ioas_alloc()
    # no domain: byte granular, as the kernel's software-only io_pagetable
    assert ctx.ioas_iova_ranges(ioas).alignment == 1
    ctx.ioas_map(ioas, 0x10, 0x20, RW | FIXED, iova=0x20000010)
    dev = ctx.bind("nvme0")
    # a domain needs every area page aligned
    rejected(ctx, "EADDRINUSE", lambda: ctx.attach(dev, ioas))
    ctx.ioas_unmap(ioas, 0, U64_MAX)
    ctx.attach(dev, ioas)
    assert ctx.ioas_iova_ranges(ioas).alignment == PAGE_SIZE
    rejected(ctx, "EINVAL", lambda: ctx.ioas_map(ioas, 0, 0x800, RW))
    rejected(ctx, "EINVAL", lambda: ctx.ioas_map(ioas, 0, PAGE_SIZE, RW | FIXED, iova=0x800))
    rejected(ctx, "EINVAL", lambda: ctx.ioas_map(ioas, 0x800, PAGE_SIZE, RW | FIXED, iova=0))


def test_enospc_when_allowed_space_is_full() -> None:
    ctx, _ = make_ctx()
    ioas = ctx.ioas_alloc()
    ctx.ioas_allow_iovas(ioas, [(0x10000, 0x1FFFF)])
    for _ in range(16):
        ctx.ioas_map(ioas, 0, PAGE_SIZE, RW)
    rejected(ctx, "ENOSPC", lambda: ctx.ioas_map(ioas, 0, PAGE_SIZE, RW))
    # FIXED_IOVA outside allowed is accepted (allowed only steers the allocator)
    assert ctx.ioas_map(ioas, 0, PAGE_SIZE, RW | FIXED, iova=0x40000) == 0x40000


# ------------------------------------------------------------------ UNMAP
def test_unmap_superset_returns_bytes_and_refuses_split() -> None:
    ctx, _ = make_ctx()
    ioas = ctx.ioas_alloc()
    for i in range(4):
        ctx.ioas_map(ioas, i * MIB, MIB, RW | FIXED, iova=(i + 1) * 2 * MIB)
    rejected(ctx, "ENOENT", lambda: ctx.ioas_unmap(ioas, 2 * MIB, MIB // 2))  # split
    rejected(ctx, "ENOENT", lambda: ctx.ioas_unmap(ioas, 2 * MIB, 2 * MIB + MIB // 2))  # cuts 2nd
    rejected(ctx, "ENOENT", lambda: ctx.ioas_unmap(ioas, 0, MIB))  # nothing there
    assert ctx.ioas_unmap(ioas, 0, 3 * MIB) == MIB  # superset with holes
    assert ctx.ioas_unmap(ioas, 3 * MIB, 4 * MIB) == 2 * MIB  # two whole areas
    assert len(ctx.areas(ioas)) == 1
    assert ctx.ioas_unmap(ioas, 0, U64_MAX) == MIB
    assert ctx.ioas_unmap(ioas, 0, U64_MAX) == 0  # unmap-all of nothing succeeds
    rejected(ctx, "ENOENT", lambda: ctx.ioas_unmap(ioas, 0, PAGE_SIZE))


@pytest.mark.parametrize(
    ("iova", "length", "errno"),
    [
        (U64_MAX, 1, "EOVERFLOW"),
        (1, U64_MAX, "EOVERFLOW"),
        (0, 0, "EINVAL"),
        (U64_MAX - 5, 10, "EOVERFLOW"),
        ("a", 1, "EINVAL"),
        (0, None, "EINVAL"),
    ],
)
def test_unmap_bad_input(iova: object, length: object, errno: str) -> None:
    ctx, _ = make_ctx()
    ioas = ctx.ioas_alloc()
    ctx.ioas_map(ioas, 0, MIB, RW)
    rejected(ctx, errno, lambda: ctx.ioas_unmap(ioas, iova, length))  # type: ignore[arg-type]


def test_unmap_reaches_every_domain_and_unmaps_in_hardware() -> None:
    ctx, be = make_ctx()
    ioas = ctx.ioas_alloc()
    d1, d2 = ctx.bind("nvme0"), ctx.bind("wide0")  # incompatible: two domains
    h1, h2 = ctx.attach(d1, ioas), ctx.attach(d2, ioas)
    assert h1 != h2
    iova = ctx.ioas_map(ioas, 0x4000_0000, MIB, RW)
    for dev in ("nvme0", "wide0"):
        t = be.translate(dev, iova + 0x123, "write")
        assert t.allowed and t.addr == 0x4000_0123
    assert ctx.ioas_unmap(ioas, iova, MIB) == MIB
    for dev in ("nvme0", "wide0"):
        t = be.translate(dev, iova + 0x123, "read")
        assert not t.allowed and t.reason == "not-present"
    assert ctx.check_hardware() == []


# ------------------------------------------------------------------ COPY
def test_copy_maps_same_memory_into_another_ioas() -> None:
    ctx, be = make_ctx()
    a, b = ctx.ioas_alloc(), ctx.ioas_alloc()
    dev = ctx.bind("nvme0")
    ctx.attach(dev, b)
    src = ctx.ioas_map(a, 0x8000_0000, 2 * MIB, RW)
    dst = ctx.ioas_copy(b, 0, a, src, 2 * MIB, R)
    t = be.translate("nvme0", dst + 0x1000, "read")
    assert t.allowed and t.addr == 0x8000_1000
    assert not be.translate("nvme0", dst, "write").allowed  # copied READABLE only
    # a sub-range of an area can be copied (iopt_get_pages)
    dst2 = ctx.ioas_copy(b, 0x1000_0000, a, src + MIB, MIB, RW | FIXED)
    assert dst2 == 0x1000_0000
    assert be.translate("nvme0", dst2, "write").addr == 0x8000_0000 + MIB


def test_copy_errors() -> None:
    ctx, _ = make_ctx()
    a, b = ctx.ioas_alloc(), ctx.ioas_alloc()
    src = ctx.ioas_map(a, 0, MIB, R)  # read-only pages
    rejected(ctx, "EPERM", lambda: ctx.ioas_copy(b, 0, a, src, MIB, RW))
    rejected(ctx, "ENOENT", lambda: ctx.ioas_copy(b, 0, a, src, 2 * MIB, R))  # not all mapped
    rejected(ctx, "ENOENT", lambda: ctx.ioas_copy(b, 0, 99, src, MIB, R))
    rejected(ctx, "ENOENT", lambda: ctx.ioas_copy(99, 0, a, src, MIB, R))
    rejected(ctx, "EOPNOTSUPP", lambda: ctx.ioas_copy(b, 0, a, src, MIB, R | 0x100))
    rejected(ctx, "EINVAL", lambda: ctx.ioas_copy(b, 0, a, src, MIB, FIXED))
    rejected(ctx, "EINVAL", lambda: ctx.ioas_copy(b, 0, a, src, 0, R))
    rejected(ctx, "EOVERFLOW", lambda: ctx.ioas_copy(b, U64_MAX, a, src, MIB, R))
    ctx.ioas_map(b, 0, MIB, R | FIXED, iova=0)
    rejected(ctx, "EEXIST", lambda: ctx.ioas_copy(b, 0, a, src, MIB, R | FIXED))


def test_copy_across_two_contiguous_areas_makes_two_areas() -> None:
    ctx, _ = make_ctx()
    a, b = ctx.ioas_alloc(), ctx.ioas_alloc()
    ctx.ioas_map(a, 0x100000, MIB, RW | FIXED, iova=GIB)
    ctx.ioas_map(a, 0x900000, MIB, RW | FIXED, iova=GIB + MIB)
    dst = ctx.ioas_copy(b, 0, a, GIB + MIB // 2, MIB, RW)
    got = [(x.iova - dst, x.length, x.phys) for x in ctx.areas(b)]
    assert got == [(0, MIB // 2, 0x180000), (MIB // 2, MIB // 2, 0x900000)]
    rejected(ctx, "ENOENT", lambda: ctx.ioas_unmap(b, dst, MIB // 2 + PAGE_SIZE))
    assert ctx.ioas_unmap(b, dst, MIB) == MIB


# ------------------------------------------------------------------ IOVA_RANGES / ALLOW
def test_iova_ranges_narrowed_by_devices_and_emsgsize() -> None:
    ctx, _ = make_ctx()
    ioas = ctx.ioas_alloc()
    assert ctx.ioas_iova_ranges(ioas).ranges == [(0, U64_MAX)]
    ctx.attach(ctx.bind("wide0"), ioas)
    assert ctx.ioas_iova_ranges(ioas).ranges == [(0, 0xFEDFFFFF), (0xFEF00000, (1 << 57) - 1)]
    ctx.attach(ctx.bind("nvme0"), ioas)
    r = ctx.ioas_iova_ranges(ioas)
    assert r.ranges == [(0, 0xFEDFFFFF), (0xFEF00000, (1 << 48) - 1)]
    e = rejected(ctx, "EMSGSIZE", lambda: ctx.ioas_iova_ranges(ioas, num_iovas=1))
    assert e.data["num_iovas"] == 2
    assert ctx.ioas_iova_ranges(ioas, num_iovas=2).ranges == r.ranges


def test_allow_iovas_rules() -> None:
    ctx, _ = make_ctx()
    ioas = ctx.ioas_alloc()
    ctx.ioas_allow_iovas(ioas, [(0x1000, 0xFFFFF)])
    rejected(ctx, "EINVAL", lambda: ctx.ioas_allow_iovas(ioas, [(5, 5)]))  # start >= last
    rejected(ctx, "EINVAL", lambda: ctx.ioas_allow_iovas(ioas, [(0, 10), (10, 20)]))
    rejected(ctx, "EINVAL", lambda: ctx.ioas_allow_iovas(ioas, [(0, 1 << 64)]))
    rejected(ctx, "EINVAL", lambda: ctx.ioas_allow_iovas(ioas, [(0,)]))  # type: ignore[list-item]
    rejected(ctx, "EINVAL", lambda: ctx.ioas_allow_iovas(ioas, 5))  # type: ignore[arg-type]
    dev = ctx.bind("nvme0")
    ctx.attach(dev, ioas)
    # allowed may not cover reserved: EADDRINUSE
    rejected(ctx, "EADDRINUSE", lambda: ctx.ioas_allow_iovas(ioas, [(0xF0000000, 0xFFFFFFFF)]))
    ctx.detach(dev)
    ctx.ioas_allow_iovas(ioas, [(0xF0000000, 0xFFFFFFFF)])
    # ...and an attach that would reserve inside allowed fails
    rejected(ctx, "EADDRINUSE", lambda: ctx.attach(dev, ioas))
    ctx.ioas_allow_iovas(ioas, [])
    ctx.attach(dev, ioas)


def test_attach_reserving_over_a_mapping_fails() -> None:
    ctx, _ = make_ctx()
    ioas = ctx.ioas_alloc()
    ctx.ioas_map(ioas, 0, MIB, RW | FIXED, iova=0xFEE00000)
    dev = ctx.bind("nvme0")
    rejected(ctx, "EADDRINUSE", lambda: ctx.attach(dev, ioas))
    ctx.ioas_unmap(ioas, 0, U64_MAX)
    ctx.ioas_map(ioas, 0, MIB, RW | FIXED, iova=1 << 50)  # outside the 48-bit aperture
    rejected(ctx, "EADDRINUSE", lambda: ctx.attach(dev, ioas))


# ------------------------------------------------------------------ OPTION
def test_option_huge_pages() -> None:
    ctx, _ = make_ctx()
    ioas = ctx.ioas_alloc()
    assert ctx.option(HUGE, GET, ioas) == 1
    assert ctx.option(HUGE, SET, ioas, 0) == 0
    assert ctx.option(HUGE, GET, ioas) == 0
    assert ctx.ioas_iova_ranges(ioas).alignment == PAGE_SIZE
    rejected(ctx, "EINVAL", lambda: ctx.option(HUGE, SET, ioas, 2))
    rejected(ctx, "EOPNOTSUPP", lambda: ctx.option(HUGE, 7, ioas))
    rejected(ctx, "ENOENT", lambda: ctx.option(HUGE, GET, 99))
    rejected(ctx, "EOPNOTSUPP", lambda: ctx.option(9, GET, ioas))
    ctx.option(HUGE, SET, ioas, 1)
    ctx.attach(ctx.bind("nvme0"), ioas)
    ctx.ioas_map(ioas, 0, MIB, RW)
    rejected(ctx, "EINVAL", lambda: ctx.option(HUGE, SET, ioas, 0))


def test_option_rlimit_mode() -> None:
    ctx, _ = make_ctx()
    assert ctx.option(RLIMIT, GET) == 0
    assert ctx.option(RLIMIT, SET, 0, 1) == 1
    assert ctx.option(RLIMIT, GET) == 1
    rejected(ctx, "EINVAL", lambda: ctx.option(RLIMIT, SET, 0, 2))
    rejected(ctx, "EOPNOTSUPP", lambda: ctx.option(RLIMIT, GET, 1))
    ctx.ioas_alloc()
    rejected(ctx, "EBUSY", lambda: ctx.option(RLIMIT, SET, 0, 0))
    ctx2, _ = make_ctx()
    ctx2.cap_sys_resource = False
    rejected(ctx2, "EPERM", lambda: ctx2.option(RLIMIT, SET, 0, 1))


# ------------------------------------------------------------------ pinning
def test_pinned_pages_counted_once_across_domains_and_ioas() -> None:
    ctx, _ = make_ctx(limit_pages=1024)
    a, b = ctx.ioas_alloc(), ctx.ioas_alloc()
    ctx.ioas_map(a, 0, 2 * MIB, RW)
    assert ctx.pinned_pages() == 0  # nothing pinned without a domain
    ctx.attach(ctx.bind("nvme0"), a)
    assert ctx.pinned_pages() == 512
    ctx.attach(ctx.bind("wide0"), a)  # second domain, same pages
    assert ctx.pinned_pages() == 512
    ctx.attach(ctx.bind("edu0"), b)
    ctx.ioas_map(b, 0, MIB, RW)  # same guest memory in another IOAS
    assert ctx.pinned_pages() == 512
    ctx.ioas_map(b, 2 * MIB, MIB, RW)
    assert ctx.pinned_pages() == 768
    e = rejected(ctx, "ENOMEM", lambda: ctx.ioas_map(b, 3 * MIB, 2 * MIB, RW))
    assert "1024" in e.message
    ctx.ioas_unmap(a, 0, U64_MAX)
    assert ctx.pinned_pages() == 512
    ctx.ioas_map(b, 3 * MIB, 2 * MIB, RW)
    assert ctx.pinned_pages() == 1024


def test_attach_that_would_pin_over_the_limit_fails() -> None:
    ctx, _ = make_ctx(limit_pages=100)
    ioas = ctx.ioas_alloc()
    ctx.ioas_map(ioas, 0, MIB, RW)
    dev = ctx.bind("nvme0")
    rejected(ctx, "ENOMEM", lambda: ctx.attach(dev, ioas))


def test_rlimit_mode_selects_account() -> None:
    be_ctx, _ = make_ctx(limit_pages=1000)
    be_ctx.option(RLIMIT, SET, 0, 1)
    ioas = be_ctx.ioas_alloc()
    be_ctx.attach(be_ctx.bind("nvme0"), ioas)
    be_ctx.ioas_map(ioas, 0, MIB, RW)
    assert be_ctx.mm_account.pinned_pages == 256
    assert be_ctx.user_account.pinned_pages == 0


# ------------------------------------------------------------------ hardware failure
@pytest.mark.parametrize("method", ["map", "unmap"])
def test_hardware_failure_rolls_back_every_domain(method: str) -> None:
    ctx, be = make_ctx()
    ioas = ctx.ioas_alloc()
    ctx.attach(ctx.bind("nvme0"), ioas)
    ctx.attach(ctx.bind("wide0"), ioas)
    iova = ctx.ioas_map(ioas, 0, MIB, RW)
    calls = be.calls.get(method, 0)

    def fail_second() -> None:
        # first domain succeeds, second fails
        orig = getattr(be, method)
        count = {"n": 0}

        def wrapper(*a: object) -> object:
            count["n"] += 1
            if count["n"] == 2:
                from pyctl.iommufd import BackendError

                raise BackendError("injected")
            return orig(*a)

        setattr(be, method, wrapper)

    before = snapshot(ctx)
    fail_second()
    with pytest.raises(IommufdError) as ei:
        if method == "map":
            ctx.ioas_map(ioas, 0x100000, MIB, RW)
        else:
            ctx.ioas_unmap(ioas, iova, MIB)
    assert ei.value.errno == "EIO"
    del be.__dict__[method]
    assert snapshot(ctx) == before
    assert ctx.check_hardware() == []
    assert be.calls.get(method, 0) > calls


def test_disabling_huge_pages_needs_page_aligned_areas() -> None:
    ctx, _ = make_ctx()
    ioas = ctx.ioas_alloc()
    ctx.ioas_map(ioas, 0x10, 0x100, RW | FIXED, iova=0x10000)
    rejected(ctx, "EADDRINUSE", lambda: ctx.option(HUGE, SET, ioas, 0))
    ctx.ioas_unmap(ioas, 0, U64_MAX)
    assert ctx.option(HUGE, SET, ioas, 0) == 0
    rejected(ctx, "EINVAL", lambda: ctx.ioas_map(ioas, 0, 0x100, RW))


def test_user_account_shared_by_two_contexts() -> None:
    from test_iommufd_lib import make_backend

    from pyctl.iommufd import IommufdContext
    from pyctl.iommufd.pinning import PinAccount

    user = PinAccount(limit_pages=600, name="user")
    c1 = IommufdContext(make_backend(), user_account=user)
    c2 = IommufdContext(make_backend(), user_account=user)
    for c in (c1, c2):
        ioas = c.ioas_alloc()
        c.attach(c.bind("nvme0"), ioas)
        c.ioas_map(ioas, 0, MIB, RW)
    # same guest-physical addresses, different VMs: different pages, both charged
    assert user.pinned_pages == 512
    assert c1.pinned_pages() == c2.pinned_pages() == 512
    e = rejected(c2, "ENOMEM", lambda: c2.ioas_map(1, MIB, MIB, RW))
    assert "user limit of 600" in e.message
    c1.ioas_unmap(1, 0, U64_MAX)
    c2.ioas_map(1, MIB, MIB, RW)
    assert user.pinned_pages == 512
