#!/usr/bin/env python3
"""Benchmark sPAPR DMA with the iommulab stage 2 beneath the TCE windows vs stock.

Bulk host-side TCE programming first (unless --skip-put): TCEs per second of
x-iommulab-spapr-put-tces over QMP, its TCEs as a memfd (``fd``), base64
(``data``) or an inline list, against the guest's own H_PUT_TCE_INDIRECT
(qtest hypercalls of 512 TCEs) on the same machine in the same run, and the
time to map a 1 GiB window of 4 KiB TCEs; ratios printed.

Then two measurements, each a ratio of two configurations taken in the same run:

1. Hypercall cost: wall-clock time of H_PUT_TCE_INDIRECT (512 TCEs per call)
   issued through qtest on pseries, with an iommulab-spapr-s2 device attached
   to an identity stage-2 domain vs without one.  The qtest round trip is
   measured with a cheap H_GET_TCE and subtracted.
2. NVMe throughput: a pseries guest (TCG) writes and reads back a pattern
   with O_DIRECT (the agent's nvme-rw) through its DDW, with the identity
   stage 2 vs without; MiB/s as the agent reports them.

With --callgrind, also instruction counts under valgrind (repeatable, unlike
wall-clock on a loaded machine): H_PUT_TCE_INDIRECT, and one 4 KiB edu DMA
through a TCE (and stage 2).

Usage: .venv/bin/python scripts/bench-spapr.py [--size 256M] [--runs 2]
       [--per-boot 3] [--calls 2000] [--callgrind] [--skip-nvme] [--skip-hcall]
       [--skip-put] [--put-rounds 3] [--put-small 262144]
Prints a table and the ratios (stage 2 / stock).  Not a test: no pass/fail.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyctl.guest.image import build_image
from pyctl.guest.results import (
    BOOT_PATTERN,
    DONE_PATTERN,
    Scenario,
    cmdline_arg,
    parse_results,
)
from pyctl.qemu.launcher import QemuInstance, create_raw_disk
from pyctl.qemu.machines import GuestConfig, NvmeDisk, qemu_build_dir
from pyctl.qemu.pseries_qtest import (
    DMA_PAGE,
    EDU_BUF,
    H_GET_TCE,
    H_PUT_TCE,
    H_PUT_TCE_INDIRECT,
    LIOBN0,
    TCE_LIST,
    PseriesQtest,
)
from pyctl.qemu.qmp import QmpSession, memfd_from

RAM_MIB = 1024


def s2_setup(qmp: QmpSession, ram: int) -> None:
    qmp.cmd("x-iommulab-domain-alloc", iommu="s2", domain=1, type="paging")
    qmp.cmd(
        "x-iommulab-map",
        iommu="s2",
        domain=1,
        mappings=[{"iova": 0, "size": ram, "addr": 0, "read": True, "write": True}],
    )
    qmp.cmd("x-iommulab-attach", iommu="s2", device="s2", mode="domain", domain=1)


def pseries(stage2: bool, wrapper: Sequence[str] = (), timeout: float = 30.0) -> PseriesQtest:
    """A qtest pseries with edu on PHB 0; with stage2, an identity stage 2 under its TCEs."""
    vm = PseriesQtest(
        qemu_build_dir() / "qemu-system-ppc64",
        ["-device", "iommulab-spapr-s2,id=s2"] if stage2 else [],
        ram=RAM_MIB << 20,
        wrapper=wrapper,
        timeout=timeout,
    )
    if stage2:
        s2_setup(vm.qmp, RAM_MIB << 20)
    return vm


def put_indirect(vm: PseriesQtest, i: int) -> None:
    """H_PUT_TCE_INDIRECT of the 512 TCEs at TCE_LIST, call ``i`` of a sweep of the window."""
    ioba = ((i * 512) % ((1 << 30) >> 12)) << 12
    vm.qt.command(f"hcall 0x{H_PUT_TCE_INDIRECT:x} 0x{LIOBN0:x} 0x{ioba:x} 0x{TCE_LIST:x} 512")


def write_tce_list(vm: PseriesQtest) -> None:
    tces = [(0x100000 + i * 4096) | 3 for i in range(512)]
    vm.qt.memwrite(TCE_LIST, struct.pack(">512Q", *tces))


def hcall_time(stage2: bool, calls: int) -> tuple[float, float]:
    """Seconds per H_PUT_TCE_INDIRECT(512) and per H_GET_TCE (the round trip)."""
    vm = pseries(stage2)
    try:
        write_tce_list(vm)
        t0 = time.perf_counter()
        for i in range(calls):
            put_indirect(vm, i)
        put = (time.perf_counter() - t0) / calls
        t0 = time.perf_counter()
        for _ in range(calls):
            vm.qt.command(f"hcall 0x{H_GET_TCE:x} 0x{LIOBN0:x} 0x1000")
        get = (time.perf_counter() - t0) / calls
    finally:
        vm.close()
    return put, get


GIB_TCES = (1 << 30) >> 12  # a 1 GiB window of 4 KiB TCEs
GIB_WINDOW = {"page-shift": 12, "size": 1 << 30}


def put_tces(vm: PseriesQtest, liobn: int, tces: list[int], form: str) -> None:
    """One x-iommulab-spapr-put-tces from index 0, the TCEs in ``form``."""
    args = {"liobn": liobn, "start": 0}
    if form == "inline":
        vm.qmp.cmd("x-iommulab-spapr-put-tces", **args, tces=tces)
        return
    raw = struct.pack(f"<{len(tces)}Q", *tces)
    if form == "data":
        vm.qmp.cmd("x-iommulab-spapr-put-tces", **args, data=base64.b64encode(raw).decode())
        return
    fd = memfd_from(raw)  # the client's cost of the fd form, timed with it
    try:
        args.update(fd="tces", count=len(tces))
        vm.qmp.execute_with_fd("x-iommulab-spapr-put-tces", args, fd, "tces")
    finally:
        os.close(fd)


def in_use(vm: PseriesQtest, n: int) -> None:
    """The measured calls did their work: PHB 0's newest window holds ``n`` TCEs."""
    windows = vm.qmp.cmd("x-iommulab-spapr-query-phbs")
    got = [w["entries-in-use"] for p in windows if p["phb"] == 0 for w in p["windows"]]
    if got != [n]:
        raise RuntimeError(f"expected one window with {n} TCEs in use, got {got}")


