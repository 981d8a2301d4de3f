#!/usr/bin/env python3
"""Benchmark the iommufd model: the IOVA allocator against a plain sorted list, and
map+unmap operations per second on the in-memory backend, in one run.

    .venv/bin/python scripts/bench-iommufd.py [--areas 1000000] [--ops 2000]

Prints ratios measured in this run; nothing is compared with stored numbers.
"""

from __future__ import annotations

import argparse
import bisect
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
# the test VMs (testvm.ViommuVm) live with the tests
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "lib"))

from pyctl.iommufd import InMemoryBackend, IommufdContext, x86_device
from pyctl.iommufd.allocator import HoleSet, alloc_alignment, hole_fit

PG = 4096


class PlainHoles:
    """The obvious implementation: a sorted Python list of holes, first fit by walking it."""

    def __init__(self, base: list[tuple[int, int]]) -> None:
        self.h: list[list[int]] = [[s, e] for s, e in sorted(base)]

    def take(self, start: int, last: int) -> None:
        i = bisect.bisect_right(self.h, [start, 1 << 65]) - 1
        s, e = self.h[i]
        assert s <= start and last <= e
        repl = []
        if s < start:
            repl.append([s, start - 1])
        if e > last:
            repl.append([last + 1, e])
        self.h[i : i + 1] = repl

    def give(self, start: int, last: int) -> None:
        i = bisect.bisect_left(self.h, [start, 0])
        if i > 0 and self.h[i - 1][1] + 1 == start:
            i -= 1
            start = self.h[i][0]
            del self.h[i]
        if i < len(self.h) and self.h[i][0] == last + 1:
            last = self.h[i][1]
            del self.h[i]
        self.h.insert(i, [start, last])

    def find(self, length: int, align: int, po: int = 0) -> int | None:
        for s, e in self.h:
            pos = hole_fit(s, e, length, align, po)
            if pos is not None:
                return pos
        return None


def fragment(alloc: HoleSet | PlainHoles, n: int) -> None:
    """n single pages used, every other one freed again: n/2 one-page holes low down."""
    for i in range(n):
        alloc.take(PG + i * PG, PG + i * PG + PG - 1)
    for i in range(0, n, 2):
        alloc.give(PG + i * PG, PG + i * PG + PG - 1)


def churn(alloc: HoleSet | PlainHoles, ops: int) -> float:
    """ops x (allocate 8 KiB aligned + free it); returns seconds."""
    length = 2 * PG
    align = alloc_alignment(length, 0)
    t0 = time.perf_counter()
    for _ in range(ops):
        pos = alloc.find(length, align)
        assert pos is not None
        alloc.take(pos, pos + length - 1)
        alloc.give(pos, pos + length - 1)
    return time.perf_counter() - t0


def bench_allocator(n: int, ops: int, plain_ops: int) -> None:
    base = [(PG, (1 << 64) - 1 - PG)]
    ours, plain = HoleSet(base), PlainHoles(base)
    t0 = time.perf_counter()
    fragment(ours, n)
    t_fill_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    fragment(plain, n)
    t_fill_plain = time.perf_counter() - t0
    assert ours.find(2 * PG, 2 * PG) == plain.find(2 * PG, 2 * PG)
    t_ours = churn(ours, ops) / ops
    t_plain = churn(plain, plain_ops) / plain_ops
    print(f"allocator, {n} areas, {n // 2} one-page holes below the first fit:")
    print(f"  build         ours {t_fill_ours:8.2f} s   sorted list {t_fill_plain:8.2f} s")
    print(
        f"  alloc+free    ours {1 / t_ours:10.0f} ops/s   sorted list {1 / t_plain:10.1f} ops/s"
        f"   ratio {t_plain / t_ours:8.1f}x"
    )


