"""Shared set-up of the boot tests whose NVMe DMA goes through iommulab stage 2
beneath the PHB's TCE tables (test_spapr_s2.py, test_spapr_hotplug.py).

Not a test module: avocado finds no Test class here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyctl.guest.image import build_image
from pyctl.guest.results import Scenario, cmdline_arg
from pyctl.qemu.launcher import create_raw_disk
from pyctl.qemu.machines import MACHINES, GuestConfig, NvmeDisk

DISK_BYTES = 256 << 20
MEMORY_MIB = 1024
S2 = "s2"
BOOT_TIMEOUT = float(os.environ.get("IOMMULAB_BOOT_TIMEOUT", "240"))


def stage2_guest(
    workdir: Path,
    machine: str,
    scenarios: list[Scenario],
    serial: str,
    devices: Sequence[str] = (f"iommulab-spapr-s2,id={S2}",),
    append: str = "",
    extra_args: Sequence[str] = (),
    disk_bytes: int = DISK_BYTES,
    **kwargs: Any,
) -> tuple[GuestConfig, Path]:
    """A paused guest with NVMe (on a fresh disk of ``disk_bytes`` in ``workdir``) and
    ``-device`` each of ``devices``; it pauses at power-off so the device state can be
    read afterwards."""
    image = build_image(MACHINES[machine].arch)
    disk = create_raw_disk(workdir / "nvme.raw", disk_bytes)
    cfg = GuestConfig(
        machine=machine,
        kernel=image.kernel,
        initrd=image.initrd,
        append=" ".join(x for x in (cmdline_arg(scenarios), append) if x),
        nvme=NvmeDisk(disk, serial=serial),
        memory_mib=kwargs.pop("memory_mib", MEMORY_MIB),
        paused=True,
        extra_args=(
            *[a for d in devices for a in ("-device", d)],
            *extra_args,
            "-action", "shutdown=pause",
        ),
        **kwargs,
    )  # fmt: skip
    return cfg, disk


def attach_identity_stage2(q: Any, memory_mib: int = MEMORY_MIB) -> None:
    """Stage-2 domain 1 maps all guest RAM at IPA = PA; the PHB is attached to it."""
    q.cmd("x-iommulab-domain-alloc", iommu=S2, domain=1, type="paging")
    q.cmd(
        "x-iommulab-map",
        iommu=S2,
        domain=1,
        mappings=[{"iova": 0, "size": memory_mib << 20, "addr": 0, "read": True, "write": True}],
    )
    q.cmd("x-iommulab-attach", iommu=S2, device=S2, mode="domain", domain=1)
