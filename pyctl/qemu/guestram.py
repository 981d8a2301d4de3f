"""Where a running guest's RAM is, in guest-physical addresses, read over QMP.

A VMM maps all guest RAM at IOVA = guest physical so that a device behind the
IOMMU can DMA anywhere a guest driver points it.  QEMU's flattened view of the
"memory" address space (HMP ``info mtree -f``; QMP has no structured
equivalent) says exactly which ranges are RAM on any machine (q35's split
below/above 4 GiB, pseries at 0, hotplugged DIMMs) without per-machine rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

# "  0000000100000000-000000013fffffff (prio 0, ram): pc.ram @0000000080000000 KVM"
_LINE = re.compile(r"^\s+([0-9a-f]{16})-([0-9a-f]{16}) \(prio -?\d+, ([a-z]+)\): (\S+)")
_VIEW = re.compile(r"^FlatView #\d+")
_AS = re.compile(r'^ AS "([^"]+)"')


class QmpLike(Protocol):
    def cmd(self, cmd: str, **args: Any) -> Any: ...


@dataclass(frozen=True)
class RamRange:
    start: int
    size: int
    name: str  # the memory region, e.g. pc.ram, ppc_spapr.ram, a DIMM's backend

    @property
    def last(self) -> int:
        return self.start + self.size - 1


def parse_flatview(text: str, address_space: str = "memory") -> list[RamRange]:
    """RAM ranges of `address_space` in `info mtree -f` output, adjacent ones merged."""
    ranges: list[RamRange] = []
    in_view = False
    view_has_as = False
    for line in text.splitlines():
        if _VIEW.match(line):
            in_view, view_has_as = True, False
            continue
        m = _AS.match(line)
        if m and in_view:
            view_has_as = view_has_as or m.group(1) == address_space
            continue
        m = _LINE.match(line)
        if not (m and in_view and view_has_as) or m.group(3) != "ram":
            continue
        start, last = int(m.group(1), 16), int(m.group(2), 16)
        if ranges and ranges[-1].last + 1 == start and ranges[-1].name == m.group(4):
            prev = ranges.pop()
            ranges.append(RamRange(prev.start, last - prev.start + 1, prev.name))
        else:
            ranges.append(RamRange(start, last - start + 1, m.group(4)))
    return ranges


def guest_ram(qmp: QmpLike) -> list[RamRange]:
    """The guest's RAM ranges now (call again after memory hotplug)."""
    text = qmp.cmd("human-monitor-command", **{"command-line": "info mtree -f"})
    ranges = parse_flatview(str(text))
    if not ranges:
        raise RuntimeError("QEMU reported no RAM in the 'memory' address space")
    return ranges
