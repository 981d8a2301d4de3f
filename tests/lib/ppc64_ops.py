"""Random PPC64 iommufd operations shared by the model-only and the QEMU property tests
(tests/pyctl/test_ppc64_property.py, tests/device/test_ppc64_iommufd_qtest.py)."""

from __future__ import annotations

import random
from typing import Any

from pyctl.iommufd import IommufdContext
from pyctl.iommufd.ppc64 import IOMMU_HWPT_DATA_PPC64_DMA_WINDOW as PPC64_WIN
from pyctl.iommufd.ppc64 import Ppc64DmaWindow
from pyctl.iommufd.uapi import FIXED_IOVA, READABLE, U64_MAX, WRITEABLE

#: the bus offset of a second window when the PE's policy puts it high
DDW = 1 << 59
RW = READABLE | WRITEABLE


def random_step(rng: random.Random, ctx: IommufdContext, st: dict[str, Any]) -> str:
    """One random operation of the model on ``st`` (devs, ioases, hwpts), described.

    It may be refused (IommufdError): then nothing changed.  The DDW-offset
    choice and the map flags are the kernel's (uapi), the sizes small."""
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
        fl = rng.choice([RW, READABLE, WRITEABLE]) | FIXED_IOVA
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
        ctx.ioas_copy(ioas, iova, src, a.iova, a.length, READABLE | FIXED_IOVA)
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
