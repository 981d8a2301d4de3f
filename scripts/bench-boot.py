#!/usr/bin/env python3
"""Boot time and NVMe O_DIRECT throughput per machine, measured in one run.

For each variant: boot the guest image with the built QEMU, run nvme-probe and
nvme-rw (random pattern, 1 MiB blocks, O_DIRECT write then read), and report

  boot_s   QEMU start -> the agent's first result (kernel + modules up)
  done_s   QEMU start -> the agent's DONE line (all scenarios finished)
  write / read MiB/s as timed inside the guest around dd
  cpu_s    CPU time (user + sys) QEMU used for the whole run: less sensitive to
           other load on the host than the wall-clock numbers
  load     the host's 1-minute load average after the run

The last columns are ratios to the first variant of this same run (so later
runs that add the vIOMMU compare against stock paths measured alongside).

  .venv/bin/python scripts/bench-boot.py [--size 256M] [--repeat 3] [--json out.json]
      [--variant pseries ...]

Numbers are medians over --repeat boots.  The machine must be otherwise idle
for the numbers to mean anything; nothing here asserts on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyctl.guest.image import build_image
from pyctl.guest.results import Scenario
from pyctl.guest.runner import guest_config, run_agent
from pyctl.qemu.launcher import create_raw_disk
from pyctl.qemu.machines import MACHINES, NvmeDisk


@dataclass(frozen=True)
class Variant:
    name: str
    machine: str
    options: dict[str, Any] = field(default_factory=dict)


VARIANTS = {
    v.name: v
    for v in (
        Variant("pseries", "pseries"),
        Variant("pseries-ddw-off", "pseries", {"ddw": False}),
        Variant("powernv9", "powernv9"),
        Variant("powernv10", "powernv10"),
        Variant("q35", "q35"),
    )
}


def measure(variant: Variant, size: str, workdir: Path, timeout: float) -> dict[str, float]:
    image = build_image(MACHINES[variant.machine].arch)
    disk = create_raw_disk(workdir / "nvme.raw", 512 << 20)
    cfg = guest_config(
        variant.machine,
        image,
        [Scenario("nvme-probe"), Scenario("nvme-rw", {"size": size})],
        NvmeDisk(disk),
        memory_mib=2048,
        **variant.options,
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = run_agent(cfg, workdir, timeout=timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if not run.ok or run.seconds_to_boot is None or run.seconds_to_done is None:
        failed = [r for r in run.results if r.get("ok") is not True]
        raise SystemExit(
            f"{variant.name}: run failed: {run.error or failed} (console log: {run.console})"
        )
    rw = run.result("nvme-rw")
    if rw["bs"] != 1 << 20:
        raise SystemExit(f"{variant.name}: size {size} is not timed with 1 MiB blocks")
    return {
        "boot_s": run.seconds_to_boot,
        "done_s": run.seconds_to_done,
        "write_mibs": float(rw["write_mibs"]),
        "read_mibs": float(rw["read_mibs"]),
        "qemu_cpu_s": cpu,
        "load1": os.getloadavg()[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="256M", help="nvme-rw size, a multiple of 1M")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--variant", action="append", choices=list(VARIANTS))
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--keep", type=Path, help="keep console logs under this directory")
    args = parser.parse_args()
    names = args.variant or list(VARIANTS)
    keys = ("boot_s", "done_s", "write_mibs", "read_mibs", "qemu_cpu_s", "load1")
    table: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="iommulab-bench-") as tmp:
        root = args.keep or Path(tmp)
        for name in names:
            runs = []
            for i in range(args.repeat):
                runs.append(measure(VARIANTS[name], args.size, root / f"{name}-{i}", args.timeout))
                print(f">> {name} #{i + 1}: {runs[-1]}", file=sys.stderr, flush=True)
            table[name] = {k: statistics.median(r[k] for r in runs) for k in keys}
    base = table[names[0]]
    print(
        f"nvme-rw {args.size}, 1 MiB blocks, O_DIRECT; median of {args.repeat}; "
        f"ratios vs {names[0]}"
    )
    print(
        "| variant | boot s | done s | write MiB/s | read MiB/s | write x | read x "
        "| QEMU cpu s | load |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in table.items():
        print(
            f"| {name} | {row['boot_s']:.1f} | {row['done_s']:.1f} | {row['write_mibs']:.0f} "
            f"| {row['read_mibs']:.0f} | {row['write_mibs'] / base['write_mibs']:.2f} "
            f"| {row['read_mibs'] / base['read_mibs']:.2f} | {row['qemu_cpu_s']:.1f} "
            f"| {row['load1']:.1f} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"size": args.size, "repeat": args.repeat, "variants": table}, indent=2)
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
