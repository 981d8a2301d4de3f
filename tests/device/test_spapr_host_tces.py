"""Host-side TCE programming of a pseries PE: x-iommulab-spapr-put-tces, window owners,
the PE's BLOCKED state (x-iommulab-spapr-set-blocked).  qtest, no guest.

Two PHBs, an ``edu`` on each (edu0 on PHB 0, edu1 on PHB 1): DMA through windows the
host side programmed lands exactly where the TCEs point (bytes checked, neighbours
untouched), a refused DMA is recorded and touches nothing, every refused command leaves
the TCEs (read back in bulk) and the table memory as they were.  TCEs are given in the
three payload forms: inline, base64 ``data`` (little-endian) and a memfd passed as ``fd``.
"""

from __future__ import annotations

import base64
import os
import random
import re
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import qemu_binary
from qemu.qmp import ExecuteError

from pyctl.qemu.pseries_qtest import (
    BUID0,
    EDU_BUF,
    EDU_DEVFN,
    EDU_PCI_BAR,
    LIOBN0,
    RTAS_SUCCESS,
    PseriesQtest,
)
from pyctl.qemu.qmp import memfd_from

MiB, GiB = 1 << 20, 1 << 30
RAM = 512 * MiB
PAGE = 4096
SRC, DST, OTHER = 0x5000000, 0x5200000, 0x5400000  # guest physical pages
VIO_LIOBN = 0x2000
FORMS = ("inline", "data", "fd")


class TwoPhbs(PseriesQtest):
    """pseries with PHB 1 and edu1 on it, next to edu0 on PHB 0."""

    def __init__(self) -> None:
        super().__init__(
            qemu_binary("ppc64"),
            [
                "-device", "spapr-pci-host-bridge,index=1,id=phb1",
                "-device", "edu,id=edu1,bus=phb1.0,addr=03.0,dma_mask=0xffffffffffffffff",
            ],
            ram=RAM,
        )  # fmt: skip

    def put(self, liobn: int, start: int, tces: list[int], form: str = "inline") -> Any:
        if form == "inline":
            return self.cmd("x-iommulab-spapr-put-tces", liobn=liobn, start=start, tces=tces)
        raw = struct.pack(f"<{len(tces)}Q", *tces)
        if form == "data":
            data = base64.b64encode(raw).decode()
            return self.cmd("x-iommulab-spapr-put-tces", liobn=liobn, start=start, data=data)
        return self.put_fd(memfd_from(raw), liobn, start, len(tces))

    def put_fd(self, fd: int, liobn: int, start: int, count: int | None) -> Any:
        args: dict[str, Any] = {"liobn": liobn, "start": start, "fd": "tces"}
        if count is not None:
            args["count"] = count
        try:
            return self.qmp.execute_with_fd("x-iommulab-spapr-put-tces", args, fd, "tces")
        finally:
            os.close(fd)

    def edu_on(self, phb: int) -> int:
        """Map the BAR of the edu on PHB ``phb``; its CPU address."""
        if phb == 0:
            return self.edu_setup()
        buid = BUID0 + phb
        mtree = self.cmd("human-monitor-command", command_line="info mtree")
        m = re.search(
            rf"([0-9a-f]+)-[0-9a-f]+ \(prio \d+, i/o\): alias pci@{buid:x}\.mmio32-alias", mtree
        )
        assert m is not None
        for reg, size, val in ((0x10, 4, EDU_PCI_BAR), (0x04, 2, 0x6)):
            args = [(EDU_DEVFN << 8) | reg, buid >> 32, buid & 0xFFFFFFFF, size, val]
            assert self.rtas("ibm,write-pci-config", args, 1)[0] == RTAS_SUCCESS
        bar = int(m.group(1), 16) + (EDU_PCI_BAR - 0x80000000)
        assert self.qt.readl(bar) == 0x010000ED
        return bar


@pytest.fixture
def vm() -> Iterator[TwoPhbs]:
    p = TwoPhbs()
    try:
        yield p
    finally:
        p.close()


def err(vm: TwoPhbs, name: str, **args: Any) -> str:
    with pytest.raises(ExecuteError) as e:
        vm.cmd(name, **args)
    return str(e.value)


def faults(vm: TwoPhbs) -> list[tuple[int, int, str, str]]:
    """(phb, iova, access, reason) of the TCE faults recorded since the last call."""
    f = vm.cmd("x-iommulab-query-faults", clear=True)["faults"]
    return [(x["phb"], x["iova"], x["access"], x["reason"]) for x in f]


def pattern(seed: int, n: int = PAGE) -> bytes:
    return bytes((i * 13 + seed) & 0xFF for i in range(n))


