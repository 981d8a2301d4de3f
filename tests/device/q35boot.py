"""Boot the q35 guest image with its NVMe behind iommulab-viommu.

QEMU starts paused; guest RAM (below 4 GiB) is mapped identity in a stage-2
domain over QMP; for ``nested`` a stage-1 identity table (4 KiB leaves, so
every DMA walks 4 + 4 levels) is loaded by ``-device loader`` into a range the
kernel is told not to use (``memmap=``) and a nested domain over the stage-2
domain is attached instead.  Then the guest runs its agent scenarios.
Used by test_q35_nvme.py and scripts/bench-viommu-nvme.py.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyctl.bench.dataplane import attach_all_ram
from pyctl.guest.image import build_image
from pyctl.guest.results import BOOT_PATTERN, DONE_PATTERN, Scenario, parse_done, parse_results
from pyctl.guest.runner import guest_config
from pyctl.qemu.launcher import LaunchError, QemuInstance, create_raw_disk
from pyctl.qemu.machines import NvmeDisk, qemu_build_dir

IOMMU = "viommu0"
S1_BASE = 0x30000000  # stage-1 tables (reserved with memmap=)
S1_RESERVE = 8 << 20  # tables for up to 2 GiB of RAM
RW = 1 | 2 | 4  # present, read, write


def stage1_identity(size: int, base: int = S1_BASE) -> bytes:
    """Stage-1 tables mapping [0, size) identity with 4 KiB leaves, at IPA base:
    L4 at base, L3 at +4K, then the L2 tables, then the L1 tables."""
    assert size % (2 << 20) == 0 and size <= 512 << 30
    n2 = (size + (1 << 30) - 1) >> 30
    n1 = size >> 21
    l2_at = 0x2000
    l1_at = l2_at + n2 * 0x1000
    out = bytearray(l1_at + n1 * 0x1000)
    struct.pack_into("<Q", out, 0, (base + 0x1000) | RW)
    for k in range(n2):
        struct.pack_into("<Q", out, 0x1000 + 8 * k, (base + l2_at + k * 0x1000) | RW)
    for i in range(n1):
        struct.pack_into("<Q", out, l2_at + 8 * i, (base + l1_at + i * 0x1000) | RW)
        leaves = [((i * 512 + j) << 12) | RW for j in range(512)]
        struct.pack_into("<512Q", out, l1_at + i * 0x1000, *leaves)
    return bytes(out)


@dataclass
class BootResult:
    results: list[dict[str, Any]]
    done: dict[str, Any] | None
    error: str | None
    counters: dict[str, Any] | None
    faults: list[dict[str, Any]]
    console: Path

    def result(self, name: str) -> dict[str, Any]:
        return next(r for r in self.results if r.get("scenario") == name)


def boot(
    workdir: Path,
    mode: str,
    scenarios: list[Scenario],
    memory_mib: int = 1024,
    timeout: float = 240.0,
) -> BootResult:
    """mode: 'none' (no vIOMMU), 'stage2' or 'nested'."""
    assert mode in ("none", "stage2", "nested")
    workdir.mkdir(parents=True, exist_ok=True)
    ram = memory_mib << 20
    if ram > 2 << 30:
        raise ValueError("q35 RAM above 2 GiB is not all below 4 GiB: not supported here")
    disk = create_raw_disk(workdir / "nvme.raw", 512 << 20)
    # -no-shutdown: QEMU stays up after the agent powers off, to be queried.
    extra: tuple[str, ...] = ("-no-shutdown",)
    append = ""
    if mode != "none":
        extra += ("-device", f"iommulab-viommu,id={IOMMU}")
    if mode == "nested":
        table = workdir / "stage1.bin"
        table.write_bytes(stage1_identity(ram))
        extra += ("-device", f"loader,file={table},addr={S1_BASE:#x},force-raw=on")
        append = f"memmap={S1_RESERVE >> 20}M${S1_BASE:#x}"
    cfg = guest_config(
        "q35",
        build_image("x86_64"),
        scenarios,
        NvmeDisk(disk),
        append=append,
        memory_mib=memory_mib,
        paused=True,
        extra_args=extra,
    )
    inst = QemuInstance(cfg, workdir / "qemu", qemu_build_dir())
    error = None
    counters: dict[str, Any] | None = None
    faults: list[dict[str, Any]] = []
    try:
        inst.start()
        q = inst.qmp
        if mode != "none":
            attach_all_ram(q, IOMMU, "nvme0", ram, S1_BASE if mode == "nested" else None)
        q.cmd("cont")
        inst.wait_for(BOOT_PATTERN, timeout)
        inst.wait_for(DONE_PATTERN, timeout)
        if mode != "none":
            res: Any = q.cmd("x-iommulab-query-counters", iommu=IOMMU)
            counters = res
            res = q.cmd("x-iommulab-query-faults", iommu=IOMMU)
            faults = res["faults"]
    except LaunchError as exc:
        error = str(exc)
    finally:
        inst.shutdown()
    text = inst.console_text()
    return BootResult(
        parse_results(text), parse_done(text), error, counters, faults, inst.console_path
    )
