"""Objects by id, DESTROY, devices (bind/attach/replace/detach), HWPT_ALLOC, nesting."""

from __future__ import annotations

import pytest
from test_iommufd_lib import MIB, RW, make_ctx, rejected, snapshot

from pyctl.iommufd import (
    IOMMULAB_INV_ALL,
    NEST_PARENT,
    U64_MAX,
    IommulabHwptData,
    IommulabInvalidateEntry,
)
from pyctl.iommufd.objects import HwptNested, HwptPaging
from pyctl.iommufd.uapi import HwptAllocFlags, HwptDataType, HwptInvalidateDataType

LAB = HwptDataType.IOMMU_HWPT_DATA_IOMMULAB
INV = HwptInvalidateDataType.IOMMU_HWPT_INVALIDATE_DATA_IOMMULAB


def test_ids_are_lowest_free_and_destroy() -> None:
    ctx, _ = make_ctx()
    a, b, c = ctx.ioas_alloc(), ctx.ioas_alloc(), ctx.ioas_alloc()
    assert (a, b, c) == (1, 2, 3)
    ctx.destroy(b)
    assert ctx.ioas_alloc() == 2
    rejected(ctx, "ENOENT", lambda: ctx.destroy(77))
    rejected(ctx, "EINVAL", lambda: ctx.destroy(-1))
    rejected(ctx, "EOPNOTSUPP", lambda: ctx.ioas_alloc(flags=1))


def test_destroy_ebusy_while_in_use() -> None:
    ctx, be = make_ctx()
    ioas = ctx.ioas_alloc()
    dev = ctx.bind("nvme0")
    hwpt = ctx.attach(dev, ioas)
    ctx.ioas_map(ioas, 0, MIB, RW)
    rejected(ctx, "EBUSY", lambda: ctx.destroy(ioas))
    rejected(ctx, "EBUSY", lambda: ctx.destroy(hwpt))
    rejected(ctx, "EBUSY", lambda: ctx.destroy(dev))
    ctx.detach(dev)
    # the automatic HWPT went away with its last device
    assert hwpt not in ctx.objects()
    assert be.query().domains == ()
    ctx.destroy(ioas)
    assert set(ctx.objects()) == {dev}
    ctx.unbind(dev)
    assert ctx.objects() == {}


def test_bind_rules() -> None:
    ctx, be = make_ctx()
    dev = ctx.bind("nvme0")
    # VFIO refuses a second bind with EINVAL (vfio_df_ioctl_bind_iommufd, vfio_df_open)
    rejected(ctx, "EINVAL", lambda: ctx.bind("nvme0"))
    rejected(ctx, "ENOENT", lambda: ctx.bind("nosuch"))
    rejected(ctx, "EINVAL", lambda: ctx.bind(""))
    rejected(ctx, "EINVAL", lambda: ctx.bind(5))  # type: ignore[arg-type]
    assert ctx.get_hw_info(dev).platform == "x86"
    assert {d.device: d.mode for d in be.query().devices}["nvme0"] == "blocked"


def test_attach_reuses_compatible_auto_hwpt() -> None:
    ctx, be = make_ctx()
    ioas = ctx.ioas_alloc()
    d1, d2, d3 = ctx.bind("nvme0"), ctx.bind("edu0"), ctx.bind("wide0")
    h1 = ctx.attach(d1, ioas)
    assert ctx.attach(d2, ioas) == h1  # same kind of IOMMU: shared domain
    h3 = ctx.attach(d3, ioas)  # different address width: own domain
    assert h3 != h1
    assert {d.device: d.domain for d in be.query().devices if d.mode == "domain"} == {
        "nvme0": h1,
        "edu0": h1,
        "wide0": h3,
    }
    assert ctx.check_hardware() == []


