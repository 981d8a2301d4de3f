#!/usr/bin/env python3
"""Round trip of one trivial QMP command (query-status) through pyctl's QMP layer.

A paused q35 with the iommulab vIOMMU (a QemuProcess); the same command
through the QmpSession QEMU's socket pair is on, and through a QmpBackend
sharing it (what the iommufd model pays per hardware call).  Prints the best
and the median of ``--rounds`` rounds of ``--calls`` calls, in microseconds.
Not a test: nothing is asserted.  Usage: scripts/bench-qmp.py [--calls N] [--rounds R]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyctl.iommufd.qmp_backend import QmpBackend
from pyctl.qemu.machines import qemu_build_dir
from pyctl.qemu.process import QemuProcess


def per_call_us(fn: Callable[[], object], calls: int, rounds: int) -> tuple[float, float]:
    for _ in range(min(calls, 200)):  # warm up
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return min(times), statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    binary = qemu_build_dir() / "qemu-system-x86_64"
    argv = [str(binary), "-M", "q35", "-accel", "tcg", "-nodefaults", "-display", "none", "-S"]
    with QemuProcess([*argv, "-device", "iommulab-viommu,id=viommu0"]) as q:
        be = QmpBackend(q.qmp)
        rows = {
            "QmpSession.cmd": lambda: q.qmp.cmd("query-status"),
            "QmpBackend.execute": lambda: be.execute("query-status"),
        }
        print(f"query-status round trip, {args.rounds} rounds of {args.calls} calls:")
        for name, fn in rows.items():
            best, med = per_call_us(fn, args.calls, args.rounds)
            print(f"  {name:20s} best {best:7.1f} us   median {med:7.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
