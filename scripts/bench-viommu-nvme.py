#!/usr/bin/env python3
"""q35 NVMe O_DIRECT throughput with iommulab-viommu (stage 2 and nested)
divided by the same without a vIOMMU: same QEMU binary, same run.

Each configuration boots the guest image once and runs the agent's nvme-rw
(O_DIRECT dd, 1 MiB blocks) on SIZE bytes; the rates are the agent's.  Goal
(issue 4): ratios >= 0.90.  Usage: scripts/bench-viommu-nvme.py [SIZE] [ROUNDS]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests/device")]

from q35boot import boot  # noqa: E402

from pyctl.guest.results import Scenario  # noqa: E402


def main() -> int:
    size = sys.argv[1] if len(sys.argv) > 1 else "256M"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    rates: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-viommu-") as tmp:
        for rnd in range(rounds):
            for mode in ("none", "stage2", "nested"):
                r = boot(
                    Path(tmp) / f"{mode}-{rnd}",
                    mode,
                    [Scenario("nvme-rw", {"size": size})],
                    memory_mib=2048,
                )
                if r.error or not r.results or not r.result("nvme-rw").get("ok"):
                    print(f"{mode}: failed: {r.error} {r.results} (console {r.console})")
                    return 1
                rw = r.result("nvme-rw")
                m = rates.setdefault(mode, {"write": [], "read": []})
                m["write"].append(float(rw["write_mibs"]))
                m["read"].append(float(rw["read_mibs"]))
                extra = ""
                if r.counters:
                    c = r.counters
                    extra = f"  (iotlb hits {c['hits']}, walks {c['walks']}, faults {c['faults']})"
                print(
                    f"round {rnd} {mode:7s} write {rw['write_mibs']} MiB/s "
                    f"read {rw['read_mibs']} MiB/s{extra}",
                    flush=True,
                )
    base = {k: statistics.median(v) for k, v in rates["none"].items()}
    print(f"nvme-rw {size}, O_DIRECT 1 MiB, median of {rounds} round(s):")
    for mode in ("stage2", "nested"):
        for kind in ("write", "read"):
            ratio = statistics.median(rates[mode][kind]) / base[kind]
            print(
                f"  {mode:7s} {kind:5s} {statistics.median(rates[mode][kind]):8.1f} MiB/s"
                f"  / no vIOMMU {base[kind]:8.1f} MiB/s = {ratio:.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