def test_replace_moves_device_between_ioas_atomically() -> None:
    ctx, be = make_ctx()
    a, b = ctx.ioas_alloc(), ctx.ioas_alloc()
    dev = ctx.bind("nvme0")
    ctx.attach(dev, a)
    ia = ctx.ioas_map(a, 0x1000_0000, MIB, RW)
    ib = ctx.ioas_map(b, 0x2000_0000, MIB, RW | 1, iova=ia)
    assert be.translate("nvme0", ia, "read").addr == 0x1000_0000
    hb = ctx.replace(dev, b)
    assert be.translate("nvme0", ib, "read").addr == 0x2000_0000
    # device reservations moved with it
    assert ctx.reserved(a) == []
    assert (0xFEE00000, 0xFEEFFFFF) in ctx.reserved(b)
    assert hb in ctx.objects()
    assert ctx.check_hardware() == []
    # replace into a target whose reservation hits a mapping: nothing changes
    c = ctx.ioas_alloc()
    ctx.ioas_map(c, 0, MIB, RW | 1, iova=0xFEE00000)
    rejected(ctx, "EADDRINUSE", lambda: ctx.replace(dev, c))
    assert be.translate("nvme0", ib, "read").addr == 0x2000_0000


def test_attach_errors() -> None:
    ctx, _ = make_ctx()
    ioas = ctx.ioas_alloc()
    dev = ctx.bind("nvme0")
    rejected(ctx, "ENOENT", lambda: ctx.attach(dev, 99))
    rejected(ctx, "ENOENT", lambda: ctx.attach(99, ioas))
    rejected(ctx, "EINVAL", lambda: ctx.attach(dev, dev))  # a DEVICE is no page table
    # not attached: VFIO's DETACH_IOMMUFD_PT succeeds and changes nothing
    # (vfio_iommufd_physical_detach_ioas)
    before = snapshot(ctx)
    ctx.detach(dev)
    assert snapshot(ctx) == before
    wide = ctx.bind("wide0")
    hw = ctx.attach(wide, ioas)
    rejected(ctx, "EINVAL", lambda: ctx.attach(dev, hw))  # incompatible HWPT


def test_hwpt_alloc_paging_and_user_hwpt_survives_detach() -> None:
    ctx, be = make_ctx()
    ioas = ctx.ioas_alloc()
    dev = ctx.bind("nvme0")
    ctx.ioas_map(ioas, 0, MIB, RW)
    hwpt = ctx.hwpt_alloc(dev, ioas, NEST_PARENT)
    obj = ctx.objects()[hwpt]
    assert isinstance(obj, HwptPaging) and obj.nest_parent and not obj.auto
    # mappings are mirrored into the new domain at once
    assert be.query().domains[0].mappings[0].size == MIB
    assert ctx.attach(dev, hwpt) == hwpt
    ctx.detach(dev)
    assert hwpt in ctx.objects()  # user-allocated: stays until DESTROY
    rejected(ctx, "EBUSY", lambda: ctx.destroy(ioas))
    ctx.destroy(hwpt)
    assert be.query().domains == ()
    ctx.destroy(ioas)


@pytest.mark.parametrize(
    ("flags", "data_type", "data", "errno"),
    [
        (int(HwptAllocFlags.IOMMU_HWPT_ALLOC_DIRTY_TRACKING), 0, None, "EOPNOTSUPP"),
        (1 << 10, 0, None, "EOPNOTSUPP"),
        (0, 0, IommulabHwptData(0), "EINVAL"),  # data with DATA_NONE
        (0, LAB, None, "EINVAL"),  # type without data
        (0, LAB, IommulabHwptData(0), "EOPNOTSUPP"),  # paging takes no driver data
    ],
)
def test_hwpt_alloc_paging_errors(
    flags: int, data_type: int, data: IommulabHwptData | None, errno: str
) -> None:
    ctx, _ = make_ctx()
    ioas = ctx.ioas_alloc()
    dev = ctx.bind("nvme0")
    rejected(ctx, errno, lambda: ctx.hwpt_alloc(dev, ioas, flags, data_type, data))


