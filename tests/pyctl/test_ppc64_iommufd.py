"""PPC64 paging domains on the in-memory PEs: hw info, windows as HWPT data, IOAS maps as
TCEs, the native BLOCKED domain, several PEs (issue 13 items 1-5)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from test_iommufd_lib import GIB, RW, R, W, rejected

from pyctl.iommufd import U64_MAX, DeviceHwInfo, InMemoryBackend, IommufdContext, SpaprPeInfo
from pyctl.iommufd.ppc64 import (
    IOMMU_HW_INFO_TYPE_PPC64,
    Ppc64DmaWindow,
)
from pyctl.iommufd.ppc64 import (
    IOMMU_HWPT_DATA_PPC64_DMA_WINDOW as PPC64_WIN,
)
from pyctl.iommufd.ppc64_hw import TCE_READ, TCE_WRITE

FIXED = 1
DDW = 1 << 59
A, B, C = "/machine/peripheral/a", "/machine/peripheral/b", "/machine/peripheral/c"


def pe(phb: int) -> SpaprPeInfo:
    return SpaprPeInfo(
        0, GIB, (12, 16, 21, 24), 2, 1 << 24, 1, phb=phb, dma64_offset=DDW,
        host_page_shifts=(12, 16, 24), host_max_tces=1 << 20, put_tces_max=1000,
    )  # fmt: skip


def setup() -> tuple[IommufdContext, InMemoryBackend]:
    """A and B on PHB 0 (one PE), C on PHB 1."""
    devs = [DeviceHwInfo(n, "spapr", ias=64, nesting=False, spapr=pe(p))
            for n, p in ((A, 0), (B, 0), (C, 1))]  # fmt: skip
    be = InMemoryBackend(devs)
    return IommufdContext(be), be


def win(size: int = GIB, shift: int = 12, **kw: Any) -> Ppc64DmaWindow:
    return Ppc64DmaWindow(size, shift, **kw)


def tces(be: InMemoryBackend, phb: int) -> dict[int, list[tuple[int, int]]]:
    """Every PE window's valid TCEs, read back: bus start -> [(index, TCE)]."""
    out: dict[int, list[tuple[int, int]]] = {}
    for w in be.pe_windows(phb):
        got = be.read_pe_tces(phb, w.slot, 0, w.entries)
        out[w.start] = [(i, t) for i, t in enumerate(got) if t]
    return out


def pe_state(be: InMemoryBackend) -> Any:
    return [(p, be.pe_windows(p), tces(be, p), be.pe_blocked(p)) for p in (0, 1)]


def unchanged(ctx: IommufdContext, be: InMemoryBackend, errno: str, fn: Callable[[], Any]) -> str:
    before = pe_state(be)
    e = rejected(ctx, errno, fn)
    assert pe_state(be) == before
    return e.message


def test_hw_info_is_the_devices_report() -> None:
    ctx, _ = setup()
    d = ctx.bind(A)
    hi = ctx.get_hw_info(d, IOMMU_HW_INFO_TYPE_PPC64)
    assert (hi.tce32_start, hi.tce32_size, hi.pe) == (0, GIB, 0)
    assert hi.page_shifts() == [12, 16, 24]  # host side's, not the guest policy's
    assert (hi.max_dynamic_windows_supported, hi.max_levels) == (2, 1)
    assert (hi.max_tces, hi.dma64_offset, hi.put_tces_max) == (1 << 20, DDW, 1000)
    assert ctx.get_hw_info(d).platform == "spapr"
    x86 = InMemoryBackend([DeviceHwInfo("x", "x86")])
    c2 = IommufdContext(x86)
    x = c2.bind("x")
    rejected(c2, "EOPNOTSUPP", lambda: c2.get_hw_info(x, IOMMU_HW_INFO_TYPE_PPC64))


