#!/usr/bin/env python3
"""The control path through QMP, in one run (issue 12): round trips, one map/unmap
command, scattered 4 KiB pages per second in batches, all RAM of a 4 GiB guest.

A paused q35 (TCG) with the iommulab vIOMMU.  Everything is measured here and
now and printed with its ratio to this run's floor (a bare client on a socket):
  1. query-status round trip: bare socket, qemu.qmp's sync API (the "before" of
     pyctl's facade), QmpSession, QmpBackend.execute;
  2. one x-iommulab-map / -unmap of one page through QmpBackend, per payload
     form (inline JSON, base64, fd);
  3. scattered 4 KiB pages mapped and unmapped in batches: QEMU and QMP alone
     (records packed ahead, fd), then through QmpBackend per form (inline is the
     "before" of bulk payloads);
  4. all RAM of a 4 GiB guest at IOVA = GPA in 4 KiB pages (no blocks) through
     QmpBackend (fd), from the RAM layout QEMU reports.
Best and median of ``--rounds``.  Not a test: nothing is asserted.

  .venv/bin/python scripts/bench-qmp.py [--calls 3000] [--rounds 3] [--pages 262144]
      [--no-ram]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from array import array
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "lib"))

from testvm import ViommuVm

from pyctl.iommufd.backend import MapEntry
from pyctl.iommufd.qmp_backend import QmpBackend
from pyctl.qemu.guestram import guest_ram
from pyctl.qemu.qmp import QmpSession, memfd_from

PG = 4096
IOMMU = "viommu0"


class Bare:
    """The floor: a blocking UNIX socket, one JSON line out, bytes in up to the newline."""

    def __init__(self, path: str) -> None:
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.buf = b""
        self._line()  # greeting
        self.call(b'{"execute": "qmp_capabilities"}\n')

    def _line(self) -> bytes:
        while b"\n" not in self.buf:
            self.buf += self.s.recv(65536)
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def call(self, msg: bytes) -> bytes:
        self.s.sendall(msg)
        while True:
            line = self._line()
            if b'"event"' not in line:
                return line

    def close(self) -> None:
        self.s.close()


def timed(fn: Callable[[], object], n: int, rounds: int) -> tuple[float, float]:
    """Seconds per call: best and median of ``rounds`` rounds of ``n`` calls (one warm-up)."""
    for _ in range(min(n, 100)):
        fn()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t0) / n)
    return min(out), statistics.median(out)


def row(name: str, best: float, med: float, floor: float) -> None:
    print(
        f"  {name:34s} best {best * 1e6:8.1f} us  median {med * 1e6:8.1f} us"
        f"  {med / floor:5.2f}x the floor"
    )


def round_trips(vm: ViommuVm, calls: int, rounds: int) -> float:
    from qemu.qmp.legacy import QEMUMonitorProtocol

    print(f"1. query-status round trip ({rounds} rounds of {calls} calls):")
    bare = Bare(str(vm.qmp_path))
    msg = json.dumps({"execute": "query-status"}).encode() + b"\n"
    fb, fm = timed(lambda: bare.call(msg), calls, rounds)
    bare.close()
    row("bare socket (the floor)", fb, fm, fm)
    legacy = QEMUMonitorProtocol(str(vm.qmp_path))
    legacy.connect()
    b, m = timed(lambda: legacy.cmd("query-status"), calls, rounds)
    legacy.close()
    row("qemu.qmp sync API (before)", b, m, fm)
    with QmpSession.connect(str(vm.qmp_path)) as s:
        b, m = timed(lambda: s.cmd("query-status"), calls, rounds)
        row("QmpSession.cmd", b, m, fm)
        be = QmpBackend(s)
        b, m = timed(lambda: be.execute("query-status"), calls, rounds)
        row("QmpBackend.execute", b, m, fm)
    return fm


def one_command(vm: ViommuVm, calls: int, rounds: int, floor: float) -> None:
    print(f"2. one map or unmap of one page through QmpBackend ({rounds} x {calls // 2} pairs):")
    with QmpBackend(str(vm.qmp_path)) as hw:
        hw.domain_alloc(1, "paging")
        one = [MapEntry(0x100000, PG, 0, True, True)]

        def pair() -> None:
            hw.map(1, one)
            hw.unmap(1, [(0x100000, PG)])

        for mode in ("inline", "base64", "fd"):
            hw.payload = mode  # type: ignore[assignment]
            b, m = timed(pair, calls // 2, rounds)
            row(f"{mode}, per command", b / 2, m / 2, floor)
        hw.domain_free(1)


def scattered(n: int) -> tuple[list[MapEntry], list[tuple[int, int]]]:
    """n pages, every other one (no two merge), outputs anywhere in 4 MiB."""
    ents = [MapEntry((1 << 32) + 2 * k * PG, PG, (k % 1024) * PG, True, True) for k in range(n)]
    return ents, [(e.iova, e.size) for e in ents]


def rates(label: str, n: int, t_map: float, t_unmap: float, base: float | None) -> float:
    both = n / (t_map + t_unmap)
    ratio = f"  {both / base:7.1f}x inline" if base else ""
    print(
        f"  {label:34s} map {n / t_map:12,.0f} pages/s  unmap {n / t_unmap:12,.0f} pages/s"
        f"  both {both:12,.0f} pages/s{ratio}"
    )
    return both


def batches(vm: ViommuVm, pages: int, rounds: int) -> None:
    chunk = 1 << 16
    print(f"3. {pages} scattered 4 KiB pages mapped then unmapped, {chunk} a command:")
    ents, ranges = scattered(pages)
    with QmpBackend(str(vm.qmp_path)) as hw:
        hw.domain_alloc(1, "paging")
        # QEMU and QMP alone: records packed ahead, one memfd per command
        words, rwords = array("Q"), array("Q")
        for e in ents:
            words.extend((e.iova, e.size, e.addr, 3))
            rwords.extend((e.iova, e.size))
        if sys.byteorder != "little":
            words.byteswap()
            rwords.byteswap()
        mb, rb = memoryview(words).cast("B"), memoryview(rwords).cast("B")
        s = hw.session

        def raw(cmd: str, data: memoryview, rec: int) -> None:
            for i in range(0, pages, chunk):
                k = min(chunk, pages - i)
                fd = memfd_from(data[i * rec : (i + k) * rec])
                try:
                    s.execute_with_fd(
                        cmd, {"iommu": IOMMU, "domain": 1, "fd": "p", "count": k}, fd, "p"
                    )
                finally:
                    os.close(fd)

        def best_of(do_map: Callable[[], object], do_unmap: Callable[[], object]) -> list[float]:
            tm, tu = [], []
            for _ in range(rounds):
                t0 = time.perf_counter()
                do_map()
                t1 = time.perf_counter()
                do_unmap()
                tm.append(t1 - t0)
                tu.append(time.perf_counter() - t1)
            return [statistics.median(tm), statistics.median(tu)]

        tm, tu = best_of(
            lambda: raw("x-iommulab-map", mb, 32), lambda: raw("x-iommulab-unmap", rb, 16)
        )
        rates("QEMU + QMP alone (fd, packed ahead)", pages, tm, tu, None)
        hw.map_chunk = chunk
        base = None
        for mode in ("inline", "base64", "fd"):
            hw.payload = mode  # type: ignore[assignment]
            n = pages if mode != "inline" else min(pages, 4 * chunk)
            tm, tu = best_of(lambda: hw.map(1, ents[:n]), lambda: hw.unmap(1, ranges[:n]))  # noqa: B023
            both = rates(f"QmpBackend, {mode}", n, tm, tu, base)
            base = base or both


def all_ram(binary_mem: str) -> None:
    print("4. all RAM of a 4 GiB guest at IOVA = GPA, 4 KiB pages (no blocks), fd:")
    with ViommuVm(devices=1, mem_mib=4096) as vm, QmpBackend(str(vm.qmp_path)) as hw:
        t0 = time.perf_counter()
        ram = guest_ram(hw)
        hw.domain_alloc(1, "paging")
        for r in ram:
            hw.map_pages(1, r.start, r.start, r.size)
        t1 = time.perf_counter()
        total = sum(r.size for r in ram)
        print(
            f"  {total >> 20} MiB in {total // PG:,} pages, QmpBackend.map_pages:"
            f" {t1 - t0:6.2f} s  ({total // PG / (t1 - t0):,.0f} pages/s)"
        )
        hw.unmap(1, [(r.start, r.size) for r in ram])
        t0 = time.perf_counter()
        ents = [
            MapEntry(a, PG, a, True, True)
            for r in ram
            for a in range(r.start, r.start + r.size, PG)
        ]
        t1 = time.perf_counter()
        hw.map(1, ents)
        t2 = time.perf_counter()
        print(
            f"  the same as a list of MapEntry, QmpBackend.map: list {t1 - t0:6.2f} s +"
            f" map {t2 - t1:6.2f} s = {t2 - t0:6.2f} s  ({len(ents) / (t2 - t0):,.0f} pages/s)"
        )
        [d] = hw.cmd("x-iommulab-query", iommu=IOMMU, domain=1, mappings=False)["domains"]
        mem = hw.cmd("x-iommulab-query-hw-info", device=IOMMU)["limits"]["table-memory"]
        print(f"  domain {d['domain']}: page tables {mem >> 20} MiB ({binary_mem})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pages", type=int, default=1 << 18)
    ap.add_argument("--no-ram", action="store_true", help="skip the 4 GiB guest")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with ViommuVm(devices=1) as vm:
        floor = round_trips(vm, args.calls, args.rounds)
        one_command(vm, max(args.calls // 5, 20), args.rounds, floor)
        batches(vm, args.pages, args.rounds)
    if not args.no_ram:
        all_ram("4 KiB leaves only")
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