def test_nested_hwpt_translation_and_invalidate() -> None:
    ctx, be = make_ctx()
    ioas = ctx.ioas_alloc()
    dev = ctx.bind("nvme0")
    # stage 2: IPA 0..16M -> host 0x4000_0000.. ; the table lives at IPA 0x10000
    ctx.ioas_map(ioas, 0x4000_0000, 16 * MIB, RW | 1, iova=0)
    parent = ctx.hwpt_alloc(dev, ioas, NEST_PARENT)
    be.guest_write_stage1(0x10000, 0xA000_0000, 0x2000, 0x100000)
    nested = ctx.hwpt_alloc(dev, parent, 0, LAB, IommulabHwptData(s1_root=0x10000))
    assert isinstance(ctx.objects()[nested], HwptNested)
    assert ctx.attach(dev, nested) == nested
    t = be.translate("nvme0", 0xA000_1010, "write")
    assert t.allowed and t.addr == 0x4000_0000 + 0x101010
    # the guest changes stage 1: invisible until HWPT_INVALIDATE
    be.guest_write_stage1(0x10000, 0xB000_0000, 0x1000, 0x200000, write=False)
    assert not be.translate("nvme0", 0xB000_0000, "read").allowed
    n = ctx.hwpt_invalidate(nested, INV, [IommulabInvalidateEntry(0xB000_0000, 0x1000)])
    assert n == 1
    assert be.translate("nvme0", 0xB000_0000, "read").addr == 0x4020_0000
    w = be.translate("nvme0", 0xB000_0000, "write")
    assert not w.allowed and (w.stage, w.reason) == ("stage1", "permission")
    be.guest_clear_stage1(0x10000, 0xA000_0000, 0x2000)
    assert ctx.hwpt_invalidate(nested, INV, [IommulabInvalidateEntry(flags=IOMMULAB_INV_ALL)])
    assert be.translate("nvme0", 0xA000_0000, "read").reason == "not-present"
    # parent cannot go while the nested HWPT exists
    rejected(ctx, "EBUSY", lambda: ctx.destroy(parent))
    rejected(ctx, "EBUSY", lambda: ctx.destroy(nested))
    ctx.detach(dev)
    ctx.destroy(nested)
    ctx.destroy(parent)
    assert be.query().domains == ()


def test_nested_alloc_validation() -> None:
    ctx, _ = make_ctx()
    ioas = ctx.ioas_alloc()
    dev = ctx.bind("nvme0")
    plain = ctx.hwpt_alloc(dev, ioas)
    parent = ctx.hwpt_alloc(dev, ioas, NEST_PARENT)
    good = IommulabHwptData(0x1000)
    rejected(ctx, "EINVAL", lambda: ctx.hwpt_alloc(dev, plain, 0, LAB, good))  # no NEST_PARENT
    rejected(ctx, "EINVAL", lambda: ctx.hwpt_alloc(dev, parent, 0, LAB, IommulabHwptData(0x1001)))
    rejected(ctx, "EINVAL", lambda: ctx.hwpt_alloc(dev, parent, 0, LAB, IommulabHwptData(0, 57)))
    rejected(
        ctx, "EINVAL", lambda: ctx.hwpt_alloc(dev, parent, 0, LAB, IommulabHwptData(U64_MAX + 1))
    )
    rejected(ctx, "EOPNOTSUPP", lambda: ctx.hwpt_alloc(dev, parent, NEST_PARENT, LAB, good))
    rejected(ctx, "EOPNOTSUPP", lambda: ctx.hwpt_alloc(dev, parent, 0, 1, good))  # VTD_S1
    # a pt_id that names nothing is EINVAL in iommufd_hwpt_alloc (not ENOENT)
    rejected(ctx, "EINVAL", lambda: ctx.hwpt_alloc(dev, 99))
    rejected(ctx, "EINVAL", lambda: ctx.hwpt_alloc(dev, dev))
    ppc = ctx.bind("/machine/peripheral/nvme-ppc")
    rejected(ctx, "EOPNOTSUPP", lambda: ctx.hwpt_alloc(ppc, parent, 0, LAB, good))
    wide = ctx.bind("wide0")  # a 57-bit IOMMU cannot nest on a 48-bit parent
    rejected(ctx, "EINVAL", lambda: ctx.hwpt_alloc(wide, parent, 0, LAB, good))
    auto = ctx.attach(dev, ioas)
    rejected(ctx, "EINVAL", lambda: ctx.hwpt_alloc(dev, auto, 0, LAB, good))


