"""PPC64 iommufd on a real pseries (qtest, no guest): the model's PPC64 domains over QMP.

edu0 is on PHB 0, edu1 and edu2 on PHB 1 (one PE).  DMA by edu0 lands where
the model's TCEs point, faults elsewhere; BLOCKED faults everything and
attaching again restores; seeded random sequences of the model's operations
leave every window's TCEs, read back, equal to what the model holds.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import qemu_binary
from ppc64_ops import random_step
from testvm import needs_ppc64

from pyctl.iommufd import IommufdContext, IommufdError
from pyctl.iommufd.ppc64 import (
    IOMMU_HW_INFO_TYPE_PPC64,
    Ppc64DmaWindow,
)
from pyctl.iommufd.ppc64 import (
    IOMMU_HWPT_DATA_PPC64_DMA_WINDOW as PPC64_WIN,
)
from pyctl.iommufd.ppc64_domain import HwptPpc64
from pyctl.iommufd.spapr_qmp import SpaprQmpBackend
from pyctl.qemu.pseries_qtest import DMA_PAGE, EDU_BUF, PseriesQtest
from pyctl.vfio import VfioContainer
from pyctl.vfio.uapi import VFIO_DMA_MAP_FLAG_READ as RD
from pyctl.vfio.uapi import VFIO_DMA_MAP_FLAG_WRITE as WR
from pyctl.vfio.uapi import VFIO_SPAPR_TCE_v2_IOMMU

pytestmark = needs_ppc64

DDW = 1 << 59
RW, R, FIXED = 6, 4, 1


@pytest.fixture
def lab() -> Iterator[tuple[PseriesQtest, SpaprQmpBackend]]:
    vm = PseriesQtest(
        qemu_binary("ppc64"),
        [
            "-device", "spapr-pci-host-bridge,index=1,id=phb1",
            "-device", "edu,id=edu1,bus=phb1.0,addr=04.0,dma_mask=0xffffffffffffffff",
            "-device", "edu,id=edu2,bus=phb1.0,addr=05.0,dma_mask=0xffffffffffffffff",
        ],
    )  # fmt: skip
    try:
        yield vm, SpaprQmpBackend(vm.qmp)
    finally:
        vm.close()


def faults(vm: PseriesQtest) -> list[tuple[int, str, str]]:
    f = vm.cmd("x-iommulab-query-faults", clear=True)
    return [(x["iova"], x["access"], x["reason"]) for x in f["faults"]]


def test_hw_info_is_the_devices_answer(lab: tuple[PseriesQtest, SpaprQmpBackend]) -> None:
    vm, be = lab
    ctx = IommufdContext(be)
    hi = ctx.get_hw_info(ctx.bind("edu1"), IOMMU_HW_INFO_TYPE_PPC64)
    pe = vm.cmd("x-iommulab-query-hw-info", device="edu1")["spapr-pe"]
    host = pe["host-windows"]
    assert hi.pe == pe["phb"] == 1
    assert (hi.tce32_start, hi.tce32_size) == (
        pe["default-window"]["start"], pe["default-window"]["size"])  # fmt: skip
    assert hi.page_shifts() == host["page-shifts"]
    assert (hi.max_tces, hi.put_tces_max) == (host["max-tces"], host["put-tces-max"])
    assert (hi.dma64_offset, hi.max_levels) == (pe["dma64-offset"], pe["levels"])
    assert hi.max_dynamic_windows_supported == pe["max-windows"]


def test_dma_lands_where_the_tces_point(lab: tuple[PseriesQtest, SpaprQmpBackend]) -> None:
    vm, be = lab
    ctx = IommufdContext(be)
    d0 = ctx.bind("edu0")
    ioas = ctx.ioas_alloc()
    h = ctx.hwpt_alloc(d0, ioas, 0, PPC64_WIN, Ppc64DmaWindow(1 << 28, 12))
    ctx.hwpt_window_add(h, Ppc64DmaWindow(1 << 30, 16))
    ctx.ioas_map(ioas, DMA_PAGE, 0x4000, RW | FIXED, iova=0x10000)
    ctx.ioas_map(ioas, DMA_PAGE + 0x10000, 0x10000, R | FIXED, iova=DDW)
    ctx.attach(d0, h)
    phb0 = be.pe_windows(0)
    assert [(w.start, w.size, w.page_shift, w.owner) for w in phb0] == [
        (0, 1 << 28, 12, "host"), (DDW, 1 << 30, 16, "host")]  # fmt: skip
    assert ctx.check_tces() == []
    bar = vm.edu_setup()
    data = bytes((i * 13 + 1) & 0xFF for i in range(4096))
    vm.qt.memwrite(DMA_PAGE, data)
    faults(vm)
    vm.edu_dma(bar, 0x10000, EDU_BUF, 4096, to_memory=False)
    vm.edu_dma(bar, EDU_BUF, 0x11000, 4096, to_memory=True)
    assert vm.qt.memread(DMA_PAGE + 0x1000, 4096) == data
    assert faults(vm) == []
    # a write through the read-only TCE and a read of an unmapped IOVA touch nothing
    vm.qt.memset(DMA_PAGE + 0x10000, 4096, 0x55)
    vm.edu_dma(bar, EDU_BUF, DDW, 64, to_memory=True)
    vm.edu_dma(bar, 0x20000, EDU_BUF, 64, to_memory=False)
    assert vm.qt.memread(DMA_PAGE + 0x10000, 4096) == b"\x55" * 4096
    assert faults(vm) == [(DDW, "write", "permission"), (0x20000, "read", "not-present")]
    # BLOCKED: everything faults, windows and TCEs kept; attach again restores
    ctx.detach(d0)
    assert be.pe_blocked(0) and be.pe_windows(0) == phb0
    vm.edu_dma(bar, 0x10000, EDU_BUF, 64, to_memory=False)
    assert faults(vm) == [(0x10000, "read", "blocked")]
    ctx.attach(d0, h)
    assert not be.pe_blocked(0)
    vm.qt.memset(DMA_PAGE + 0x2000, 4096, 0)
    vm.edu_dma(bar, 0x10000, EDU_BUF, 4096, to_memory=False)  # the refused read zeroed it
    vm.edu_dma(bar, EDU_BUF, 0x12000, 4096, to_memory=True)
    assert vm.qt.memread(DMA_PAGE + 0x2000, 4096) == data
    # unmap: the TCE is gone on the device
    ctx.ioas_unmap(ioas, 0x10000, 0x4000)
    vm.edu_dma(bar, 0x10000, EDU_BUF, 64, to_memory=False)
    assert faults(vm) == [(0x10000, "read", "not-present")]
    assert ctx.check_tces() == []


def test_two_pes_stay_separate(lab: tuple[PseriesQtest, SpaprQmpBackend]) -> None:
    _, be = lab
    ctx = IommufdContext(be)
    d0, d1, d2 = ctx.bind("edu0"), ctx.bind("edu1"), ctx.bind("edu2")
    i0, i1 = ctx.ioas_alloc(), ctx.ioas_alloc()
    h0 = ctx.hwpt_alloc(d0, i0, 0, PPC64_WIN, Ppc64DmaWindow(1 << 28, 12))
    h1 = ctx.hwpt_alloc(d1, i1, 0, PPC64_WIN, Ppc64DmaWindow(1 << 24, 12))
    with pytest.raises(IommufdError) as e:
        ctx.attach(d2, h0)  # another PE's domain
    assert e.value.errno == "EINVAL"
    ctx.attach(d0, h0)
    ctx.attach(d1, h1)
    ctx.attach(d2, h1)  # edu2 shares edu1's PE and domain
    ctx.ioas_map(i0, DMA_PAGE, 0x1000, RW | FIXED, iova=0x1000)
    ctx.ioas_map(i1, DMA_PAGE + 0x1000, 0x1000, R | FIXED, iova=0x1000)
    assert be.read_pe_tces(0, be.pe_windows(0)[0].slot, 1, 1) == [DMA_PAGE | 3]
    assert be.read_pe_tces(1, be.pe_windows(1)[0].slot, 1, 1) == [(DMA_PAGE + 0x1000) | 1]
    ctx.detach(d1)
    assert not be.pe_blocked(1)  # edu2 still holds the PE's domain
    ctx.detach(d2)
    assert be.pe_blocked(1) and not be.pe_blocked(0)
    assert ctx.check_tces() == []


def test_bad_input_over_qmp_changes_nothing(lab: tuple[PseriesQtest, SpaprQmpBackend]) -> None:
    vm, be = lab
    ctx = IommufdContext(be)
    d0 = ctx.bind("edu0")
    ioas = ctx.ioas_alloc()
    h = ctx.hwpt_alloc(d0, ioas, 0, PPC64_WIN, Ppc64DmaWindow(1 << 28, 12))
    ctx.attach(d0, h)
    before = vm.cmd("x-iommulab-spapr-query-phbs")
    # guest RAM is 512 MiB: a TCE beyond it is refused by the device (EIO), nothing written
    with pytest.raises(IommufdError) as e:
        ctx.ioas_map(ioas, 1 << 34, 0x1000, RW | FIXED, iova=0x1000)
    assert e.value.errno == "EIO" and "tces" in e.value.message
    for bad, errno in (
        (Ppc64DmaWindow(1 << 28, 13), "EINVAL"),
        (Ppc64DmaWindow(3 << 28, 12), "EINVAL"),
        (Ppc64DmaWindow(1 << 28, 12, levels=9), "EINVAL"),
        (Ppc64DmaWindow(1 << 28, 12, bus_offset=0), "EEXIST"),
    ):
        with pytest.raises(IommufdError) as e:
            ctx.hwpt_window_add(h, bad)
        assert e.value.errno == errno
    assert vm.cmd("x-iommulab-spapr-query-phbs") == before
    assert ctx.areas(ioas) == [] and ctx.check_tces() == []


# ---------------------------------------------------------------- property test


def run_sequence(ctx: IommufdContext, seed: int, steps: int, check: Callable[[], None]) -> int:
    rng = random.Random(seed)
    st: dict[str, Any] = {
        "devs": [ctx.bind(n) for n in ("edu0", "edu1", "edu2")],
        "ioases": [ctx.ioas_alloc(), ctx.ioas_alloc()],
        "hwpts": [],
    }
    refused = 0
    for i in range(steps):
        try:
            what = random_step(rng, ctx, st)
        except IommufdError as e:
            # the model refuses before the device could: the device never has to
            assert e.errno != "EIO", f"seed {seed} step {i}: {e}"
            what, refused = f"refused {e.errno}", refused + 1
        problems = ctx.check_tces()
        assert problems == [], f"seed {seed} step {i} ({what}): {problems}"
        check()
    return refused


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_sequences_model_equals_device(
    lab: tuple[PseriesQtest, SpaprQmpBackend], seed: int
) -> None:
    _, be = lab
    ctx = IommufdContext(be)

    def windows_match() -> None:
        # every host window of a PE is exactly the live domain's windows
        for pe in (0, 1):
            have = {(w.start, w.size, w.page_shift) for w in be.pe_windows(pe)
                    if w.owner == "host"}  # fmt: skip
            live = [o for o in ctx.objects().values()
                    if isinstance(o, HwptPpc64) and o.pe == pe and o.t.live]  # fmt: skip
            if live:
                assert have == {(w.start, w.size, w.page_shift) for w in live[0].t.windows}

    refused = run_sequence(ctx, seed, 80, windows_match)
    assert refused < 50  # most steps do something


# ---------------------------------------------------------------- the same through VFIO
@pytest.mark.parametrize("seed", [4, 5])
def test_random_vfio_spapr_sequences_equal_device(
    lab: tuple[PseriesQtest, SpaprQmpBackend], seed: int
) -> None:
    """Random VFIO sPAPR TCE v2 calls on a container of both PEs; after every call
    each PE's windows and TCEs, read back, equal an oracle of the kernel's rules."""
    _, be = lab
    rng = random.Random(seed)
    c = VfioContainer(IommufdContext(be))
    c.group_set_container(["edu0"])
    c.group_set_container(["edu1", "edu2"])
    c.set_iommu(VFIO_SPAPR_TCE_v2_IOMMU)
    c.iommu_spapr_register_memory(0x1000000, 0x1000000)
    oracle: dict[int, dict[int, int]] = {0: {}}  # window start -> index -> TCE
    shifts = {0: 12}
    done = 0
    for i in range(60):
        op = rng.choice(["create", "remove", "map", "map", "map", "unmap", "unmap"])
        start = rng.choice(sorted(oracle)) if oracle else None
        try:
            if op == "create" or start is None:
                ps = rng.choice([12, 16])
                s = c.iommu_spapr_tce_create(ps, 1 << 24, 1)
                oracle[s], shifts[s] = {}, ps
            elif op == "remove":
                c.iommu_spapr_tce_remove(start)
                del oracle[start]
            elif op == "map":
                page = 1 << shifts[start]
                n = rng.randint(1, 3)
                idx = rng.randrange(0, 64)
                va = 0x1000000 + page * rng.randrange(0, 16)
                fl = rng.choice([RD, WR, RD | WR])
                c.iommu_map_dma(va, start + idx * page, n * page, fl)
                perm = (1 if fl & RD else 0) | (2 if fl & WR else 0)
                oracle[start].update({idx + k: (va + k * page) | perm for k in range(n)})
            else:
                page = 1 << shifts[start]
                idx, n = rng.randrange(0, 64), rng.randint(1, 8)
                c.iommu_unmap_dma(start + idx * page, n * page)
                for k in range(idx, idx + n):
                    oracle[start].pop(k, None)
            done += 1
        except IommufdError as e:
            assert e.errno in ("EEXIST", "ENOSPC", "EINVAL"), f"seed {seed} step {i}: {e}"
        for pe in (0, 1):
            wins = {w.start: w for w in be.pe_windows(pe)}
            assert sorted(wins) == sorted(oracle), f"seed {seed} step {i} PE {pe}"
            for s, w in wins.items():
                got = be.read_pe_tces(pe, w.slot, 0, w.entries)
                assert {k: t for k, t in enumerate(got) if t} == oracle[s], f"step {i} {op}"
    assert done > 30


# ---------------------------------------------------------------- the guest's windows
def _buid(vm: PseriesQtest, phb: int) -> list[int]:
    buid = int(vm.phb(phb)["buid"])
    return [0, buid >> 32, buid & 0xFFFFFFFF]


def test_guest_windows_coexist_and_show_in_the_model(
    lab: tuple[PseriesQtest, SpaprQmpBackend],
) -> None:
    vm, be = lab
    ctx = IommufdContext(be)
    d0, d1 = ctx.bind("edu0"), ctx.bind("edu1")
    ioas = ctx.ioas_alloc()
    h = ctx.hwpt_alloc(d0, ioas, 0, PPC64_WIN, Ppc64DmaWindow(1 << 24, 16, bus_offset=DDW))
    ctx.attach(d0, h)
    ctx.ioas_map(ioas, DMA_PAGE, 0x10000, RW | FIXED, iova=DDW)
    # the guest's DDW on PHB 1 (RTAS), beside the host's domain on PHB 0
    r = vm.rtas("ibm,create-pe-dma-window", [*_buid(vm, 1), 16, 28], 4)
    assert r[0] == 0
    changes = ctx.process_window_events()
    assert [c.kind for c in changes] == ["created"]
    wins = ctx.pe_windows(d1)
    guest = [w for w in wins if w.owner == "guest"]
    assert [(w.start, w.size, w.page_shift) for w in guest] == [(DDW, 1 << 28, 16)]
    assert [(w.start, w.owner) for w in ctx.pe_windows(d0)] == [(DDW, "host")]
    # read-only to the host side: a domain whose window would overlap it is refused
    i1 = ctx.ioas_alloc()
    h1 = ctx.hwpt_alloc(d1, i1, 0, PPC64_WIN, Ppc64DmaWindow(1 << 24, 16, bus_offset=DDW))
    with pytest.raises(IommufdError) as e:
        ctx.attach(d1, h1)
    assert e.value.errno == "EBUSY" and "guest" in e.value.message
    assert ctx.pe_windows(d1) == wins
    # the guest resetting PHB 0 takes its PE back: the model's domain is live no more
    assert vm.rtas("ibm,reset-pe-dma-window", _buid(vm, 0), 1) == [0]
    ctx.process_window_events()
    assert ctx.check_tces() == []
    assert not any(w.owner == "host" and w.start == DDW for w in ctx.pe_windows(d0))
    ctx.detach(d0)
    ctx.attach(d0, h)  # set again, TCEs and all
    assert ctx.check_tces() == []
    assert [w.start for w in ctx.pe_windows(d0) if w.owner == "host"] == [DDW]


def test_the_model_owns_the_phbs_it_drives(lab: tuple[PseriesQtest, SpaprQmpBackend]) -> None:
    vm, be = lab
    ctx = IommufdContext(be)
    d0 = ctx.bind("edu0")
    ioas = ctx.ioas_alloc()
    h = ctx.hwpt_alloc(d0, ioas, 0, PPC64_WIN, Ppc64DmaWindow(1 << 24, 12))
    ctx.attach(d0, h)
    path = vm.phb(0)["path"]
    owner = vm.cmd("x-iommulab-query-owner", device=path)
    assert owner.get("owner") and owner["connected"]
    assert "owner" not in vm.cmd("x-iommulab-query-owner", device=vm.phb(1)["path"])
    # another control plane (no token) cannot write the PE's TCEs
    liobn = be.pe_windows(0)[0].liobn
    with pytest.raises(Exception, match="own"):
        vm.cmd("x-iommulab-spapr-put-tces", liobn=liobn, start=0, tces=[DMA_PAGE | 3])
    ctx.ioas_map(ioas, DMA_PAGE, 0x1000, RW | FIXED, iova=0)
    assert ctx.check_tces() == []
    be.close()
    assert "owner" not in vm.cmd("x-iommulab-query-owner", device=path)
