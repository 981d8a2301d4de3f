"""A pseries machine under ``-accel qtest``: RTAS calls, hypercalls, TCE windows, edu DMA.

What the sPAPR device tests and the sPAPR benchmark drive: RTAS through
qtest's ``rtas`` command, hypercalls through ``hcall`` (patch 0011), the
``x-iommulab-spapr-*`` QMP commands, and an ``edu`` device on PHB 0 (devfn
3.0) whose DMA goes through the PHB's TCE windows.  No guest runs.
"""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyctl.qemu.qtest import QTestError
from pyctl.qemu.qtest_machine import QtestMachine

BUID0 = 0x800000020000000
LIOBN0, LIOBN1 = 0x80000000, 0x80000001
ARGS, RETS = 0x4000000, 0x4001000  # RTAS argument/return buffers in RAM
TCE_LIST = 0x4002000  # H_PUT_TCE_INDIRECT list
DMA_PAGE = 0x5000000  # guest physical pages used by edu DMA
EDU_DEVFN = 3 << 3
EDU_PCI_BAR = 0x80000000  # PCI address given to edu's BAR0
EDU_BUF = 0x40000  # edu's internal DMA buffer, as edu addresses it

H_SUCCESS, H_PARAMETER = 0, -4
H_GET_TCE, H_PUT_TCE, H_STUFF_TCE, H_PUT_TCE_INDIRECT = 0x1C, 0x20, 0x138, 0x13C
RTAS_SUCCESS, RTAS_HW_ERROR, RTAS_PARAM_ERROR = 0, -1, -3
TCE_R, TCE_W = 1, 2


def s32(v: int) -> int:
    return v - (1 << 32) if v & (1 << 31) else v


def s64(v: int) -> int:
    return v - (1 << 64) if v & (1 << 63) else v


class PseriesQtest(QtestMachine):
    """One qemu-system-ppc64 pseries under qtest, with QMP and ``edu0`` on PHB 0.

    ``wrapper`` runs QEMU under another program (e.g. valgrind); ``timeout``
    bounds the wait for its sockets.
    """

    def __init__(
        self,
        binary: Path,
        extra: Sequence[str] = (),
        ram: int = 512 << 20,
        wrapper: Sequence[str] = (),
        timeout: float = 30.0,
    ) -> None:
        self.ram = ram
        super().__init__(
            binary,
            [
                "-machine", "pseries", "-m", str(ram >> 20),
                "-device", "spapr-vscsi,reg=0x2000",
                "-device", "edu,id=edu0,addr=03.0,dma_mask=0xffffffffffffffff",
                *extra,
            ],
            prefix="iommulab-spapr-",
            wrapper=wrapper,
            timeout=timeout,
        )  # fmt: skip

    # --- QMP ---
    def cmd(self, name: str, **args: Any) -> Any:
        return self.qmp.cmd(name, **{k.replace("_", "-"): v for k, v in args.items()})

    def events(self, name: str) -> list[dict[str, Any]]:
        return self.qmp.events(name)

    def phb(self, index: int = 0) -> dict[str, Any]:
        phbs: list[dict[str, Any]] = self.cmd("x-iommulab-spapr-query-phbs")
        return next(p for p in phbs if p["phb"] == index)

    def windows(self) -> list[dict[str, Any]]:
        res: list[dict[str, Any]] = self.phb()["windows"]
        return res

    def tces(self, liobn: int, start: int = 0, count: int | None = None) -> list[int]:
        args: dict[str, Any] = {"liobn": liobn, "start": start}
        if count is not None:
            args["count"] = count
        r = self.cmd("x-iommulab-spapr-read-tces", **args)
        raw = base64.b64decode(r["data"])
        if len(raw) != 8 * r["count"]:
            raise QTestError(f"read-tces: {len(raw)} bytes for {r['count']} TCEs")
        return list(struct.unpack(f">{r['count']}Q", raw))

    # --- RTAS and hypercalls ---
    def rtas(self, name: str, args: list[int], nret: int) -> list[int]:
        self.qt.memwrite(ARGS, b"".join(struct.pack(">I", a & 0xFFFFFFFF) for a in args))
        self.qt.memset(RETS, 4 * nret, 0xAA)
        self.qt.command(f"rtas {name} {len(args)} 0x{ARGS:x} {nret} 0x{RETS:x}")
        raw = self.qt.memread(RETS, 4 * nret)
        rets = list(struct.unpack(f">{nret}I", raw))
        rets[0] = s32(rets[0])
        return rets

    def hcall(self, opcode: int, *args: int) -> tuple[int, list[int]]:
        words = self.qt.command(
            f"hcall 0x{opcode:x} " + " ".join(f"0x{a & (2**64 - 1):x}" for a in args)
        )
        return s64(int(words[0])), [int(w) for w in words[1:]]

    def query(self, nret: int = 6) -> list[int]:
        return self.rtas("ibm,query-pe-dma-window", [0, BUID0 >> 32, BUID0 & 0xFFFFFFFF], nret)

    def create(self, page_shift: int, window_shift: int) -> list[int]:
        return self.rtas(
            "ibm,create-pe-dma-window",
            [0, BUID0 >> 32, BUID0 & 0xFFFFFFFF, page_shift, window_shift],
            4,
        )

    def remove(self, liobn: int) -> int:
        return self.rtas("ibm,remove-pe-dma-window", [liobn], 1)[0]

    def reset(self) -> int:
        return self.rtas("ibm,reset-pe-dma-window", [0, BUID0 >> 32, BUID0 & 0xFFFFFFFF], 1)[0]

    # --- edu on PHB 0 ---
    def cfg_write(self, reg: int, size: int, val: int) -> None:
        r = self.rtas(
            "ibm,write-pci-config",
            [(EDU_DEVFN << 8) | reg, BUID0 >> 32, BUID0 & 0xFFFFFFFF, size, val],
            1,
        )
        if r[0] != RTAS_SUCCESS:
            raise QTestError(f"ibm,write-pci-config {reg:#x}: RTAS status {r[0]}")

    def edu_setup(self) -> int:
        """Map edu's BAR0; returns its CPU address."""
        mtree = self.cmd("human-monitor-command", command_line="info mtree")
        m = re.search(
            r"([0-9a-f]+)-[0-9a-f]+ \(prio \d+, i/o\): "
            r"alias pci@800000020000000\.mmio32-alias",
            mtree,
        )
        if m is None:
            raise QTestError("PHB 0 32-bit MMIO window not found in info mtree")
        cpu_base = int(m.group(1), 16)
        self.cfg_write(0x10, 4, EDU_PCI_BAR)
        self.cfg_write(0x04, 2, 0x6)  # memory space + bus master
        bar = cpu_base + (EDU_PCI_BAR - 0x80000000)
        if self.qt.readl(bar) != 0x010000ED:
            raise QTestError("edu's BAR0 does not answer with its identification")
        return bar

    def edu_dma(self, bar: int, src: int, dst: int, count: int, to_memory: bool) -> None:
        self.qt.writeq(bar + 0x80, src)
        self.qt.writeq(bar + 0x88, dst)
        self.qt.writeq(bar + 0x90, count)
        self.qt.writeq(bar + 0x98, 1 | (2 if to_memory else 0))
        self.qt.clock_step(200_000_000)
        if self.qt.readq(bar + 0x98) & 1:
            raise QTestError("edu DMA did not run")