def test_window_bad_input_names_argument_and_changes_nothing() -> None:
    ctx, be = setup()
    d = ctx.bind(A)
    ioas = ctx.ioas_alloc()
    objs = ctx.objects()

    def alloc(w: object) -> Callable[[], Any]:
        return lambda: ctx.hwpt_alloc(d, ioas, 0, PPC64_WIN, w)  # type: ignore[arg-type]

    assert "page_shift" in unchanged(ctx, be, "EINVAL", alloc(win(GIB, 21)))  # not offered
    assert "window_size" in unchanged(ctx, be, "EINVAL", alloc(win(3 << 20)))  # not pow2
    assert "window_size" in unchanged(ctx, be, "EINVAL", alloc(win(1 << 12, 16)))  # < page
    assert "max_tces" in unchanged(ctx, be, "EINVAL", alloc(win(1 << 33)))  # 2^21 TCEs
    assert "levels" in unchanged(ctx, be, "EINVAL", alloc(win(levels=2)))
    assert "levels" in unchanged(ctx, be, "EINVAL", alloc(win(levels=0)))
    assert "bus_offset" in unchanged(ctx, be, "EINVAL", alloc(win(bus_offset=1 << 40)))
    unchanged(ctx, be, "EINVAL", alloc("big"))
    unchanged(ctx, be, "EINVAL", alloc(win("big")))  # type: ignore[arg-type]
    unchanged(ctx, be, "EOPNOTSUPP", lambda: ctx.hwpt_alloc(d, ioas, 1, PPC64_WIN, win()))
    assert ctx.objects() == objs
    h = ctx.hwpt_alloc(d, ioas, 0, PPC64_WIN, win())
    assert "overlaps" in unchanged(
        ctx, be, "EEXIST", lambda: ctx.hwpt_window_add(h, win(1 << 20, bus_offset=0))
    )
    ctx.hwpt_window_add(h, win(1 << 32, 16))
    unchanged(ctx, be, "ENOSPC", lambda: ctx.hwpt_window_add(h, win(1 << 20)))
    unchanged(ctx, be, "ENOENT", lambda: ctx.hwpt_window_remove(h, 1 << 40))
    unchanged(ctx, be, "EINVAL", lambda: ctx.hwpt_window_add(ioas, win()))  # not a HWPT


def test_apertures_are_the_iova_ranges_and_maps_become_tces() -> None:
    ctx, be = setup()
    d = ctx.bind(A)
    ioas = ctx.ioas_alloc()
    h = ctx.hwpt_alloc(d, ioas, 0, PPC64_WIN, win())
    assert ctx.ioas_iova_ranges(ioas).ranges == [(0, GIB - 1)]
    # not live yet: the domain holds TCEs, the PE nothing
    iova = ctx.ioas_map(ioas, 0x100000, 0x3000, RW)
    assert 0 < iova < GIB
    assert be.pe_windows(0) == []
    ctx.attach(d, h)
    (w0,) = be.pe_windows(0)
    assert (w0.start, w0.size, w0.page_shift, w0.owner) == (0, GIB, 12, "host")
    i0 = iova >> 12
    rw = TCE_READ | TCE_WRITE
    assert tces(be, 0) == {
        0: [(i0, 0x100000 | rw), (i0 + 1, 0x101000 | rw), (i0 + 2, 0x102000 | rw)]
    }
    assert be.translate(A, iova + 0x1234, "write").addr == 0x101234
    assert be.translate(B, iova, "read").addr == 0x100000  # B shares the PE
    # a second window on the live domain: at the dma64 offset, ranges follow
    ctx.hwpt_window_add(h, win(1 << 32, 16))
    assert ctx.ioas_iova_ranges(ioas).ranges == [(0, GIB - 1), (DDW, DDW + (1 << 32) - 1)]
    ctx.ioas_map(ioas, 0x10000000, 0x20000, R | FIXED, iova=DDW + 0x30000)
    assert tces(be, 0)[DDW] == [(3, 0x10000000 | TCE_READ), (4, 0x10010000 | TCE_READ)]
    assert be.translate(A, DDW + 0x30000, "write").reason == "permission"
    ctx.ioas_map(ioas, 0x200000, 0x1000, W | FIXED, iova=0x20000)
    assert (0x20, 0x200000 | TCE_WRITE) in tces(be, 0)[0]
    assert ctx.check_tces() == [] and ctx.check_hardware() == []
    # unmap clears exactly the area's TCEs
    assert ctx.ioas_unmap(ioas, DDW + 0x30000, 0x20000) == 0x20000
    assert tces(be, 0)[DDW] == []
    assert be.translate(A, DDW + 0x30000, "read").reason == "not-present"
    rejected(ctx, "EBUSY", lambda: ctx.hwpt_window_remove(h, 0))
    ctx.hwpt_window_remove(h, DDW)
    assert [w.start for w in be.pe_windows(0)] == [0]
    assert ctx.ioas_iova_ranges(ioas).ranges == [(0, GIB - 1)]