def test_invalidate_validation_is_all_or_nothing() -> None:
    ctx, be = make_ctx()
    ioas = ctx.ioas_alloc()
    dev = ctx.bind("nvme0")
    parent = ctx.hwpt_alloc(dev, ioas, NEST_PARENT)
    nested = ctx.hwpt_alloc(dev, parent, 0, LAB, IommulabHwptData(0x1000))
    before = be.calls.get("invalidate", 0)
    good = IommulabInvalidateEntry(0, 0x1000)
    cases = [
        ([good, IommulabInvalidateEntry(0x10, 0x1000)], "EINVAL", 1),
        ([good, good, IommulabInvalidateEntry(flags=4)], "EOPNOTSUPP", 2),
        ([IommulabInvalidateEntry(0x1000, 0, IOMMULAB_INV_ALL)], "EINVAL", 0),
        ([IommulabInvalidateEntry(1 << 48, 0x1000)], "EINVAL", 0),
        ([good, "x"], "EINVAL", 1),
    ]
    for entries, errno, idx in cases:
        e = rejected(ctx, errno, lambda en=entries: ctx.hwpt_invalidate(nested, INV, en))  # type: ignore[misc]
        assert e.data["entry_num"] == idx
    rejected(ctx, "EINVAL", lambda: ctx.hwpt_invalidate(nested, 0, [good]))
    rejected(ctx, "EINVAL", lambda: ctx.hwpt_invalidate(parent, INV, [good]))
    rejected(ctx, "ENOENT", lambda: ctx.hwpt_invalidate(99, INV, [good]))
    assert be.calls.get("invalidate", 0) == before
    assert ctx.hwpt_invalidate(nested, INV, []) == 0


def test_device_faults_and_blocked_default() -> None:
    ctx, be = make_ctx()
    dev = ctx.bind("nvme0")
    t = be.dma("nvme0", 0x1000, "read")
    assert not t.allowed and (t.stage, t.reason) == ("device", "blocked")
    ioas = ctx.ioas_alloc()
    ctx.attach(dev, ioas)
    iova = ctx.ioas_map(ioas, 0, MIB, 4)  # read-only
    assert be.dma("nvme0", iova, "read").allowed
    assert be.dma("nvme0", iova, "write").reason == "permission"
    assert be.dma("nvme0", 1 << 48, "read").reason == "address-size"
    faults = be.faults(clear=True)
    assert [(f.stage, f.reason) for f in faults] == [
        ("device", "blocked"),
        ("stage2", "permission"),
        ("stage2", "address-size"),
    ]
    assert be.faults() == []
    ctx.unbind(dev)
    assert be.dma("nvme0", iova, "read").reason == "blocked"


@pytest.mark.parametrize("method", ["domain_alloc", "attach", "map"])
def test_attach_hardware_failure_leaves_nothing_behind(method: str) -> None:
    ctx, be = make_ctx()
    ioas = ctx.ioas_alloc()
    ctx.ioas_map(ioas, 0, MIB, RW)
    dev = ctx.bind("nvme0")
    be.fail_next = method
    rejected(ctx, "EIO", lambda: ctx.attach(dev, ioas))
    assert be.fail_next is None  # the failure was consumed: the call reached it
    assert ctx.pinned_pages() == 0
    ctx.attach(dev, ioas)
    assert ctx.check_hardware() == []