def dma_copy(vm: TwoPhbs, bar: int, src_bus: int, dst_bus: int, n: int = PAGE) -> None:
    """edu reads ``n`` bytes at bus address ``src_bus`` and writes them to ``dst_bus``."""
    vm.edu_dma(bar, src_bus, EDU_BUF, n, to_memory=False)
    vm.edu_dma(bar, EDU_BUF, dst_bus, n, to_memory=True)


# --- DMA through host-programmed TCEs ---


@pytest.mark.parametrize("form", FORMS)
def test_dma_lands_where_the_tces_point(vm: TwoPhbs, form: str) -> None:
    bar = vm.edu_on(0)
    # bus pages 8 and 9 -> SRC (read only) and DST + 3 pages (read/write); 10 clears
    tces = [SRC | 1, (DST + 3 * PAGE) | 3, 0]
    assert vm.put(LIOBN0, 8, tces, form) == {"liobn": LIOBN0, "start": 8, "count": 3}
    assert vm.tces(LIOBN0, 7, 5) == [0, *tces, 0]
    vm.qt.memwrite(SRC, pattern(1))
    vm.qt.memset(DST, 8 * PAGE, 0xA5)
    dma_copy(vm, bar, 8 * PAGE, 9 * PAGE)
    assert vm.qt.memread(DST + 3 * PAGE, PAGE) == pattern(1)
    # exactly there: the pages around it keep their canary
    assert vm.qt.memread(DST, 3 * PAGE) == b"\xa5" * 3 * PAGE
    assert vm.qt.memread(DST + 4 * PAGE, 4 * PAGE) == b"\xa5" * 4 * PAGE
    assert faults(vm) == []
    # a second put moves bus page 9 elsewhere: the next DMA follows it
    vm.put(LIOBN0, 9, [OTHER | 2], form)
    vm.qt.memset(OTHER, PAGE, 0)
    vm.edu_dma(bar, EDU_BUF, 9 * PAGE, PAGE, to_memory=True)
    assert vm.qt.memread(OTHER, PAGE) == pattern(1)
    assert vm.windows()[0]["entries-in-use"] == 2


def test_unmapped_and_read_only_fault_and_touch_nothing(vm: TwoPhbs) -> None:
    bar = vm.edu_on(0)
    vm.put(LIOBN0, 0, [SRC | 1, 0])
    vm.qt.memwrite(SRC, pattern(2))
    vm.edu_dma(bar, EDU_BUF, 0, PAGE, to_memory=True)  # write through a read-only TCE
    vm.edu_dma(bar, PAGE, EDU_BUF, 64, to_memory=False)  # read of an empty entry
    assert vm.qt.memread(SRC, PAGE) == pattern(2)
    assert faults(vm) == [(0, 0, "write", "permission"), (0, PAGE, "read", "not-present")]
    assert vm.tces(LIOBN0, 0, 2) == [SRC | 1, 0]


def test_blocked_faults_everything_and_unblock_restores(vm: TwoPhbs) -> None:
    bar = vm.edu_on(0)
    vm.put(LIOBN0, 0, [SRC | 3, DST | 3])
    w = vm.cmd("x-iommulab-spapr-window-create", page_shift=16, size=GiB)  # a second window
    vm.put(w["liobn"], 0, [OTHER | 3])
    before = {p["phb"]: p for p in vm.cmd("x-iommulab-spapr-query-phbs")}
    vm.qt.memwrite(SRC, pattern(3))
    vm.qt.memset(DST, PAGE, 0x11)
    vm.qt.memset(OTHER, PAGE, 0x22)
    vm.cmd("x-iommulab-spapr-set-blocked", blocked=True)
    assert vm.phb()["blocked"] and not vm.phb(1)["blocked"]
    assert vm.cmd("x-iommulab-query-hw-info", device="edu0")["spapr-pe"]["blocked"]
    assert not vm.cmd("x-iommulab-query-hw-info", device="edu1")["spapr-pe"]["blocked"]
    vm.cmd("x-iommulab-spapr-set-blocked", blocked=True)  # again: not an error
    vm.edu_dma(bar, EDU_BUF, PAGE, 64, to_memory=True)  # write to a read/write TCE
    vm.edu_dma(bar, 0, EDU_BUF, 64, to_memory=False)  # read of a readable TCE
    vm.edu_dma(bar, EDU_BUF, w["bus-offset"], 64, to_memory=True)  # the 64-bit window
    assert faults(vm) == [
        (0, PAGE, "write", "blocked"),
        (0, 0, "read", "blocked"),
        (0, w["bus-offset"], "write", "blocked"),
    ]
    assert vm.qt.memread(DST, PAGE) == b"\x11" * PAGE
    assert vm.qt.memread(OTHER, PAGE) == b"\x22" * PAGE
    # windows and TCEs kept (only the fault counts moved); the host may still program
    after = {p["phb"]: p for p in vm.cmd("x-iommulab-spapr-query-phbs")}
    assert (before[0].pop("blocked"), after[0].pop("blocked")) == (False, True)
    for p in (before[0], after[0]):
        assert [x.pop("faults") for x in p["windows"]] == ([0, 0] if p is before[0] else [2, 1])
    assert after == before
    assert vm.tces(LIOBN0, 0, 2) == [SRC | 3, DST | 3]
    # kept across the host's window reset (the host side's state)
    vm.cmd("x-iommulab-spapr-window-reset")
    assert vm.phb()["blocked"]
    vm.put(LIOBN0, 0, [SRC | 3, DST | 3])
    vm.cmd("x-iommulab-spapr-set-blocked", blocked=False)
    assert not vm.phb()["blocked"]
    dma_copy(vm, bar, 0, PAGE)
    assert vm.qt.memread(DST, PAGE) == pattern(3)
    assert faults(vm) == []
    assert "no pseries PHB with index 7" in err(
        vm, "x-iommulab-spapr-set-blocked", phb=7, blocked=True
    )


