#!/usr/bin/env python3
"""Benchmark sPAPR DMA with the iommulab stage 2 beneath the TCE windows vs stock.

Two measurements, each a ratio of two configurations taken in the same run:

1. Hypercall cost: wall-clock time of H_PUT_TCE_INDIRECT (512 TCEs per call)
   issued through qtest on pseries, with an iommulab-spapr-s2 device attached
   to an identity stage-2 domain vs without one.  The qtest round trip is
   measured with a cheap H_GET_TCE and subtracted.
2. NVMe throughput: a pseries guest (TCG) writes and reads back a pattern
   with O_DIRECT (the agent's nvme-rw) through its DDW, with the identity
   stage 2 vs without; MiB/s as the agent reports them.

Usage: .venv/bin/python scripts/bench-spapr.py [--size 256M] [--calls 2000]
Prints a table and the ratios (stage 2 / stock).  Not a test: no pass/fail.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qemu.qmp.legacy import QEMUMonitorProtocol

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
from pyctl.qemu.qtest import QTest

LIOBN0 = 0x80000000
H_GET_TCE, H_PUT_TCE_INDIRECT = 0x1C, 0x13C
TCE_LIST = 0x4002000
RAM_MIB = 1024


def s2_setup(qmp: QEMUMonitorProtocol, ram: int) -> None:
    qmp.cmd("x-iommulab-domain-alloc", iommu="s2", domain=1, type="paging")
    qmp.cmd(
        "x-iommulab-map",
        iommu="s2",
        domain=1,
        mappings=[{"iova": 0, "size": ram, "addr": 0, "read": True, "write": True}],
    )
    qmp.cmd("x-iommulab-spapr-stage2-attach", stage2="s2", mode="domain", domain=1)


def hcall_time(binary: Path, stage2: bool, calls: int) -> tuple[float, float]:
    """Seconds per H_PUT_TCE_INDIRECT(512) and per H_GET_TCE (the round trip)."""
    with tempfile.TemporaryDirectory() as d:
        qmp_path, qt_path = f"{d}/qmp.sock", f"{d}/qt.sock"
        cmd = [
            str(binary),
            "-M",
            "pseries",
            "-accel",
            "qtest",
            "-nodefaults",
            "-display",
            "none",
            "-m",
            str(RAM_MIB),
            "-chardev",
            f"socket,id=qmp,path={qmp_path},server=on,wait=off",
            "-mon",
            "chardev=qmp,mode=control",
            "-chardev",
            f"socket,id=qt,path={qt_path},server=on,wait=off",
            "-qtest",
            "chardev:qt",
        ]
        if stage2:
            cmd += ["-device", "iommulab-spapr-s2,id=s2"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            qt = QTest(qt_path)
            qmp = QEMUMonitorProtocol(qmp_path)
            qmp.connect()
            if stage2:
                s2_setup(qmp, RAM_MIB << 20)
            tces = [(0x100000 + i * 4096) | 3 for i in range(512)]
            qt.memwrite(TCE_LIST, struct.pack(">512Q", *tces))
            window_pages = (1 << 30) >> 12
            t0 = time.perf_counter()
            for i in range(calls):
                ioba = ((i * 512) % window_pages) << 12
                qt.command(
                    f"hcall 0x{H_PUT_TCE_INDIRECT:x} 0x{LIOBN0:x} 0x{ioba:x} 0x{TCE_LIST:x} 512"
                )
            put = (time.perf_counter() - t0) / calls
            t0 = time.perf_counter()
            for _ in range(calls):
                qt.command(f"hcall 0x{H_GET_TCE:x} 0x{LIOBN0:x} 0x1000")
            get = (time.perf_counter() - t0) / calls
            qmp.cmd("quit")
            with contextlib.suppress(Exception):
                qmp.close()
            qt.close()
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return put, get


def nvme_run(stage2: bool, size: str, workdir: Path) -> dict[str, Any]:
    image = build_image("ppc64le")
    disk = create_raw_disk(workdir / "nvme.raw", 512 << 20)
    extra: tuple[str, ...] = ("-action", "shutdown=pause")
    if stage2:
        extra += ("-device", "iommulab-spapr-s2,id=s2")
    cfg = GuestConfig(
        machine="pseries",
        kernel=image.kernel,
        initrd=image.initrd,
        append=cmdline_arg([Scenario("nvme-rw", {"size": size})]),
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
    (rw,) = [r for r in parse_results(inst.console_text()) if r["scenario"] == "nvme-rw"]
    if rw["sha256_read"] != rw["sha256_written"]:
        raise RuntimeError(f"nvme-rw read back other bytes ({workdir})")
    return rw


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--size", default="256M", help="nvme-rw pattern size")
    ap.add_argument("--runs", type=int, default=2, help="guest runs per configuration")
    ap.add_argument("--rounds", type=int, default=5, help="hypercall rounds per configuration")
    ap.add_argument("--skip-nvme", action="store_true")
    args = ap.parse_args()
    binary = qemu_build_dir() / "qemu-system-ppc64"

    res: dict[bool, tuple[float, float]] = {}
    for stage2 in (False, True) * args.rounds:  # interleaved, min of rounds
        put, get = hcall_time(binary, stage2, args.calls)
        old = res.get(stage2)
        res[stage2] = (min(put, old[0]), min(get, old[1])) if old else (put, get)
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
    print(f"  ratio stage 2 / stock (hypercall): {net[True] / net[False]:.3f}")

    if args.skip_nvme:
        return 0
    tp: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="bench-spapr-") as d:
        for i in range(args.runs):
            for stage2 in (False, True):
                w = Path(d) / f"{'s2' if stage2 else 'stock'}-{i}"
                rw = nvme_run(stage2, args.size, w)
                tp[stage2].append((float(rw["write_mibs"]), float(rw["read_mibs"])))
    print(
        f"NVMe O_DIRECT {args.size} through the DDW (pseries, TCG), MiB/s, median of {args.runs}:"
    )
    med = {}
    for stage2 in (False, True):
        wr = statistics.median(x[0] for x in tp[stage2])
        rd = statistics.median(x[1] for x in tp[stage2])
        med[stage2] = (wr, rd)
        print(f"  {'stage 2' if stage2 else 'stock  '}: write {wr:7.1f}  read {rd:7.1f}")
    print(
        f"  ratio stage 2 / stock: write {med[True][0] / med[False][0]:.3f}, "
        f"read {med[True][1] / med[False][1]:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