def test_unfit_maps_are_refused_and_change_nothing() -> None:
    ctx, be = setup()
    d = ctx.bind(A)
    ioas = ctx.ioas_alloc()
    h = ctx.hwpt_alloc(d, ioas, 0, PPC64_WIN, win(GIB, 12))
    ctx.attach(d, h)
    ctx.hwpt_window_add(h, win(1 << 32, 16))
    ctx.ioas_map(ioas, 0, 0x1000, RW | FIXED, iova=0x1000)
    pinned = ctx.pinned_pages()

    def mp(phys: int, length: int, iova: int) -> Callable[[], Any]:
        return lambda: ctx.ioas_map(ioas, phys, length, RW | FIXED, iova=iova)

    unchanged(ctx, be, "EINVAL", mp(0, 0x1000, 2 * GIB))  # outside every window
    unchanged(ctx, be, "EINVAL", mp(0, 0x2000, GIB - 0x1000))  # runs off the window
    assert "iova" in unchanged(ctx, be, "EINVAL", mp(0, 0x10000, DDW + 0x1000))
    assert "length" in unchanged(ctx, be, "EINVAL", mp(0, 0x11000, DDW))
    assert "phys" in unchanged(ctx, be, "EINVAL", mp(0x1000, 0x10000, DDW))
    assert ctx.pinned_pages() == pinned and len(ctx.areas(ioas)) == 1
    # an IOAS holding an area outside a new domain's window refuses the domain
    i2 = ctx.ioas_alloc()
    ctx.ioas_map(i2, 0, 0x1000, RW | FIXED, iova=2 * GIB)
    unchanged(ctx, be, "EADDRINUSE", lambda: ctx.hwpt_alloc(d, i2, 0, PPC64_WIN, win()))


