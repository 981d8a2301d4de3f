#!/usr/bin/env python3
"""Benchmark: TCEs per second of IOAS maps through the model's PPC64 domains over QMP.

One pseries under qtest (no guest), edu0 on PHB 0 (the host side's PE) and a
second PHB whose default window takes the guest-style path.  Measured in the
same run, each the best of --runs:

1. model map: ``ctx.ioas_map`` of --size bytes at once into a live PPC64
   domain with a window of --size and 4 KiB TCEs (the IOAS, the domain's
   TCE runs, bulk ``x-iommulab-spapr-put-tces`` through a memfd), and the
   unmap that clears them;
2. raw put-tces: the same TCEs written with ``SpaprQmpBackend.put_tces``
   alone (what the model adds is the difference);
3. guest path: ``H_PUT_TCE_INDIRECT`` (512 TCEs per call, the list written to
   guest RAM first) through qtest on PHB 1's default window, as the guest's
   kernel programs TCEs, with qtest's own round trip included.

Usage: .venv/bin/python scripts/bench-ppc64-iommufd.py [--size 1G] [--runs 3]
       [--calls 200]
Prints TCEs/s and the ratios.  Not a test: no pass/fail.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyctl.iommufd import IommufdContext
from pyctl.iommufd.ppc64 import IOMMU_HWPT_DATA_PPC64_DMA_WINDOW, Ppc64DmaWindow
from pyctl.iommufd.spapr_qmp import SpaprQmpBackend
from pyctl.qemu.machines import qemu_build_dir
from pyctl.qemu.pseries_qtest import H_PUT_TCE_INDIRECT, H_SUCCESS, TCE_LIST, PseriesQtest

RW_FIXED = 7  # READABLE | WRITEABLE | FIXED_IOVA


def size_arg(text: str) -> int:
    units = {"K": 10, "M": 20, "G": 30}
    if text[-1].upper() in units:
        return int(text[:-1]) << units[text[-1].upper()]
    return int(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=size_arg, default=1 << 30, help="bytes mapped at once")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--calls", type=int, default=200, help="H_PUT_TCE_INDIRECT calls")
    a = ap.parse_args()
    size = a.size
    n = size >> 12
    binary = qemu_build_dir() / "qemu-system-ppc64"
    ram = max(size + (256 << 20), 512 << 20)
    vm = PseriesQtest(
        binary, ["-device", "spapr-pci-host-bridge,index=1,id=phb1"], ram=ram, timeout=120
    )
    try:
        be = SpaprQmpBackend(vm.qmp)
        ctx = IommufdContext(be)
        dev = ctx.bind("edu0")
        ioas = ctx.ioas_alloc()
        hwpt = ctx.hwpt_alloc(
            dev, ioas, 0, IOMMU_HWPT_DATA_PPC64_DMA_WINDOW, Ppc64DmaWindow(size, 12)
        )
        ctx.attach(dev, hwpt)
        maps, unmaps, raws = [], [], []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            ctx.ioas_map(ioas, 0, size, RW_FIXED, iova=0)
            t1 = time.perf_counter()
            ctx.ioas_unmap(ioas, 0, size)
            t2 = time.perf_counter()
            maps.append(t1 - t0)
            unmaps.append(t2 - t1)
        slot = be.pe_windows(0)[0].slot
        tces = [(k << 12) | 3 for k in range(n)]
        chunk = int(vm.phb(0)["host-windows"]["put-tces-max"])
        for _ in range(a.runs):
            t0 = time.perf_counter()
            for i in range(0, n, chunk):
                be.put_tces(0, slot, i, tces[i : i + chunk])
            raws.append(time.perf_counter() - t0)
        assert ctx.check_tces() != []  # the raw writes are not the model's: it notices
        be.put_tces(0, slot, 0, [0] * min(n, chunk))
        # the guest's path on PHB 1's default window
        liobn = vm.phb(1)["windows"][0]["liobn"]
        per = 512
        lst = struct.pack(f">{per}Q", *((k << 12) | 3 for k in range(per)))
        t0 = time.perf_counter()
        for c in range(a.calls):
            vm.qt.memwrite(TCE_LIST, lst)
            rc, _ = vm.hcall(H_PUT_TCE_INDIRECT, liobn, (c * per % (1 << 18)) << 12, TCE_LIST, per)
            if rc != H_SUCCESS:
                raise SystemExit(f"H_PUT_TCE_INDIRECT failed: {rc}")
        guest = time.perf_counter() - t0
    finally:
        vm.close()
    m, u, r = min(maps), min(unmaps), min(raws)
    g = a.calls * per / guest
    print(f"{n} TCEs ({size >> 20} MiB of 4 KiB pages), best of {a.runs}")
    print(f"  model ioas_map        {m:8.3f} s  {n / m:12,.0f} TCEs/s")
    print(f"  model ioas_unmap      {u:8.3f} s  {n / u:12,.0f} TCEs/s")
    print(f"  raw put-tces          {r:8.3f} s  {n / r:12,.0f} TCEs/s")
    print(f"  guest H_PUT_TCE_INDIRECT via qtest ({a.calls} x {per}): {g:12,.0f} TCEs/s")
    print(f"  ratio model map / raw put-tces: {r / m:.2f}; model map / guest path: {n / m / g:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