def bench_model(n: int, ops: int) -> None:
    be = InMemoryBackend([x86_device("nvme0")])
    ctx = IommufdContext(be)
    ioas = ctx.ioas_alloc()
    ctx.attach(ctx.bind("nvme0"), ioas)
    t0 = time.perf_counter()
    for i in range(n):
        ctx.ioas_map(ioas, i * PG, PG, 7, PG + i * PG)  # FIXED_IOVA | READABLE | WRITEABLE
    t_fill = time.perf_counter() - t0
    assert len(ctx.areas(ioas)) == n
    # map+unmap at allocator-chosen IOVA next to n areas, mirrored into the domain
    t0 = time.perf_counter()
    for i in range(ops):
        iova = ctx.ioas_map(ioas, i * PG, 16 * PG, 6)
        ctx.ioas_unmap(ioas, iova, 16 * PG)
    t_ops = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(ops):
        t = be.translate("nvme0", PG + (n // 2) * PG, "read")
        assert t.allowed
    t_tr = time.perf_counter() - t0
    t0 = time.perf_counter()
    unmapped = ctx.ioas_unmap(ioas, 0, (1 << 64) - 1)
    t_all = time.perf_counter() - t0
    assert unmapped == n * PG and ctx.pinned_pages() == 0
    print(f"model + in-memory backend, {n} areas in one IOAS with one domain:")
    print(f"  {n} maps (allocator, pinning, hardware)   {n / t_fill:10.0f} maps/s")
    print(f"  map+unmap of 64 KiB next to them           {ops / t_ops:10.0f} pairs/s")
    print(f"  translate (hardware lookup)                 {ops / t_tr:10.0f} /s")
    print(f"  unmap all {n} areas                         {t_all:10.2f} s")


def bench_qmp(pages: int, batch: int) -> None:
    """map+unmap through QMP into the real device: one page per command, then batched."""
    from testvm import ViommuVm

    from pyctl.iommufd.backend import MapEntry
    from pyctl.iommufd.qmp_backend import QmpBackend

    with ViommuVm(devices=1) as vm, QmpBackend(str(vm.qmp_path)) as hw:
        ctx = IommufdContext(hw)
        ioas = ctx.ioas_alloc()
        ctx.attach(ctx.bind("edu0"), ioas)
        single = max(pages // 8, 64)
        t0 = time.perf_counter()
        for i in range(single):
            iova = ctx.ioas_map(ioas, i * PG, PG, 6)
            ctx.ioas_unmap(ioas, iova, PG)
        t_single = (time.perf_counter() - t0) / single
        hwpt = ctx.objects()[ioas].hwpts[0]  # type: ignore[union-attr]
        per_mode: dict[str, float] = {}
        for mode in ("inline", "base64", "fd"):  # inline: the JSON of before issue 12
            hw.payload = mode  # type: ignore[assignment]
            t0 = time.perf_counter()
            for start in range(0, pages, batch):
                n = min(batch, pages - start)
                # every other page so that no two merge: n separate mappings
                ents = [
                    MapEntry((1 << 32) + 2 * (start + k) * PG, PG, k * PG, True, True)
                    for k in range(n)
                ]
                hw.map(hwpt, ents)
                hw.unmap(hwpt, [(e.iova, e.size) for e in ents])
            per_mode[mode] = (time.perf_counter() - t0) / pages
        hw.payload = "auto"
        t0 = time.perf_counter()
        for i in range(0, pages, batch):
            n = min(batch, pages - i)
            ctx.ioas_map(ioas, 0, n * PG, 6)
        t_big = time.perf_counter() - t0
    print("QMP (real iommulab-viommu, TCG, paused q35):")
    print(f"  model map+unmap, 1 page per command   {1 / t_single:10.0f} pages/s")
    for mode, t in per_mode.items():
        print(
            f"  device map+unmap, {batch} pages/command, {mode:6s} {1 / t:10.0f} pages/s"
            f"   {per_mode['inline'] / t:6.1f}x inline   {t_single / t:6.1f}x one per command"
        )
    print(f"  model map of {batch}-page areas           {pages / t_big:10.0f} pages/s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--areas", type=int, default=1_000_000)
    p.add_argument("--ops", type=int, default=2000)
    p.add_argument("--plain-ops", type=int, default=20)
    p.add_argument("--qmp-pages", type=int, default=65536, help="0 skips the QMP part")
    p.add_argument("--qmp-batch", type=int, default=4096)
    args = p.parse_args()
    bench_allocator(args.areas, args.ops, args.plain_ops)
    bench_model(args.areas, args.ops)
    if args.qmp_pages:
        from testvm import has_viommu, qemu_binary

        binary = qemu_binary()
        if binary is None or not has_viommu(binary):
            print("QMP: skipped (QEMU with iommulab-viommu not built)")
        else:
            bench_qmp(args.qmp_pages, args.qmp_batch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