def test_write_failure_mid_map_is_undone() -> None:
    ctx, be = setup()
    d = ctx.bind(A)
    ioas = ctx.ioas_alloc()
    h = ctx.hwpt_alloc(d, ioas, 0, PPC64_WIN, win())
    ctx.attach(d, h)
    before = pe_state(be)
    real = be.put_tces
    calls = {"n": 0}

    def flaky(pe_: int, slot: int, start: int, t: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            from pyctl.iommufd import BackendError

            raise BackendError("injected")
        real(pe_, slot, start, t)

    be.put_tces = flaky  # type: ignore[method-assign]
    # 2500 TCEs: three writes of put_tces_max=1000; the third fails
    rejected(ctx, "EIO", lambda: ctx.ioas_map(ioas, 0, 2500 * 4096, RW | FIXED, iova=0x100000))
    be.put_tces = real  # type: ignore[method-assign]
    assert pe_state(be) == before and ctx.areas(ioas) == [] and ctx.pinned_pages() == 0


def test_copy_writes_the_destination_domains_tces() -> None:
    ctx, be = setup()
    a, c = ctx.bind(A), ctx.bind(C)
    i1, i2 = ctx.ioas_alloc(), ctx.ioas_alloc()
    h1 = ctx.hwpt_alloc(a, i1, 0, PPC64_WIN, win())
    h2 = ctx.hwpt_alloc(c, i2, 0, PPC64_WIN, win(GIB, 16))
    ctx.attach(a, h1)
    ctx.attach(c, h2)
    ctx.ioas_map(i1, 0x400000, 0x20000, RW | FIXED, iova=0x10000)
    ctx.ioas_copy(i2, 0x80000, i1, 0x10000, 0x20000, R | FIXED)
    assert tces(be, 1)[0] == [(8, 0x400000 | TCE_READ), (9, 0x410000 | TCE_READ)]
    # a copy not aligned to the 64 KiB pages of the destination window
    unchanged(ctx, be, "EINVAL", lambda: ctx.ioas_copy(i2, 0xB1000, i1, 0x10000, 0x10000, R | 1))
    assert ctx.check_tces() == []


def test_blocked_domain_and_restore() -> None:
    ctx, be = setup()
    a, b = ctx.bind(A), ctx.bind(B)
    ioas = ctx.ioas_alloc()
    h = ctx.hwpt_alloc(a, ioas, 0, PPC64_WIN, win())
    ctx.hwpt_window_add(h, win(1 << 32, 16))
    ctx.attach(a, h)
    ctx.attach(b, h)
    ctx.ioas_map(ioas, 0x300000, 0x10000, RW | FIXED, iova=DDW)
    live = pe_state(be)
    ctx.detach(a)  # B still attached: the PE keeps its domain
    assert be.dma(B, DDW, "read").allowed
    ctx.detach(b)  # the last device: BLOCKED
    assert be.pe_blocked(0)
    t = be.dma(B, DDW, "read")
    assert (t.allowed, t.reason) == (False, "blocked")
    assert be.faults()[-1].reason == "blocked"
    assert [w.start for w in be.pe_windows(0)] == [0, DDW]  # kept untouched
    ctx.attach(b, h)
    assert pe_state(be) == live
    assert be.dma(A, DDW + 0x40, "write").addr == 0x300040


def test_replace_swaps_windows_and_back_restores_exactly() -> None:
    ctx, be = setup()
    a = ctx.bind(A)
    i1, i2 = ctx.ioas_alloc(), ctx.ioas_alloc()
    h1 = ctx.hwpt_alloc(a, i1, 0, PPC64_WIN, win())
    ctx.hwpt_window_add(h1, win(1 << 32, 16))
    h2 = ctx.hwpt_alloc(a, i2, 0, PPC64_WIN, win(1 << 24, 12, bus_offset=DDW))
    ctx.ioas_map(i1, 0x500000, 0x10000, RW | FIXED, iova=0x8000_0000 >> 4)
    ctx.ioas_map(i1, 0x600000, 0x20000, R | FIXED, iova=DDW + 0x20000)
    ctx.ioas_map(i2, 0x700000, 0x2000, W | FIXED, iova=DDW + 0x3000)
    ctx.attach(a, h1)
    first = pe_state(be)
    ctx.attach(a, h2)  # replace
    assert [(w.start, w.size) for w in be.pe_windows(0)] == [(DDW, 1 << 24)]
    assert tces(be, 0) == {DDW: [(3, 0x700000 | TCE_WRITE), (4, 0x701000 | TCE_WRITE)]}
    ctx.attach(a, h1)
    assert pe_state(be) == first
    rejected(ctx, "EBUSY", lambda: ctx.destroy(h1))
    ctx.detach(a)
    ctx.destroy(h1)  # a live domain's windows go with it
    assert be.pe_windows(0) == [] and be.pe_blocked(0)


def test_several_pes() -> None:
    ctx, be = setup()
    a, b, c = ctx.bind(A), ctx.bind(B), ctx.bind(C)
    shared = ctx.ioas_alloc()
    ha = ctx.hwpt_alloc(a, shared, 0, PPC64_WIN, win(GIB))
    ctx.hwpt_window_add(ha, win(1 << 32, 16))
    hc = ctx.hwpt_alloc(c, shared, 0, PPC64_WIN, win(1 << 28))
    # one IOAS on both PEs: the intersection of their apertures
    assert ctx.ioas_iova_ranges(shared).ranges == [(0, (1 << 28) - 1)]
    ctx.attach(a, ha)
    ctx.attach(c, hc)
    # B is on A's PE: it must share A's domain
    rejected(ctx, "EINVAL", lambda: ctx.attach(b, hc))
    other = ctx.ioas_alloc()
    hb = ctx.hwpt_alloc(b, other, 0, PPC64_WIN, win())
    rejected(ctx, "EINVAL", lambda: ctx.attach(b, hb))  # A holds the PE's domain
    iova = ctx.ioas_map(shared, 0x900000, 0x2000, RW)
    assert iova < 1 << 28
    for dev in (A, B, C):
        assert be.translate(dev, iova + 8, "read").addr == 0x900008
    # separate IOASes stay independent
    ctx.detach(c)
    solo = ctx.ioas_alloc()
    hs = ctx.hwpt_alloc(c, solo, 0, PPC64_WIN, win(GIB))
    ctx.attach(c, hs)
    assert be.translate(C, iova, "read").reason == "not-present"
    assert be.translate(A, iova, "read").allowed
    ctx.ioas_map(solo, 0xA00000, 0x1000, RW | FIXED, iova=iova)
    assert be.translate(C, iova, "read").addr == 0xA00000
    assert be.translate(A, iova, "read").addr == 0x900000
    assert ctx.check_tces() == []


def test_legacy_paging_auto_domain_still_works_beside() -> None:
    ctx, _ = setup()
    c = ctx.bind(C)
    ioas = ctx.ioas_alloc()
    ctx.attach(c, ioas)  # the pre-existing per-device window path
    assert ctx.ioas_iova_ranges(ioas).ranges == [(0, GIB - 1)]
    assert ctx.ioas_unmap(ioas, 0, U64_MAX) == 0


@pytest.mark.parametrize("shift", [12, 16, 24])
def test_auto_iova_lands_in_a_window(shift: int) -> None:
    ctx, be = setup()
    d = ctx.bind(A)
    ioas = ctx.ioas_alloc()
    wsize = 1 << (shift + 18)
    h = ctx.hwpt_alloc(d, ioas, 0, PPC64_WIN, win(wsize, shift, bus_offset=DDW))
    ctx.attach(d, h)
    size = 1 << (shift + 2)
    iova = ctx.ioas_map(ioas, 1 << 32, size, RW)
    assert iova >= DDW and iova + size <= DDW + wsize
    assert be.translate(A, iova, "read").addr == 1 << 32


def test_pins_follow_the_ioas() -> None:
    ctx, _ = setup()
    d = ctx.bind(A)
    ioas = ctx.ioas_alloc()
    ctx.ioas_map(ioas, 0x100000, 0x3000, RW)
    assert ctx.pinned_pages() == 0  # no domain yet
    h = ctx.hwpt_alloc(d, ioas, 0, PPC64_WIN, win())
    assert ctx.pinned_pages() == 3
    ctx.attach(d, h)
    ctx.ioas_map(ioas, 0x200000, 0x1000, RW)
    assert ctx.pinned_pages() == 4
    ctx.detach(d)
    ctx.destroy(h)
    assert ctx.pinned_pages() == 0


def test_guest_window_in_the_way_and_taken_back() -> None:
    ctx, be = setup()
    c = ctx.bind(C)
    ioas = ctx.ioas_alloc()
    h = ctx.hwpt_alloc(c, ioas, 0, PPC64_WIN, win())
    be.guest_pe_create_window(1, 16, GIB, 0)
    msg = unchanged(ctx, be, "EBUSY", lambda: ctx.attach(c, h))
    assert "guest" in msg
    assert [(w.start, w.owner) for w in ctx.pe_windows(c)] == [(0, "guest")]
    h2 = ctx.hwpt_alloc(c, ioas, 0, PPC64_WIN, win(1 << 24, bus_offset=DDW))
    ctx.attach(c, h2)  # beside the guest's window
    assert [(w.start, w.owner) for w in ctx.pe_windows(c)] == [(0, "guest"), (DDW, "host")]
    # the host side's put-tces cannot touch the guest's window
    from pyctl.iommufd import BackendError

    with pytest.raises(BackendError, match="guest"):
        be.put_tces(1, 0, 0, [0x1003])
    # the hardware drops the host window (as window-reset does): the domain is live no more
    be.pe_remove_window(1, be.pe_windows(1)[1].slot)
    ctx.process_window_events()
    assert ctx.check_tces() == []
    ctx.detach(c)
    ctx.attach(c, h2)
    assert [(w.start, w.owner) for w in ctx.pe_windows(c)] == [(0, "guest"), (DDW, "host")]


def test_replace_moves_the_whole_pe() -> None:
    ctx, be = setup()
    a, b = ctx.bind(A), ctx.bind(B)
    i1, i2 = ctx.ioas_alloc(), ctx.ioas_alloc()
    h1 = ctx.hwpt_alloc(a, i1, 0, PPC64_WIN, win())
    h2 = ctx.hwpt_alloc(a, i2, 0, PPC64_WIN, win(1 << 24, bus_offset=DDW))
    ctx.attach(a, h1)
    ctx.attach(b, h1)
    ctx.ioas_map(i2, 0x700000, 0x1000, RW | FIXED, iova=DDW)
    assert ctx.replace(a, h2) == h2
    objs = ctx.objects()
    assert objs[b].hwpt_id == h2 and objs[h2].devices == {a, b}  # type: ignore[union-attr]
    assert objs[h1].devices == set()  # type: ignore[union-attr]
    assert be.translate(B, DDW, "read").addr == 0x700000
    ctx.destroy(h1)
    assert ctx.check_tces() == []
