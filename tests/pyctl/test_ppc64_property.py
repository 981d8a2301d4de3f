"""Seeded random sequences of PPC64 iommufd operations on the in-memory PEs (no QEMU):
after every step the PEs' TCEs equal the model's and every device translates every
mapped IOVA as its IOAS says (or faults: BLOCKED, another domain live)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from pyctl.iommufd import DeviceHwInfo, InMemoryBackend, IommufdContext, IommufdError, SpaprPeInfo
from pyctl.iommufd.ppc64 import IOMMU_HWPT_DATA_PPC64_DMA_WINDOW as PPC64_WIN
from pyctl.iommufd.ppc64 import Ppc64DmaWindow
from pyctl.iommufd.ppc64_domain import HwptPpc64

DDW = 1 << 59
RW, R, W, FIXED = 6, 4, 2, 1
U64_MAX = (1 << 64) - 1


def backend() -> InMemoryBackend:
    def pe(phb: int) -> SpaprPeInfo:
        return SpaprPeInfo(0, 1 << 30, (12, 16, 24), 2, 1 << 24, 2, phb=phb, dma64_offset=DDW,
                           host_page_shifts=(12, 16), host_max_tces=1 << 16,
                           put_tces_max=100)  # fmt: skip

    return InMemoryBackend(
        [
            DeviceHwInfo(n, "spapr", ias=64, nesting=False, spapr=pe(p))
            for n, p in (("edu0", 0), ("edu1", 1), ("edu2", 1))
        ]
    )


def _step(rng: random.Random, ctx: IommufdContext, st: dict[str, Any]) -> str:
    """One random operation of the model (it may be refused: then nothing changed)."""
    devs, ioases, hwpts = st["devs"], st["ioases"], st["hwpts"]
    op = rng.choice(["alloc", "win+", "win-", "map", "map", "unmap", "copy", "attach",
                     "attach", "detach", "destroy"])  # fmt: skip
    shift = rng.choice([12, 16])
    if op == "alloc" or not hwpts:
        dev = rng.choice(devs)
        size = 1 << rng.choice([24, 26])
        offset = rng.choice([None, None, DDW])
        h = ctx.hwpt_alloc(dev, rng.choice(ioases), 0, PPC64_WIN,
                           Ppc64DmaWindow(size, shift, bus_offset=offset))  # fmt: skip
        hwpts.append(h)
        return f"alloc {h} dev {dev}"
    h = rng.choice(hwpts)
    hw = ctx.hwpt_windows(h)
    ioas = ctx.objects()[h].ioas_id  # type: ignore[union-attr]
    if op == "win+" or not hw:
        ctx.hwpt_window_add(h, Ppc64DmaWindow(1 << 24, shift))
        return f"win+ {h}"
    if op == "win-":
        ctx.hwpt_window_remove(h, rng.choice(hw).start)
        return f"win- {h}"
    if op == "map":
        w = rng.choice(hw)
        page = 1 << w.page_shift
        n = rng.randint(1, 4)
        iova = w.start + page * rng.randrange(0, (w.size // page) - n)
        phys = 0x1000000 + page * rng.randrange(0, 0x100)
        fl = rng.choice([RW, R, W]) | FIXED
        ctx.ioas_map(ioas, phys, n * page, fl, iova=iova)
        return f"map {ioas} {iova:#x}"
    if op == "unmap":
        areas = ctx.areas(ioas)
        if rng.random() < 0.2 or not areas:
            return f"unmap-all {ioas} {ctx.ioas_unmap(ioas, 0, U64_MAX):#x}"
        a = rng.choice(areas)
        ctx.ioas_unmap(ioas, a.iova, a.length)
        return f"unmap {ioas} {a.iova:#x}"
    if op == "copy":
        src = rng.choice(ioases)
        areas = ctx.areas(src)
        if not areas:
            return "copy: nothing"
        a = rng.choice(areas)
        w = rng.choice(hw)
        page = 1 << w.page_shift
        iova = w.start + page * rng.randrange(0, 64)
        ctx.ioas_copy(ioas, iova, src, a.iova, a.length, R | FIXED)
        return f"copy {src}->{ioas} {iova:#x}"
    if op == "attach":
        dev = rng.choice(devs)
        ctx.attach(dev, h)
        return f"attach {dev} {h}"
    if op == "detach":
        dev = rng.choice(devs)
        ctx.detach(dev)
        return f"detach {dev}"
    ctx.destroy(h)
    hwpts.remove(h)
    return f"destroy {h}"


def check_translations(ctx: IommufdContext, be: InMemoryBackend) -> int:
    """Every mapped IOVA of each PE's live domain, as the PE translates it; returns how many."""
    n = 0
    objs = ctx.objects()
    for name in ("edu0", "edu1", "edu2"):
        pe = be.pe_of(name)
        live = [o for o in objs.values() if isinstance(o, HwptPpc64) and o.pe == pe and o.t.live]
        if not live:
            continue
        h = live[0]
        for a in ctx.areas(h.ioas_id):
            n += 1
            t = be.translate(name, a.iova, "read")
            if be.pe_blocked(pe):
                assert (t.allowed, t.reason) == (False, "blocked")
            elif a.read:
                assert t.allowed and t.addr == a.phys, (name, a, t)
            else:
                assert t.reason == "permission", (name, a, t)
    return n


@pytest.mark.parametrize("seed", range(8))
def test_random_sequences_model_equals_in_memory_pes(seed: int) -> None:
    be = backend()
    ctx = IommufdContext(be)
    rng = random.Random(seed)
    st: dict[str, Any] = {
        "devs": [ctx.bind(n) for n in ("edu0", "edu1", "edu2")],
        "ioases": [ctx.ioas_alloc(), ctx.ioas_alloc()],
        "hwpts": [],
    }
    done = checked = 0
    for i in range(150):
        try:
            what = _step(rng, ctx, st)
            done += 1
        except IommufdError as e:
            assert e.errno != "EIO", f"seed {seed} step {i}: {e}"
            what = f"refused {e.errno}"
        assert ctx.check_hardware() == [], f"seed {seed} step {i} ({what})"
        checked += check_translations(ctx, be)
    assert done > 60 and checked > 100
