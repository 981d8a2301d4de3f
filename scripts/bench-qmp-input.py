#!/usr/bin/env python3
"""QMP input cost: QEMU with hw/qemu-patches/0017 (input read in chunks) vs without.

Two builds side by side in one run (rounds interleaved, the first round dropped
as warm-up), each a paused q35 with the iommulab vIOMMU.  Commands go as raw
bytes over a second QMP monitor (a UNIX socket), so what is measured is QEMU,
not a client library:

- query-status                     the floor: one small command
- query-status + 40,000 spaces     the per-byte cost alone
- x-iommulab-map of 512 4 KiB pages scattered (inline JSON, ~40 KB), each
  followed by an untimed unmap of the span

Per build and command: the median and min-max over rounds of the mean round
trip, QEMU's CPU time per command (/proc/PID/stat, all threads, in clock ticks:
coarse, averaged over all rounds), and the ratio unpatched / patched.  With
--strace, the syscalls QEMU makes for 5 padded commands (strace -c attached to
all its threads), which shows where the per-byte cost went: one recvmsg and
one poll per byte without the patch.
Load averages are printed before and after.  Not a test: nothing is asserted.

Usage: .venv/bin/python scripts/bench-qmp-input.py --unpatched DIR [--patched DIR]
       [--rounds 5] [--calls 200] [--heavy-calls 5] [--strace]
(DIR: a build directory holding qemu-system-x86_64; --patched defaults to
$IOMMULAB_QEMU_BUILD or the cache's qemu-build.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyctl.qemu.machines import qemu_build_dir
from pyctl.qemu.process import QemuProcess

IOMMU = "viommu0"
PAGE = 4096
BATCH = 512
PAD = 40_000
TICK = os.sysconf("SC_CLK_TCK")


class Raw:
    """Raw bytes to a QMP monitor socket; one answer line back per command."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(str(path))
        self.buf = b""
        self.answer()  # greeting
        self.call(b'{"execute": "qmp_capabilities"}')

    def answer(self) -> dict[str, object]:
        while True:
            while b"\n" not in self.buf:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    raise SystemExit("QEMU closed the monitor")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            msg: dict[str, object] = json.loads(line)
            if "event" not in msg:
                return msg

    def call(self, data: bytes) -> None:
        self.sock.sendall(data)
        msg = self.answer()
        if "error" in msg:
            raise SystemExit(f"QEMU refused {data[:60]!r}...: {msg['error']}")


def execute(name: str, **args: object) -> bytes:
    return json.dumps({"execute": name, "arguments": args}).encode()


MAP = execute(
    "x-iommulab-map",
    iommu=IOMMU,
    domain=1,
    mappings=[
        {"iova": 2 * i * PAGE, "size": PAGE, "addr": i * PAGE, "read": True, "write": True}
        for i in range(BATCH)
    ],
)
UNMAP = execute(
    "x-iommulab-unmap", iommu=IOMMU, domain=1, ranges=[{"iova": 0, "size": 2 * BATCH * PAGE}]
)
QUERY = b'{"execute": "query-status"}'
PADDED = QUERY[:-1] + b" " * PAD + b"}"


class Build:
    def __init__(self, name: str, build_dir: Path, workdir: Path) -> None:
        self.name = name
        binary = build_dir / "qemu-system-x86_64"
        if not binary.is_file():
            raise SystemExit(f"{binary}: not built")
        argv = [str(binary), "-M", "q35", "-accel", "qtest", "-nodefaults", "-display", "none"]
        argv += ["-S", "-device", f"iommulab-viommu,id={IOMMU}"]
        self.proc = QemuProcess(argv, workdir / name, monitor_path=workdir / f"{name}.sock")
        self.proc.start()
        self.proc.qmp.cmd("x-iommulab-domain-alloc", iommu=IOMMU, domain=1, type="paging")
        self.raw = Raw(workdir / f"{name}.sock")
        assert self.proc.proc is not None
        self.pid = self.proc.proc.pid

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime, all threads


WORKLOADS: dict[str, tuple[bytes, bytes | None]] = {
    "query-status": (QUERY, None),
    f"query-status + {PAD:,} spaces": (PADDED, None),
    f"x-iommulab-map {BATCH} x 4 KiB": (MAP, UNMAP),
}


