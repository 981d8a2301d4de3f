"""Guest RAM discovery from QEMU's flattened memory view."""

from __future__ import annotations

from typing import Any

import pytest

from pyctl.qemu.guestram import RamRange, guest_ram, parse_flatview

# Shape of `info mtree -f` on q35 with 3 GiB (RAM split around the PCI hole),
# with a second flat view (an IOMMU address space) that must be ignored.
Q35 = """\
FlatView #0
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 Root memory region: system
  0000000000000000-000000000009ffff (prio 0, ram): pc.ram
  00000000000a0000-00000000000bffff (prio 1, i/o): vga-lowmem
  00000000000c0000-00000000000dffff (prio 1, rom): pc.ram @00000000000c0000
  00000000000e0000-00000000000fffff (prio 1, rom): pc.bios @0000000000020000
  0000000000100000-000000007fffffff (prio 0, ram): pc.ram @0000000000100000
  00000000b0000000-00000000bfffffff (prio 0, i/o): pcie-mmcfg-mmio
  00000000fee00000-00000000feefffff (prio 4096, i/o): apic-msi
  0000000100000000-000000013fffffff (prio 0, ram): pc.ram @0000000080000000

FlatView #1
 AS "I/O", root: io
 Root memory region: io
  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan

FlatView #2
 AS "nvme", root: bus master container
 Root memory region: viommu-dma
  0000000000000000-00000000ffffffff (prio 0, ram): fake-ram-in-other-as
"""


def test_q35_ram_split_and_rom_excluded() -> None:
    assert parse_flatview(Q35) == [
        RamRange(0, 0xA0000, "pc.ram"),
        RamRange(0x100000, 0x7FF00000, "pc.ram"),
        RamRange(0x100000000, 0x40000000, "pc.ram"),
    ]


def test_adjacent_pieces_of_one_region_merge() -> None:
    text = (
        'FlatView #0\n AS "memory", root: system\n'
        "  0000000000000000-000000000fffffff (prio 0, ram): ppc_spapr.ram\n"
        "  0000000010000000-000000003fffffff (prio 0, ram): ppc_spapr.ram\n"
        "  0000000040000000-000000007fffffff (prio 0, ram): dimm0\n"
    )
    assert parse_flatview(text) == [
        RamRange(0, 0x40000000, "ppc_spapr.ram"),
        RamRange(0x40000000, 0x40000000, "dimm0"),
    ]


class FakeQmp:
    def __init__(self, text: str) -> None:
        self.text = text
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def cmd(self, cmd: str, **args: Any) -> Any:
        self.calls.append((cmd, args))
        return self.text


def test_guest_ram_asks_hmp_and_refuses_empty_answer() -> None:
    q = FakeQmp(Q35)
    assert guest_ram(q)[0].start == 0
    assert q.calls == [("human-monitor-command", {"command-line": "info mtree -f"})]
    with pytest.raises(RuntimeError, match="no RAM"):
        guest_ram(FakeQmp('FlatView #0\n AS "I/O", root: io\n'))
