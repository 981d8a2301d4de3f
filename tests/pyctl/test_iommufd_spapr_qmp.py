"""sPAPR windows over QMP (SpaprQmpBackend) against a real pseries under qtest."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from testvm import PseriesVm, needs_ppc64

from pyctl.iommufd import BackendError, Window, WindowBackend
from pyctl.iommufd.hwinfo import device_hw_info
from pyctl.iommufd.spapr_qmp import SpaprQmpBackend, TceEntry
from pyctl.qemu.qtest import QTest

GIB = 1 << 30
DDW = 1 << 59
ARGS, RETS = 0x4000000, 0x4001000  # RTAS buffers in guest RAM
H_PUT_TCE = 0x20
H_STUFF_TCE = 0x138

pytestmark = needs_ppc64


@pytest.fixture
def ppc() -> Iterator[tuple[SpaprQmpBackend, QTest]]:
    with (
        PseriesVm() as vm,
        SpaprQmpBackend(str(vm.qmp_path)) as be,
    ):
        yield be, vm.qt


def _rtas(qt: QTest, name: str, args: list[int], nret: int) -> list[int]:
    qt.memwrite(ARGS, b"".join(struct.pack(">I", a & 0xFFFFFFFF) for a in args))
    qt.command(f"rtas {name} {len(args)} 0x{ARGS:x} {nret} 0x{RETS:x}")
    return list(struct.unpack(f">{nret}I", qt.memread(RETS, 4 * nret)))


def _buid(be: SpaprQmpBackend, phb: int) -> list[int]:
    buid = next(p["buid"] for p in be.phbs() if p["phb"] == phb)
    return [0, buid >> 32, buid & 0xFFFFFFFF]


def test_caps_windows_and_phb_of_devices(ppc: tuple[SpaprQmpBackend, QTest]) -> None:
    be, _ = ppc
    assert isinstance(be, WindowBackend)
    assert be.phb_of("edu0") == 0 and be.phb_of("edu1") == 1
    assert be.phb_of("/machine/peripheral/edu1") == 1
    caps = be.window_caps("edu0")
    assert caps.windows_supported == 2 and caps.ddw_offset == DDW
    # the host side's limits, as the device reports them (host-windows)
    assert caps.page_shifts == (12, 16, 21, 24, 28, 34) and caps.max_tces == 1 << 24
    assert caps.max_size == 1 << (24 + 34)
    # the same facts in the PE's hw-info (what the model's GET_HW_INFO reads)
    pe = device_hw_info(be.execute("x-iommulab-query-hw-info", {"device": "edu0"})).spapr
    assert pe is not None and (pe.host_page_shifts, pe.host_max_tces) == (
        caps.page_shifts,
        caps.max_tces,
    )
    assert be.windows("edu0") == [Window(0, 0, GIB, 12)]
    with pytest.raises(BackendError, match="nosuch"):
        be.windows("nosuch")


def test_create_remove_on_the_right_phb(ppc: tuple[SpaprQmpBackend, QTest]) -> None:
    be, _ = ppc
    w = be.create_window("edu1", 16, 1 << 32, DDW)
    assert w == Window(1, DDW, 1 << 32, 16)
    assert be.windows("edu1") == [Window(0, 0, GIB, 12), w]
    assert be.windows("edu0") == [Window(0, 0, GIB, 12)]  # PHB 0 untouched
    # refused by QEMU: overlap, too many TCEs, no free table; nothing changes
    before = be.phbs()
    for ps, size, off in [(16, 1 << 32, DDW), (12, 1 << 40, 1 << 40), (12, 1 << 20, 1 << 44)]:
        with pytest.raises(BackendError):
            be.create_window("edu1", ps, size, off)
    assert be.phbs() == before
    be.remove_window("edu1", 1)
    assert be.windows("edu1") == [Window(0, 0, GIB, 12)]
    with pytest.raises(BackendError, match="not enabled"):
        be.remove_window("edu1", 1)
    with pytest.raises(BackendError, match="no window 5"):
        be.remove_window("edu1", 5)
    be.remove_window("edu0", 0)
    assert be.windows("edu0") == []
    assert be.reset_windows("edu0") == [Window(0, 0, GIB, 12)]
    assert be.window_events() == []  # host-side changes send no event


def test_guest_rtas_changes_are_window_events(ppc: tuple[SpaprQmpBackend, QTest]) -> None:
    be, qt = ppc
    be.windows("edu0")  # the backend knows edu0 (PHB 0)
    rets = _rtas(qt, "ibm,create-pe-dma-window", [*_buid(be, 0), 16, 32], 4)
    assert rets[0] == 0
    liobn = rets[1]
    ev = be.window_events()
    path = "/machine/peripheral/edu0"
    assert [(e.device, e.kind, e.window) for e in ev] == [
        (path, "created", Window(1, DDW, 1 << 32, 16))
    ]
    assert _rtas(qt, "ibm,remove-pe-dma-window", [liobn], 1) == [0]
    assert [(e.kind, e.window.index, e.window.start) for e in be.window_events()] == [
        ("removed", 1, DDW)
    ]
    assert _rtas(qt, "ibm,reset-pe-dma-window", _buid(be, 0), 1) == [0]
    assert [(e.kind, e.window) for e in be.window_events()] == [("reset", Window(0, 0, GIB, 12))]
    assert be.window_events() == []


def test_read_tces_decoded(ppc: tuple[SpaprQmpBackend, QTest]) -> None:
    be, qt = ppc
    liobn = next(p["liobns"][0] for p in be.phbs() if p["phb"] == 0)
    # the guest puts two TCEs: page 3 -> 0x5000 read-only, page 7 -> 0x9000 read/write
    assert qt.command(f"hcall 0x{H_PUT_TCE:x} 0x{liobn:x} 0x3000 0x5001")[0] == "0"
    assert qt.command(f"hcall 0x{H_PUT_TCE:x} 0x{liobn:x} 0x7000 0x9003")[0] == "0"
    assert be.read_tces("edu0", 0) == [
        TceEntry(3, 0x3000, 0x5000, True, False),
        TceEntry(7, 0x7000, 0x9000, True, True),
    ]
    assert be.read_tces("edu0", 0, start=4, count=2) == []
    assert be.read_tces("edu1", 0) == []
    with pytest.raises(BackendError, match="not enabled"):
        be.read_tces("edu0", 1)


def test_read_tces_of_a_window_larger_than_one_read(ppc: tuple[SpaprQmpBackend, QTest]) -> None:
    """More TCEs than the device returns per read (read-tces-max + 1): read in two chunks,
    the first a whole read-tces-max (11 MB of JSON, more than qemu.qmp's default 10 MiB
    read limit: the client's READ_LIMIT holds it), all decoded."""
    be, qt = ppc
    reads: list[int] = []
    execute = be.execute

    def counting(command: str, args: Any = None) -> Any:
        if command == "x-iommulab-spapr-read-tces":
            reads.append(args["count"])
        return execute(command, args)

    be.execute = counting  # type: ignore[method-assign]
    n = be.phbs()[0]["host-windows"]["read-tces-max"] + 1
    w = be.create_window("edu0", 12, n << 12, DDW)
    liobn = next(p["liobns"][1] for p in be.phbs() if p["phb"] == 0)
    last = DDW + ((n - 1) << 12)
    assert qt.command(f"hcall 0x{H_PUT_TCE:x} 0x{liobn:x} 0x{DDW:x} 0x1003")[0] == "0"
    assert qt.command(f"hcall 0x{H_PUT_TCE:x} 0x{liobn:x} 0x{last:x} 0x2001")[0] == "0"
    assert be.read_tces("edu0", w.index) == [
        TceEntry(0, DDW, 0x1000, True, True),
        TceEntry(n - 1, last, 0x2000, True, False),
    ]
    assert reads == [n - 1, 1]


def test_read_tces_of_the_largest_window(ppc: tuple[SpaprQmpBackend, QTest]) -> None:
    """A 2^24-TCE window (host-windows' max-tces, 128 MiB of TCEs) read back whole through
    read_tces: 16 answers of read-tces-max; the time is printed (no timed assertion)."""
    be, qt = ppc
    hwin = be.phbs()[0]["host-windows"]
    n = hwin["max-tces"]
    assert n == 1 << 24
    w = be.create_window("edu0", 12, n << 12, DDW)
    liobn = next(p["liobns"][1] for p in be.phbs() if p["phb"] == 0)
    # the guest fills 4,096 TCEs at the start of the second read, one in the middle, the last
    first = hwin["read-tces-max"]
    stuff = f"0x{H_STUFF_TCE:x} 0x{liobn:x} 0x{DDW + (first << 12):x} 0x7001 4096"
    assert qt.command(f"hcall {stuff}")[0] == "0"
    for idx, tce in ((n // 2 + 3, 0x3002), (n - 1, 0x4003)):
        bus = DDW + (idx << 12)
        assert qt.command(f"hcall 0x{H_PUT_TCE:x} 0x{liobn:x} 0x{bus:x} 0x{tce:x}")[0] == "0"
    t0 = time.perf_counter()
    got = be.read_tces("edu0", w.index)
    took = time.perf_counter() - t0
    print(f"read_tces of a 2^24-TCE window: {took:.2f} s")
    assert got == [
        *(TceEntry(first + i, DDW + ((first + i) << 12), 0x7000, True, False) for i in range(4096)),
        TceEntry(n // 2 + 3, DDW + ((n // 2 + 3) << 12), 0x3000, False, True),
        TceEntry(n - 1, DDW + ((n - 1) << 12), 0x4000, True, True),
    ]
