"""sPAPR DMA windows in the object model: capabilities, create/remove, guest events."""

from __future__ import annotations

from test_iommufd_lib import GIB, RW, make_ctx, rejected

from pyctl.iommufd import U64_MAX

PPC = "/machine/peripheral/nvme-ppc"
PPC2 = "/machine/peripheral/nvme-ppc2"
DDW = 1 << 59


def test_caps_and_default_window_define_iova_ranges() -> None:
    ctx, _ = make_ctx()
    dev = ctx.bind(PPC)
    caps = ctx.window_caps(dev)
    assert caps.windows_supported == 2 and caps.ddw_offset == DDW
    assert 24 in caps.page_shifts
    ioas = ctx.ioas_alloc()
    ctx.attach(dev, ioas)
    assert ctx.ioas_iova_ranges(ioas).ranges == [(0, GIB - 1)]
    x86 = ctx.bind("nvme0")
    rejected(ctx, "EOPNOTSUPP", lambda: ctx.window_caps(x86))
    rejected(ctx, "EOPNOTSUPP", lambda: ctx.window_create(x86, 12, GIB))


def test_create_64bit_window_then_ranges_are_exactly_the_windows() -> None:
    ctx, be = make_ctx()
    dev = ctx.bind(PPC)
    ioas = ctx.ioas_alloc()
    ctx.attach(dev, ioas)
    w = ctx.window_create(dev, 24, 1 << 36)
    assert (w.start, w.size, w.page_shift) == (DDW, 1 << 36, 24)
    assert ctx.ioas_iova_ranges(ioas).ranges == [(0, GIB - 1), (DDW, DDW + (1 << 36) - 1)]
    # the allocator places big maps in the DDW, and the device translates them
    iova = ctx.ioas_map(ioas, 0, 4 * GIB, RW)
    assert DDW <= iova < DDW + (1 << 36)
    assert be.translate(PPC, iova + 0x1234, "read").addr == 0x1234
    rejected(ctx, "EINVAL", lambda: ctx.ioas_map(ioas, 0, 0x1000, RW | 1, iova=2 * GIB))
    # in-use window cannot be removed
    rejected(ctx, "EBUSY", lambda: ctx.window_remove(dev, w.index))
    ctx.ioas_unmap(ioas, 0, U64_MAX)
    ctx.window_remove(dev, w.index)
    assert ctx.ioas_iova_ranges(ioas).ranges == [(0, GIB - 1)]


def test_window_create_errors() -> None:
    ctx, _ = make_ctx()
    dev = ctx.bind(PPC)
    rejected(ctx, "EINVAL", lambda: ctx.window_create(dev, 13, 1 << 30))  # page size
    rejected(ctx, "EINVAL", lambda: ctx.window_create(dev, 16, 3 << 30))  # not pow2
    rejected(ctx, "EINVAL", lambda: ctx.window_create(dev, 24, 1 << 20))  # < page
    rejected(ctx, "ERANGE", lambda: ctx.window_create(dev, 16, 1 << 41))  # > max
    rejected(ctx, "EINVAL", lambda: ctx.window_create(dev, 16, 1 << 30, offset=0x1000))
    rejected(ctx, "EEXIST", lambda: ctx.window_create(dev, 16, 1 << 30, offset=0))
    rejected(ctx, "EOVERFLOW", lambda: ctx.window_create(dev, 16, 1 << 30, offset=U64_MAX - 0xFFFF))
    rejected(ctx, "EINVAL", lambda: ctx.window_create(dev, 16, "big"))  # type: ignore[arg-type]
    ctx.window_create(dev, 16, 1 << 30, offset=1 << 40)
    rejected(ctx, "ENOSPC", lambda: ctx.window_create(dev, 16, 1 << 30, offset=1 << 50))
    rejected(ctx, "ENOENT", lambda: ctx.window_remove(dev, 7))


def test_window_remove_refused_inside_allowed() -> None:
    ctx, _ = make_ctx()
    dev = ctx.bind(PPC)
    ioas = ctx.ioas_alloc()
    ctx.attach(dev, ioas)
    w = ctx.window_create(dev, 16, 1 << 32)
    ctx.ioas_allow_iovas(ioas, [(DDW, DDW + 0xFFFFFF)])
    rejected(ctx, "EADDRINUSE", lambda: ctx.window_remove(dev, w.index))


def test_guest_window_events_update_model() -> None:
    ctx, be = make_ctx()
    dev = ctx.bind(PPC)
    ioas = ctx.ioas_alloc()
    ctx.attach(dev, ioas)
    win = be.guest_create_window(PPC, 24, 1 << 34, DDW)
    # not applied until the event is processed
    assert ctx.ioas_iova_ranges(ioas).ranges == [(0, GIB - 1)]
    changes = ctx.process_window_events()
    assert [(c.kind, c.window) for c in changes] == [("created", win)]
    assert ctx.ioas_iova_ranges(ioas).ranges[-1] == (DDW, DDW + (1 << 34) - 1)
    iova = ctx.ioas_map(ioas, 0x200000, 1 << 24, RW | 1, iova=DDW)
    low = ctx.ioas_map(ioas, 0, 0x10000, RW)
    be.guest_remove_window(PPC, win.index)
    changes = ctx.process_window_events()
    assert changes[0].kind == "removed" and changes[0].unmapped == [(iova, 1 << 24)]
    assert [a.iova for a in ctx.areas(ioas)] == [low]
    assert ctx.ioas_iova_ranges(ioas).ranges == [(0, GIB - 1)]
    assert ctx.check_hardware() == []
    assert ctx.process_window_events() == []


def test_two_spapr_devices_intersect_their_windows() -> None:
    ctx, _ = make_ctx()
    d1, d2 = ctx.bind(PPC), ctx.bind(PPC2)
    ioas = ctx.ioas_alloc()
    ctx.attach(d1, ioas)
    ctx.attach(d2, ioas)
    ctx.window_create(d1, 16, 1 << 32)
    # d2 has no DDW yet: the IOAS only has the common 32-bit window
    assert ctx.ioas_iova_ranges(ioas).ranges == [(0, GIB - 1)]
    ctx.window_create(d2, 16, 1 << 33)
    assert ctx.ioas_iova_ranges(ioas).ranges == [(0, GIB - 1), (DDW, DDW + (1 << 32) - 1)]


def test_guest_reset_drops_ddw_mappings() -> None:
    ctx, be = make_ctx()
    dev = ctx.bind(PPC)
    ioas = ctx.ioas_alloc()
    ctx.attach(dev, ioas)
    ctx.window_create(dev, 16, 1 << 32)
    high = ctx.ioas_map(ioas, 0, 1 << 20, RW | 1, iova=DDW)
    low = ctx.ioas_map(ioas, 0, 0x10000, RW)
    be.guest_reset_windows(PPC)
    (change,) = ctx.process_window_events()
    assert change.kind == "reset" and change.unmapped == [(high, 1 << 20)]
    assert [a.iova for a in ctx.areas(ioas)] == [low]
    assert ctx.ioas_iova_ranges(ioas).ranges == [(0, GIB - 1)]
    assert ctx.check_hardware() == []
