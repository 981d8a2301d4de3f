#!/usr/bin/env python3
"""q35 NVMe O_DIRECT throughput with iommulab-viommu (stage 2 and nested) divided by the
same without a vIOMMU: the q35 lab part of scripts/bench-lab.py, without the page.

Usage: scripts/bench-viommu-nvme.py [SIZE] [ROUNDS]   (default 256M 1)
Prints the medians (min-max) and the ratios to no vIOMMU, measured in this run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    size = sys.argv[1] if len(sys.argv) > 1 else "256M"
    rounds = sys.argv[2] if len(sys.argv) > 2 else "1"
    lab = str(REPO / "scripts/bench-lab.py")
    argv = [sys.executable, lab, "--size-1m", size, "--rounds", rounds, "--no-doc"]
    argv += ["--skip", "core,dma,control", "--json", str(REPO / "results/bench-viommu-nvme.json")]
    for cfg in ("q35-none", "q35-lab-s2", "q35-lab-nested"):
        argv += ["--config", cfg]
    os.execv(sys.executable, argv)


if __name__ == "__main__":
    sys.exit(main())