def test_two_pes_stay_separate(vm: TwoPhbs) -> None:
    bar0, bar1 = vm.edu_on(0), vm.edu_on(1)
    liobn1 = vm.phb(1)["liobns"][0]
    assert liobn1 != LIOBN0
    vm.put(LIOBN0, 4, [SRC | 3])
    vm.put(liobn1, 5, [DST | 3], "data")
    assert vm.tces(LIOBN0, 5, 1) == [0] and vm.tces(liobn1, 4, 1) == [0]
    vm.qt.memwrite(SRC, pattern(4))
    vm.qt.memwrite(DST, pattern(5))
    vm.qt.memset(OTHER, PAGE, 0)
    # each edu sees its own PE's TCEs; the other PE's bus page is empty for it
    vm.edu_dma(bar0, 5 * PAGE, EDU_BUF, 64, to_memory=False)
    vm.edu_dma(bar1, 4 * PAGE, EDU_BUF, 64, to_memory=False)
    assert sorted(faults(vm)) == [
        (0, 5 * PAGE, "read", "not-present"),
        (1, 4 * PAGE, "read", "not-present"),
    ]
    # blocking PE 0 leaves PE 1 running
    vm.cmd("x-iommulab-spapr-set-blocked", phb=0, blocked=True)
    vm.put(liobn1, 6, [OTHER | 3])
    dma_copy(vm, bar1, 5 * PAGE, 6 * PAGE)
    assert vm.qt.memread(OTHER, PAGE) == pattern(5)
    vm.edu_dma(bar0, 4 * PAGE, EDU_BUF, 64, to_memory=False)
    assert faults(vm) == [(0, 4 * PAGE, "read", "blocked")]
    # the host side's state: kept across a machine reset
    vm.cmd("system_reset")
    assert vm.phb(0)["blocked"] and not vm.phb(1)["blocked"]


def test_read_back_after_every_put(vm: TwoPhbs) -> None:
    """Random runs (zeros, 4 KiB and 64 KiB pages, all forms, across leaf boundaries)
    against a model of the table; read back whole after each."""
    rnd = random.Random(13)
    w = vm.cmd("x-iommulab-spapr-window-create", page_shift=16, size=1 << 30)
    windows = {LIOBN0: (12, GiB >> 12), w["liobn"]: (16, w["entries"])}
    model = {liobn: [0] * n for liobn, (_, n) in windows.items()}
    for step in range(40):
        liobn = rnd.choice(sorted(windows))
        shift, n = windows[liobn]
        count = rnd.choice([1, 7, 4096, 5000, 9000])
        start = rnd.choice([0, 4090, rnd.randrange(n - count), n - count])
        pages = RAM >> shift
        tces = [
            0 if rnd.random() < 0.3 else (rnd.randrange(pages) << shift) | rnd.choice([1, 2, 3])
            for _ in range(count)
        ]
        vm.put(liobn, start, tces, FORMS[step % 3])
        model[liobn][start : start + count] = tces
        for lb, tbl in model.items():
            assert vm.tces(lb) == tbl, f"step {step}"
    used = {x["liobn"]: x["entries-in-use"] for x in vm.windows()}
    assert used == {lb: sum(t != 0 for t in tbl) for lb, tbl in model.items()}
