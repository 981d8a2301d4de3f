"""Instructions QEMU spends on one 4 KiB DMA, per configuration, under callgrind.

A q35 machine under qtest with an ``edu`` device (no guest runs): edu copies
4 KiB from its buffer into guest memory, through no IOMMU, through an
iommulab stage-2 domain mapping all RAM, through a nested domain (an
identity stage 1 with 4 KiB leaves over that stage 2), or through QEMU's
intel-iommu with a 4-level second-level table mapping the page (legacy mode,
tables written as a guest driver would).  virtio-iommu is not measured: its
mappings come through a virtqueue, which qtest cannot drive simply.  Collection is on only
inside ``edu_dma_timer`` (the DMA: translation and copy), so QEMU's start-up,
qtest and QMP cost nothing and the counts repeat exactly run to run.  The
figure is the mean over ``dmas + 1`` DMAs of the same page: the first (a
read, from memory into edu) walks the tables, the others (writes back) hit
the IOTLB (the walk alone is bench-core.sh's); the page must come back whole.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from pyctl.qemu.qtest_machine import QtestMachine

EDU_DEVFN = 3 << 3
EDU_BAR = 0xFE000000
EDU_BUF = 0x40000
RAM = 256 << 20
DMA_PAGE = 0x1000000
S1_BASE = 0x8000000  # the nested set-up's stage-1 tables, in RAM the qtest machine never uses
FUNC = "edu_dma_timer"
Q35_MODES = ("none", "stage2", "nested", "intel")
# intel-iommu (VT-d, legacy mode): registers and the tables the qtest side writes
DMAR = 0xFED90000
DMAR_GCMD, DMAR_GSTS, DMAR_RTADDR = 0x18, 0x1C, 0x20
GCMD_TE, GCMD_SRTP = 1 << 31, 1 << 30
VTD_TABLES = 0x9000000  # root table, context table, 4 page-table levels: 4 KiB each
VTD_IOVA = 0x2000000  # intel-iommu maps this IOVA to DMA_PAGE: a DMA lands only if translated


def _cfg(vm: QtestMachine, reg: int, val: int | None = None) -> int:
    vm.qt.outl(0xCF8, 0x80000000 | (EDU_DEVFN << 8) | reg)
    if val is None:
        return vm.qt.inl(0xCFC)
    vm.qt.outl(0xCFC, val)
    return val


def _lab(vm: QtestMachine, mode: str, stage1_table: Callable[[int, int], bytes]) -> None:
    q = vm.qmp
    q.cmd("x-iommulab-domain-alloc", iommu="viommu0", domain=1, type="paging")
    q.cmd(
        "x-iommulab-map",
        iommu="viommu0",
        domain=1,
        mappings=[{"iova": 0, "size": RAM, "addr": 0, "read": True, "write": True}],
    )
    domain = 1
    if mode == "nested":
        vm.qt.memwrite(S1_BASE, stage1_table(RAM, S1_BASE))
        q.cmd(
            "x-iommulab-domain-alloc",
            iommu="viommu0", domain=2, type="nested", parent=1, **{"s1-root": S1_BASE},
        )  # fmt: skip
        domain = 2
    q.cmd("x-iommulab-attach", iommu="viommu0", device="edu0", mode="domain", domain=domain)


def _intel(vm: QtestMachine) -> None:
    """Map VTD_IOVA to DMA_PAGE in a 4-level second-level table of domain 1 and enable
    translation, the way a guest's intel-iommu driver in legacy mode would."""
    root, ctx, l4 = VTD_TABLES, VTD_TABLES + 0x1000, VTD_TABLES + 0x2000
    for i in range(6):
        vm.qt.memset(VTD_TABLES + i * 0x1000, 0x1000, 0)
    vm.qt.writeq(root, ctx | 1)  # bus 0: present
    vm.qt.writeq(ctx + EDU_DEVFN * 16, l4 | 1)  # present, translation type 0
    vm.qt.writeq(ctx + EDU_DEVFN * 16 + 8, 2 | (1 << 8))  # 48-bit AGAW (4 levels), domain 1
    table = l4
    for level in (4, 3, 2):
        nxt = table + 0x1000
        vm.qt.writeq(table + 8 * ((VTD_IOVA >> (12 + 9 * (level - 1))) & 511), nxt | 3)
        table = nxt
    vm.qt.writeq(table + 8 * ((VTD_IOVA >> 12) & 511), DMA_PAGE | 3)  # read + write
    vm.qt.writeq(DMAR + DMAR_RTADDR, root)
    vm.qt.writel(DMAR + DMAR_GCMD, GCMD_SRTP)
    if not vm.qt.readl(DMAR + DMAR_GSTS) & GCMD_SRTP:
        raise RuntimeError("intel-iommu did not take the root table pointer")
    vm.qt.writel(DMAR + DMAR_GCMD, GCMD_TE)
    if not vm.qt.readl(DMAR + DMAR_GSTS) & GCMD_TE:
        raise RuntimeError("intel-iommu did not enable translation")