def put_rates(rounds: int, small: int) -> dict[str, tuple[int, float]]:
    """(TCEs, best seconds) per way of programming TCEs, each into a new, empty window
    (leaves allocated as a first mapping would): put-tces per form (fd: the whole 1 GiB
    window in one call; base64 and inline: ``small`` TCEs, by default the same),
    H_PUT_TCE_INDIRECT of 512 over 1 GiB, and the qtest round trip (H_GET_TCE)."""
    vm = pseries(False)
    best: dict[str, tuple[int, float]] = {}

    def keep(name: str, n: int, t: float) -> None:
        best[name] = (n, min(t, best.get(name, (n, t))[1]))

    try:
        tces = [(i << 12) | 3 for i in range(GIB_TCES)]  # the first GiB of RAM
        vm.qmp.cmd("x-iommulab-spapr-window-remove", liobn=LIOBN0)
        for _ in range(rounds):
            for form, n in (("fd", GIB_TCES), ("data", small), ("inline", small)):
                w = vm.qmp.cmd("x-iommulab-spapr-window-create", **GIB_WINDOW)
                t0 = time.perf_counter()
                put_tces(vm, w["liobn"], tces[:n], form)
                keep(form, n, time.perf_counter() - t0)
                in_use(vm, n)
                vm.qmp.cmd("x-iommulab-spapr-window-remove", liobn=w["liobn"])
            w = vm.qmp.cmd("x-iommulab-spapr-window-create", **GIB_WINDOW)
            assert w["liobn"] == LIOBN0
            write_tce_list(vm)
            t0 = time.perf_counter()
            for i in range(GIB_TCES // 512):
                put_indirect(vm, i)
            keep("hcall", GIB_TCES, time.perf_counter() - t0)
            in_use(vm, GIB_TCES)
            t0 = time.perf_counter()
            for _ in range(GIB_TCES // 512):
                vm.qt.command(f"hcall 0x{H_GET_TCE:x} 0x{LIOBN0:x} 0x1000")
            keep("roundtrip", GIB_TCES, time.perf_counter() - t0)
            vm.qmp.cmd("x-iommulab-spapr-window-remove", liobn=LIOBN0)
    finally:
        vm.close()
    return best


def report_put(best: dict[str, tuple[int, float]], rounds: int) -> None:
    rate = {k: n / t for k, (n, t) in best.items()}
    n_hc, t_hc = best["hcall"]
    net = t_hc - best["roundtrip"][1]  # the hypercalls alone, as a guest pays them
    rate["hypercall"] = n_hc / net
    print(f"Host-side TCE programming (pseries, 4 KiB TCEs), best of {rounds} rounds:")
    for form in ("fd", "data", "inline"):
        n, t = best[form]
        print(f"  put-tces {form:6s}: {n:7d} TCEs in {t * 1e3:8.1f} ms  {rate[form]:12,.0f} TCEs/s")
    print(
        f"  H_PUT_TCE_INDIRECT (512/call, qtest): {n_hc} TCEs in {t_hc * 1e3:8.1f} ms "
        f"{rate['hcall']:12,.0f} TCEs/s; hypercalls alone (round trip subtracted) "
        f"{rate['hypercall']:12,.0f} TCEs/s"
    )
    t_gib = best["fd"][1]
    print(f"  map a 1 GiB window of 4 KiB TCEs (put-tces fd, one call): {t_gib:.3f} s")
    print(
        f"  ratios: fd / qtest hypercalls {rate['fd'] / rate['hcall']:.2f}, "
        f"fd / hypercalls alone {rate['fd'] / rate['hypercall']:.2f}, "
        f"base64 / fd {rate['data'] / rate['fd']:.4f}, "
        f"inline / fd {rate['inline'] / rate['fd']:.4f}"
    )
    met = rate["fd"] >= 1e6 and t_gib < 1.0
    print(f"  goal (>= 1,000,000 TCEs/s and 1 GiB in < 1 s, fd): {'met' if met else 'NOT met'}")


CALLGRIND_FUNCS = ("h_put_tce_indirect", "edu_dma_timer")


def callgrind_counts(stage2: bool, calls: int, dmas: int) -> dict[str, int]:
    """Instructions inside each of CALLGRIND_FUNCS (inclusive), per call, under callgrind.

    Collection is on only inside those functions (--toggle-collect), so QEMU's
    start-up, qtest and QMP cost nothing; the counts repeat exactly run to run.
    edu_dma_timer is one 4 KiB edu DMA into guest memory: TCE translation,
    stage-2 translation (with stage2) and the copy.
    """
    with tempfile.TemporaryDirectory(prefix="bench-spapr-cg-") as d:
        out = Path(d) / "callgrind.out"
        wrapper = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            "--collect-atstart=no", *(f"--toggle-collect={f}" for f in CALLGRIND_FUNCS),
        ]  # fmt: skip
        vm = pseries(stage2, wrapper, timeout=600.0)
        try:
            write_tce_list(vm)
            for i in range(calls):
                put_indirect(vm, i)
            bar = vm.edu_setup()
            # TCE 0: IOBA 0 -> DMA_PAGE, read/write
            vm.hcall(H_PUT_TCE, LIOBN0, 0, DMA_PAGE | 3)
            for _ in range(dmas):
                vm.edu_dma(bar, EDU_BUF, 0, 4096, to_memory=True)
        finally:
            vm.close()
        text = subprocess.run(
            ["callgrind_annotate", "--inclusive=yes", str(out)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    counts = {}
    for func, n in zip(CALLGRIND_FUNCS, (calls, dmas), strict=True):
        m = re.search(rf"^\s*([\d,]+) \([^)]*\)\s+\S*:{func}\b", text, re.MULTILINE)
        if m is None:
            raise RuntimeError(f"{func} not in the callgrind profile")
        counts[func] = int(m.group(1).replace(",", "")) // n
    return counts


def nvme_run(stage2: bool, size: str, per_boot: int, workdir: Path) -> list[dict[str, Any]]:
    """``per_boot`` nvme-rw results of one guest boot, after one more that is dropped
    (its writes allocate the sparse disk file's blocks on the host)."""
    image = build_image("ppc64le")
    disk = create_raw_disk(workdir / "nvme.raw", 512 << 20)
    extra: tuple[str, ...] = ("-action", "shutdown=pause")
    if stage2:
        extra += ("-device", "iommulab-spapr-s2,id=s2")
    cfg = GuestConfig(
        machine="pseries",
        kernel=image.kernel,
        initrd=image.initrd,
        append=cmdline_arg([Scenario("nvme-rw", {"size": size})] * (per_boot + 1)),
        nvme=NvmeDisk(disk, serial="bench"),
        memory_mib=RAM_MIB * 2,
        paused=True,
        extra_args=extra,
    )
    inst = QemuInstance(cfg, workdir, qemu_build_dir())
    try:
        inst.start()
        if stage2:
            s2_setup(inst.qmp, (RAM_MIB * 2) << 20)
        inst.qmp.cmd("cont")
        inst.wait_for(BOOT_PATTERN, 240)
        inst.wait_for(DONE_PATTERN, 240)
    finally:
        inst.shutdown()
    rws = [r for r in parse_results(inst.console_text()) if r["scenario"] == "nvme-rw"]
    if len(rws) != per_boot + 1 or any(r["sha256_read"] != r["sha256_written"] for r in rws):
        raise RuntimeError(f"nvme-rw failed or read back other bytes ({workdir})")
    return rws[1:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--size", default="256M", help="nvme-rw pattern size")
    ap.add_argument("--runs", type=int, default=2, help="guest boots per configuration")
    ap.add_argument("--per-boot", type=int, default=3, help="nvme-rw runs per boot")
    ap.add_argument("--rounds", type=int, default=5, help="hypercall rounds per configuration")
    ap.add_argument("--skip-nvme", action="store_true")
    ap.add_argument("--skip-put", action="store_true", help="no put-tces measurement")
    ap.add_argument("--put-rounds", type=int, default=3, help="put-tces rounds (best of)")
    ap.add_argument(
        "--put-small",
        type=int,
        default=GIB_TCES,
        help="TCEs per base64 and inline put-tces (default: the 1 GiB window, as fd)",
    )
    ap.add_argument("--skip-hcall", action="store_true", help="no wall-clock hypercall timing")
    ap.add_argument(
        "--callgrind", action="store_true", help="also count instructions under valgrind"
    )
    args = ap.parse_args()
    if not args.skip_put:
        report_put(put_rates(args.put_rounds, args.put_small), args.put_rounds)
    if args.callgrind:
        cg = {stage2: callgrind_counts(stage2, 50, 50) for stage2 in (False, True)}
        print("callgrind, instructions per call (inclusive; repeatable):")
        for func in CALLGRIND_FUNCS:
            a, b = cg[False][func], cg[True][func]
            print(f"  {func:20s} stock {a:9d}  stage 2 {b:9d}  ratio {b / a:.3f}")

    res: dict[bool, tuple[float, float]] = {}
    for stage2 in (False, True) * (
        0 if args.skip_hcall else args.rounds
    ):  # interleaved, min of rounds
        put, get = hcall_time(stage2, args.calls)
        old = res.get(stage2)
        res[stage2] = (min(put, old[0]), min(get, old[1])) if old else (put, get)
    if res:
        print(
            f"H_PUT_TCE_INDIRECT (512 TCEs), qtest round trip subtracted, "
            f"best of {args.rounds} rounds of {args.calls} calls:"
        )
    net = {}
    for stage2, (put, get) in res.items():
        net[stage2] = put - get
        print(
            f"  {'stage 2' if stage2 else 'stock  '}: {put * 1e6:8.1f} us/call, "
            f"round trip {get * 1e6:6.1f} us, hypercall {net[stage2] * 1e6:7.1f} us"
        )
    if net:
        print(f"  ratio stage 2 / stock (hypercall): {net[True] / net[False]:.3f}")

    if args.skip_nvme:
        return 0
    tp: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="bench-spapr-") as d:
        for i in range(args.runs):
            for stage2 in (False, True):
                w = Path(d) / f"{'s2' if stage2 else 'stock'}-{i}"
                for rw in nvme_run(stage2, args.size, args.per_boot, w):
                    tp[stage2].append((float(rw["write_mibs"]), float(rw["read_mibs"])))
    print(
        f"NVMe O_DIRECT {args.size} through the DDW (pseries, TCG), MiB/s, median of "
        f"{args.runs} boots x {args.per_boot} runs:"
    )
    med = {}
    for stage2 in (False, True):
        ws = sorted(x[0] for x in tp[stage2])
        rs = sorted(x[1] for x in tp[stage2])
        wr, rd = statistics.median(ws), statistics.median(rs)
        med[stage2] = (wr, rd)
        print(
            f"  {'stage 2' if stage2 else 'stock  '}: write {wr:7.1f} ({ws[0]:.0f}-{ws[-1]:.0f})"
            f"  read {rd:7.1f} ({rs[0]:.0f}-{rs[-1]:.0f})  [median (min-max)]"
        )
    print(
        f"  ratio stage 2 / stock: write {med[True][0] / med[False][0]:.3f}, "
        f"read {med[True][1] / med[False][1]:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