def run_round(b: Build, calls: dict[str, int]) -> dict[str, tuple[float, float]]:
    """Per workload: mean wall-clock and QEMU CPU time per command, in microseconds."""
    out = {}
    for name, (data, after) in WORKLOADS.items():
        wall = 0.0
        cpu0 = b.cpu_s()
        for _ in range(calls[name]):
            t0 = time.perf_counter()
            b.raw.call(data)
            wall += time.perf_counter() - t0
            if after is not None:
                b.raw.call(after)
        cpu = b.cpu_s() - cpu0  # includes the untimed unmaps: an upper bound
        out[name] = (wall / calls[name] * 1e6, cpu / calls[name] * 1e6)
    return out


def strace_counts(b: Build, workload: Callable[[], None]) -> dict[str, int]:
    """Syscall counts of all of QEMU's threads while ``workload`` runs."""
    with tempfile.NamedTemporaryFile(suffix=".strace") as f:
        st = subprocess.Popen(
            ["strace", "-f", "-c", "-o", f.name, "-p", str(b.pid)],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert st.stderr is not None
        attached, threads = 0, len(os.listdir(f"/proc/{b.pid}/task"))
        while attached < threads:  # "Process N attached [with M threads]"
            line = st.stderr.readline()
            if not line:
                raise SystemExit("strace could not attach (ptrace not permitted?)")
            m = re.search(r"attached(?: with (\d+) threads)?", line)
            attached += int(m.group(1) or 1) if m else 0
        workload()
        st.send_signal(signal.SIGINT)
        st.wait(timeout=60)
        counts = {}
        for line in Path(f.name).read_text().splitlines():
            m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
            if m and m.group(2) != "total":
                counts[m.group(2)] = int(m.group(1))
        return counts


Results = dict[str, dict[str, list[tuple[float, float]]]]


def report(builds: list[Build], res: Results, calls: dict[str, int], rounds: int) -> None:
    print(f"\nround trip per command, {rounds} rounds (medians, min-max):")
    for w in WORKLOADS:
        print(f"  {w} ({calls[w]} per round)")
        med = {}
        for b in builds:
            wall = [v[0] for v in res[b.name][w]]
            cpu = statistics.mean(v[1] for v in res[b.name][w])  # in ticks: mean of all
            med[b.name] = statistics.median(wall)
            span = f"({min(wall):.1f}-{max(wall):.1f})"
            print(f"    {b.name:10s} {med[b.name]:10.1f} us  {span}   QEMU CPU {cpu:9.1f} us")
        print(f"    ratio unpatched/patched: {med['unpatched'] / med['patched']:.1f}x")


def report_strace(builds: list[Build], n: int = 5) -> None:
    print(f"\nQEMU syscalls for {n} x query-status + {PAD:,} spaces (strace -c -f):")
    for b in builds:

        def padded(b: Build = b) -> None:
            for _ in range(n):
                b.raw.call(PADDED)

        c = strace_counts(b, padded)
        top = ", ".join(f"{k} {v}" for k, v in sorted(c.items(), key=lambda kv: -kv[1])[:6])
        print(f"  {b.name:10s} recvmsg/command {c.get('recvmsg', 0) / n:9.1f}   {top}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--unpatched", type=Path, required=True)
    ap.add_argument("--patched", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=200, help="query-status calls per round")
    ap.add_argument("--heavy-calls", type=int, default=5, help="padded and map calls per round")
    ap.add_argument("--strace", action="store_true")
    args = ap.parse_args()
    calls = {name: args.heavy_calls for name in WORKLOADS}
    calls["query-status"] = args.calls
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="bench-qmp-input-") as tmp:
        builds: list[Build] = []
        try:
            builds.append(Build("unpatched", args.unpatched, Path(tmp)))
            builds.append(Build("patched", args.patched or qemu_build_dir(), Path(tmp)))
            res: Results = {b.name: {w: [] for w in WORKLOADS} for b in builds}
            for r in range(args.rounds + 1):
                for b in builds if r % 2 else builds[::-1]:
                    for w, v in run_round(b, calls).items():
                        if r:  # round 0 is the warm-up
                            res[b.name][w].append(v)
            report(builds, res, calls, args.rounds)
            if args.strace:
                report_strace(builds)
        finally:
            for b in builds:
                b.raw.sock.close()
                b.proc.shutdown()
    print(f"\nload average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