def q35_dma_instructions(
    binary: Path, mode: str, stage1_table: Callable[[int, int], bytes], dmas: int = 20
) -> int:
    """Instructions in one 4 KiB edu DMA into memory (inclusive of what it calls)."""
    if mode not in Q35_MODES:
        raise ValueError(f"mode {mode!r}: one of {Q35_MODES}")
    with tempfile.TemporaryDirectory(prefix="iommulab-bench-dma-") as d:
        out = Path(d) / "callgrind.out"
        wrapper = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            "--collect-atstart=no", f"--toggle-collect={FUNC}",
        ]  # fmt: skip
        args = ["-machine", "q35", "-m", str(RAM >> 20)]
        if mode == "intel":
            args += ["-device", "intel-iommu,intremap=off"]
        elif mode != "none":
            args += ["-device", "iommulab-viommu,id=viommu0"]
        args += ["-device", "edu,id=edu0,addr=03.0,dma_mask=0xffffffffffffffff"]
        vm = QtestMachine(binary, args, wrapper=wrapper, timeout=600.0)
        try:
            if mode == "intel":
                _intel(vm)
            elif mode != "none":
                _lab(vm, mode, stage1_table)
            if _cfg(vm, 0) != 0x11E81234:
                raise RuntimeError("edu is not at 00:03.0")
            _cfg(vm, 0x10, EDU_BAR)
            _cfg(vm, 0x04, 0x6)  # memory space + bus master
            iova = VTD_IOVA if mode == "intel" else DMA_PAGE
            pattern = bytes((i * 7 + 1) & 255 for i in range(4096))
            vm.qt.memwrite(DMA_PAGE, pattern)
            for n in range(dmas + 1):  # the first reads the page into edu, the rest write it back
                if n == 1:
                    vm.qt.memset(DMA_PAGE, 4096, 0)
                src, dst = (iova, EDU_BUF) if n == 0 else (EDU_BUF, iova)
                vm.qt.writeq(EDU_BAR + 0x80, src)
                vm.qt.writeq(EDU_BAR + 0x88, dst)
                vm.qt.writeq(EDU_BAR + 0x90, 4096)
                vm.qt.writeq(EDU_BAR + 0x98, 1 | (0 if n == 0 else 2))
                vm.qt.clock_step(200_000_000)
                if vm.qt.readq(EDU_BAR + 0x98) & 1:
                    raise RuntimeError("edu DMA did not run")
            # the bytes went out and came back through the translation
            if vm.qt.memread(DMA_PAGE, 4096) != pattern:
                raise RuntimeError(f"{mode}: the DMA did not land at {DMA_PAGE:#x}")
        finally:
            vm.close()
        text = subprocess.run(
            ["callgrind_annotate", "--inclusive=yes", str(out)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    return annotate_count(text, FUNC) // (dmas + 1)


def annotate_count(text: str, func: str) -> int:
    """The inclusive instruction count of ``func`` in callgrind_annotate's output."""
    m = re.search(rf"^\s*([\d,]+) \([^)]*\)\s+\S*:{re.escape(func)}\b", text, re.MULTILINE)
    if m is None:
        raise RuntimeError(f"{func} not in the callgrind profile")
    return int(m.group(1).replace(",", ""))
