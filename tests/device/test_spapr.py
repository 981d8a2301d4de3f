"""sPAPR TCE windows and DDW under QMP control, without a guest.

Real qemu-system-ppc64 (pseries, ``-accel qtest``): RTAS calls through
qtest's ``rtas`` command, hypercalls through ``hcall`` (patch 0011), QMP
over a unix socket.  An ``edu`` device on PHB 0 does DMA through the TCE
windows.  Every error case checks the return code *and* that nothing
changed (TCEs read back in bulk, window list).
"""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import qemu_binary
from qemu.qmp import ExecuteError

from pyctl.qemu.process import QemuProcess
from pyctl.qemu.pseries_qtest import (
    BUID0,
    DMA_PAGE,
    EDU_BUF,
    H_GET_TCE,
    H_PARAMETER,
    H_PUT_TCE,
    H_PUT_TCE_INDIRECT,
    H_STUFF_TCE,
    H_SUCCESS,
    LIOBN0,
    LIOBN1,
    RTAS_HW_ERROR,
    RTAS_PARAM_ERROR,
    RTAS_SUCCESS,
    TCE_LIST,
    TCE_R,
    TCE_W,
    PseriesQtest,
)

RAM = 512 << 20
VIO_LIOBN = 0x2000  # spapr-vscsi at reg 0x2000
GiB = 1 << 30
MiB = 1 << 20


class Pseries(PseriesQtest):
    """The project's qemu-system-ppc64 as a :class:`PseriesQtest` (skips if not built)."""

    def __init__(self, extra: list[str] | None = None) -> None:
        super().__init__(qemu_binary("ppc64"), extra or [], ram=RAM)


@pytest.fixture
def vm() -> Iterator[Pseries]:
    p = Pseries()
    try:
        yield p
    finally:
        p.close()


def err(vm: Pseries, name: str, **args: Any) -> str:
    with pytest.raises(ExecuteError) as e:
        vm.cmd(name, **args)
    return str(e.value)


# --- QMP: listing and policy ---


def test_schema_lists_unstable_commands(vm: Pseries) -> None:
    schema: list[dict[str, Any]] = vm.cmd("query-qmp-schema")
    names = {e["name"]: e for e in schema}
    for c in (
        "x-iommulab-spapr-query-phbs",
        "x-iommulab-spapr-set-ddw-policy",
        "x-iommulab-spapr-window-create",
        "x-iommulab-spapr-window-remove",
        "x-iommulab-spapr-window-reset",
        "x-iommulab-spapr-read-tces",
        "x-iommulab-query-faults",
    ):
        assert "unstable" in names[c].get("features", []), c
    events = {e["name"] for e in schema if e.get("meta-type") == "event"}
    assert {"X_IOMMULAB_SPAPR_WINDOW", "X_IOMMULAB_FAULT"} <= events
    # one way to attach: x-iommulab-attach (device=s2), no sPAPR duplicate;
    # one fault query and event for every lab translator, TCE windows included
    for gone in ("x-iommulab-spapr-stage2-attach", "x-iommulab-spapr-query-faults"):
        assert gone not in names
    assert "X_IOMMULAB_SPAPR_TCE_FAULT" not in events


def test_default_phb(vm: Pseries) -> None:
    p = vm.phb()
    assert p["buid"] == BUID0 and p["liobns"] == [LIOBN0, LIOBN1]
    assert p["policy"] == {
        "ddw": True,
        "windows": 2,
        "page-shifts": [12, 16, 21, 24],
        "max-tces": 1 << 37,
        "dma64-offset": 1 << 59,
        "default-window-size": GiB,
        "refuse-create": False,
        "table-memory-limit": 256 * MiB,
        "table-memory": 512,  # the default window's directory: 64 pointers
    }
    assert p["windows"] == [
        {
            "liobn": LIOBN0,
            "bus-offset": 0,
            "page-shift": 12,
            "size": GiB,
            "entries": GiB >> 12,
            "entries-in-use": 0,
            "default": True,
            "faults": 0,
            "levels": 2,
            "table-bytes": 512,
            "owner": "host",  # machine reset: the platform's default window
        }
    ]


def test_x86_binary_gives_clear_error() -> None:
    with QemuProcess([str(qemu_binary("x86_64")), "-M", "none", "-display", "none"]) as q:
        with pytest.raises(ExecuteError, match="pseries"):
            q.qmp.cmd("x-iommulab-spapr-query-phbs")
        with pytest.raises(ExecuteError, match="pseries"):
            q.qmp.cmd("x-iommulab-spapr-read-tces", liobn=LIOBN0)


@pytest.mark.parametrize(
    "args,msg",
    [
        ({"windows": 0}, "windows"),
        ({"windows": 3}, "windows"),
        ({"page-shifts": [13]}, "page-shifts"),
        ({"page-shifts": [12, 12]}, "twice"),
        ({"page-shifts": []}, "empty"),
        ({"max-tces": 0}, "max-tces"),
        ({"max-tces": (1 << 37) + 1}, "max-tces"),
        ({"dma64-offset": 1 << 40}, "dma64-offset"),
        ({"default-window-size": 0}, "default-window-size"),
        ({"default-window-size": 4097}, "default-window-size"),
        ({"default-window-size": 4 * GiB}, "default-window-size"),
        ({"phb": 7}, "no pseries PHB"),
    ],
)
def test_policy_rejects_bad_values_and_changes_nothing(
    vm: Pseries, args: dict[str, Any], msg: str
) -> None:
    before = vm.phb()["policy"]
    # a valid change in the same call must not be applied either
    assert msg in err(vm, "x-iommulab-spapr-set-ddw-policy", ddw=False, **args)
    assert vm.phb()["policy"] == before


def test_policy_drives_rtas_query(vm: Pseries) -> None:
    pol = vm.cmd(
        "x-iommulab-spapr-set-ddw-policy",
        page_shifts=[16, 28, 34],
        max_tces=0x123456789,
        windows=1,
        dma64_offset=1 << 32,
    )
    assert pol["page-shifts"] == [16, 28, 34] and pol["windows"] == 1
    st, avail, hi, lo, mask, _ = vm.query()
    # one window allowed and the default window exists: none available
    assert (st, avail, (hi << 32) | lo) == (RTAS_SUCCESS, 0, 0x123456789)
    assert mask == 0x02 | 0x40 | 0x80  # 64K | 256M | 16G
    vm.cmd("x-iommulab-spapr-set-ddw-policy", windows=2)
    assert vm.query()[1] == 1
    # the five-return form caps the largest block at 0x80000000
    assert vm.query(5)[2] == 0x80000000
    vm.cmd("x-iommulab-spapr-set-ddw-policy", ddw=False)
    assert vm.query()[0] == RTAS_PARAM_ERROR


# --- RTAS DDW ---


def test_create_follows_policy_and_sends_events(vm: Pseries) -> None:
    vm.qmp.events()
    # 64K pages not offered by the policy below; 16M is
    vm.cmd("x-iommulab-spapr-set-ddw-policy", page_shifts=[24], max_tces=64)
    assert vm.create(16, 30)[0] == RTAS_PARAM_ERROR
    assert vm.create(24, 31)[0] == RTAS_PARAM_ERROR  # 128 TCEs > 64
    assert len(vm.windows()) == 1 and not vm.events("X_IOMMULAB_SPAPR_WINDOW")
    st, liobn, hi, lo = vm.create(24, 30)  # 64 TCEs of 16 MiB
    assert (st, liobn, (hi << 32) | lo) == (RTAS_SUCCESS, LIOBN1, 1 << 59)
    w = [x for x in vm.windows() if x["liobn"] == LIOBN1]
    assert w == [
        {
            "liobn": LIOBN1,
            "bus-offset": 1 << 59,
            "page-shift": 24,
            "size": GiB,
            "entries": 64,
            "entries-in-use": 0,
            "default": False,
            "faults": 0,
            "levels": 2,
            "table-bytes": 8,  # a directory of one pointer, no leaf yet
            "owner": "guest",  # made by RTAS
        }
    ]
    ev = vm.events("X_IOMMULAB_SPAPR_WINDOW")
    assert [e["data"] for e in ev] == [
        {"phb": 0, "action": "create", "liobn": LIOBN1, "window": w[0]}
    ]
    # no third window
    assert vm.create(24, 30)[0] == RTAS_HW_ERROR
    assert vm.remove(LIOBN1) == RTAS_SUCCESS
    assert [e["data"] for e in vm.events("X_IOMMULAB_SPAPR_WINDOW")] == [
        {"phb": 0, "action": "remove", "liobn": LIOBN1}
    ]
    assert vm.remove(LIOBN1) == RTAS_PARAM_ERROR  # already removed
    assert vm.reset() == RTAS_SUCCESS
    ev = vm.events("X_IOMMULAB_SPAPR_WINDOW")
    assert [(e["data"]["action"], e["data"]["liobn"]) for e in ev] == [("reset", LIOBN0)]
    assert ev[0]["data"]["window"]["default"] is True
    # the default window the guest's reset made is the guest's
    assert ev[0]["data"]["window"]["owner"] == "guest"


def test_refuse_create(vm: Pseries) -> None:
    vm.cmd("x-iommulab-spapr-set-ddw-policy", refuse_create=True)
    assert vm.create(16, 32)[0] == RTAS_HW_ERROR
    assert len(vm.windows()) == 1
    vm.cmd("x-iommulab-spapr-set-ddw-policy", refuse_create=False)
    assert vm.create(16, 32)[0] == RTAS_SUCCESS


def test_single_window_replaces_default(vm: Pseries) -> None:
    """Linux removes the default window when no second one is available."""
    vm.cmd("x-iommulab-spapr-set-ddw-policy", windows=1, dma64_offset=1 << 32)
    assert vm.create(16, 33)[0] == RTAS_HW_ERROR
    assert vm.remove(LIOBN0) == RTAS_SUCCESS
    assert vm.windows() == []
    st, liobn, hi, lo = vm.create(16, 33)
    # the first window of a PE is at the default window's place
    assert (st, (hi << 32) | lo) == (RTAS_SUCCESS, 0)
    # QEMU keeps the "default window" mark on the first table, so removing
    # this window does not bring the default one back; a reset does
    assert liobn == LIOBN0
    assert vm.remove(liobn) == RTAS_SUCCESS
    assert vm.windows() == []
    assert vm.reset() == RTAS_SUCCESS
    assert [w["default"] for w in vm.windows()] == [True]


def test_default_window_size_applies_at_reset(vm: Pseries) -> None:
    vm.cmd("x-iommulab-spapr-set-ddw-policy", default_window_size=256 << 20)
    assert vm.windows()[0]["size"] == GiB
    assert vm.reset() == RTAS_SUCCESS
    assert vm.windows()[0]["size"] == 256 << 20


@pytest.mark.parametrize(
    "page_shift,window_shift", [(64, 70), (12, 64), (12, 11), (12, 12 + 32), (13, 30), (200, 300)]
)
def test_create_bad_shifts(vm: Pseries, page_shift: int, window_shift: int) -> None:
    assert vm.create(page_shift, window_shift)[0] == RTAS_PARAM_ERROR
    assert len(vm.windows()) == 1 and vm.alive()


def test_create_overlapping_window_refused(vm: Pseries) -> None:
    vm.cmd("x-iommulab-spapr-set-ddw-policy", windows=2, dma64_offset=1 << 32)
    assert vm.remove(LIOBN0) == RTAS_SUCCESS
    assert vm.create(16, 34)[0] == RTAS_SUCCESS  # [0, 16 GiB)
    assert vm.create(16, 30)[0] == RTAS_PARAM_ERROR  # at 4 GiB: overlaps
    assert len(vm.windows()) == 1


@pytest.mark.parametrize(
    "name,args,nret",
    [
        ("ibm,query-pe-dma-window", [0, 0, 0, 0], 6),
        ("ibm,query-pe-dma-window", [0, BUID0 >> 32, BUID0 & 0xFFFFFFFF], 4),
        ("ibm,create-pe-dma-window", [0, BUID0 >> 32, BUID0 & 0xFFFFFFFF, 16], 4),
        ("ibm,create-pe-dma-window", [0, BUID0 >> 32, BUID0 & 0xFFFFFFFF, 16, 32], 3),
        ("ibm,remove-pe-dma-window", [LIOBN0, 0], 1),
        ("ibm,remove-pe-dma-window", [LIOBN0], 2),
        ("ibm,reset-pe-dma-window", [0, BUID0 >> 32], 1),
        ("ibm,query-pe-dma-window", [0, 0, 0x1234], 6),  # unknown BUID
    ],
)
def test_rtas_wrong_arguments(vm: Pseries, name: str, args: list[int], nret: int) -> None:
    before = vm.windows()
    assert vm.rtas(name, args, nret)[0] == RTAS_PARAM_ERROR
    assert vm.windows() == before


def test_remove_vio_liobn_is_an_error_not_a_crash(vm: Pseries) -> None:
    assert vm.remove(VIO_LIOBN) == RTAS_PARAM_ERROR
    assert vm.remove(0x12345678) == RTAS_PARAM_ERROR
    assert vm.alive() and len(vm.windows()) == 1


# --- Hypercalls ---


def test_put_get_tce(vm: Pseries) -> None:
    assert vm.hcall(H_PUT_TCE, LIOBN0, 0x5000, 0x7000 | TCE_R | TCE_W)[0] == H_SUCCESS
    ret, regs = vm.hcall(H_GET_TCE, LIOBN0, 0x5000)
    assert ret == H_SUCCESS and regs[0] == 0x7000 | 3
    assert vm.tces(LIOBN0, 4, 2) == [0, 0x7003]
    assert vm.windows()[0]["entries-in-use"] == 1


@pytest.mark.parametrize(
    "liobn,ioba,tce",
    [
        (0x7777, 0x5000, 0x7003),  # wrong LIOBN
        (LIOBN1, 0x5000, 0x7003),  # window not enabled
        (LIOBN0, 0x5800, 0x7003),  # misaligned IOBA
        (LIOBN0, GiB, 0x7003),  # outside the window
        (LIOBN0, 2**64 - 4096, 0x7003),
        (LIOBN0, 0x5000, 0x7803),  # bits below the page size
        (LIOBN0, 0x5000, 0x7007),
        (LIOBN0 | (1 << 32), 0x5000, 0x7003),  # LIOBN wider than 32 bits
    ],
)
def test_put_tce_errors_change_nothing(vm: Pseries, liobn: int, ioba: int, tce: int) -> None:
    vm.hcall(H_PUT_TCE, LIOBN0, 0x5000, 0x9001)
    assert vm.hcall(H_PUT_TCE, liobn, ioba, tce)[0] == H_PARAMETER
    assert vm.tces(LIOBN0, 0, 8) == [0] * 5 + [0x9001] + [0] * 2
    assert vm.hcall(H_GET_TCE, LIOBN0, 0x5800)[0] == H_PARAMETER


def test_put_tce_without_permission_is_accepted(vm: Pseries) -> None:
    """A guest may poison its table: no permission, any address bits."""
    assert vm.hcall(H_PUT_TCE, LIOBN0, 0x5000, 0x7FF8)[0] == H_SUCCESS
    assert vm.tces(LIOBN0, 5, 1) == [0x7FF8]


def test_stuff_tce(vm: Pseries) -> None:
    n = GiB >> 12
    assert vm.hcall(H_STUFF_TCE, LIOBN0, 0x10000, 0x8001, 4)[0] == H_SUCCESS
    assert vm.tces(LIOBN0, 15, 6) == [0, 0x8001, 0x8001, 0x8001, 0x8001, 0]
    for npages in (n, n - 15, 2**63, 2**64 - 1):  # runs past the end
        assert vm.hcall(H_STUFF_TCE, LIOBN0, 0x10000, 0x9003, npages)[0] == H_PARAMETER
    assert vm.hcall(H_STUFF_TCE, LIOBN0, 0x10000, 0x9803, 1)[0] == H_PARAMETER
    assert vm.tces(LIOBN0, 15, 6) == [0, 0x8001, 0x8001, 0x8001, 0x8001, 0]
    assert vm.windows()[0]["entries-in-use"] == 4
    # the whole window at once is fine, and so is clearing it
    assert vm.hcall(H_STUFF_TCE, LIOBN0, 0, 0, n)[0] == H_SUCCESS
    assert vm.windows()[0]["entries-in-use"] == 0


def test_put_tce_indirect(vm: Pseries) -> None:
    tces = [0x100000 + i * 0x1000 + 3 for i in range(8)]
    vm.qt.memwrite(TCE_LIST, struct.pack(">8Q", *tces))
    assert vm.hcall(H_PUT_TCE_INDIRECT, LIOBN0, 0x3000, TCE_LIST, 8)[0] == H_SUCCESS
    assert vm.tces(LIOBN0, 3, 8) == tces


@pytest.mark.parametrize(
    "ioba,tce_list,npages,bad_tce",
    [
        (0x3000, 0x40000000000, 4, False),  # list outside guest RAM
        (0x3000, RAM - 0x1000 + 0x1000, 4, False),
        (0x3000, TCE_LIST + 8, 4, False),  # list not 4K aligned
        (0x3000, TCE_LIST, 513, False),  # more than 512
        (GiB - 0x2000, TCE_LIST, 4, False),  # runs past the window's end
        (0x3800, TCE_LIST, 4, False),  # misaligned IOBA
        (0x3000, TCE_LIST, 4, True),  # one bad TCE in the list
    ],
)
def test_put_tce_indirect_errors_change_nothing(
    vm: Pseries, ioba: int, tce_list: int, npages: int, bad_tce: bool
) -> None:
    tces = [0x200000 + i * 0x1000 + 1 for i in range(4)]
    if bad_tce:
        tces[2] |= 0x100
    vm.qt.memwrite(TCE_LIST, struct.pack(">4Q", *tces))
    assert vm.hcall(H_PUT_TCE_INDIRECT, LIOBN0, ioba, tce_list, npages)[0] == H_PARAMETER
    assert vm.windows()[0]["entries-in-use"] == 0


def test_hcalls_on_ddw_with_large_pages(vm: Pseries) -> None:
    st, liobn, hi, lo = vm.create(24, 32)
    assert st == RTAS_SUCCESS
    base = (hi << 32) | lo
    assert vm.hcall(H_PUT_TCE, liobn, base + (3 << 24), (5 << 24) | 3)[0] == H_SUCCESS
    assert vm.hcall(H_PUT_TCE, liobn, base + (3 << 24), (5 << 24) | 0x1003)[0] == H_PARAMETER
    assert vm.hcall(H_PUT_TCE, liobn, base + (3 << 24) + 4096, (5 << 24) | 3)[0] == H_PARAMETER
    assert vm.tces(liobn) == [0, 0, 0, (5 << 24) | 3] + [0] * 252


# --- Host-side windows ---


def test_host_window_create_read_remove(vm: Pseries) -> None:
    vm.qmp.events()
    w = vm.cmd("x-iommulab-spapr-window-create", page_shift=16, size=4 * GiB)
    assert w == {
        "liobn": LIOBN1,
        "bus-offset": 1 << 59,
        "page-shift": 16,
        "size": 4 * GiB,
        "entries": 65536,
        "entries-in-use": 0,
        "default": False,
        "faults": 0,
        "levels": 2,
        "table-bytes": 128,  # 16 directory pointers, no leaf yet
        "owner": "host",
    }
    # the guest can use it; the host reads it back in bulk
    assert vm.hcall(H_STUFF_TCE, LIOBN1, (1 << 59) + 0x20000, 0x30000 | 1, 3)[0] == H_SUCCESS
    t = vm.tces(LIOBN1)
    assert len(t) == 65536 and t[1:5] == [0, 0x30001, 0x30001, 0x30001]
    assert vm.tces(LIOBN1, 65535) == [0]
    assert "no free LIOBN" in err(vm, "x-iommulab-spapr-window-create", page_shift=12, size=GiB)
    vm.cmd("x-iommulab-spapr-window-remove", liobn=LIOBN1)
    assert [x["liobn"] for x in vm.windows()] == [LIOBN0]
    assert "not enabled" in err(vm, "x-iommulab-spapr-window-remove", liobn=LIOBN1)
    # host actions are not guest events
    assert not vm.events("X_IOMMULAB_SPAPR_WINDOW")


HOST_WINDOWS = {
    "page-shifts": [12, 16, 21, 24, 28, 34],
    "max-tces": 1 << 24,
    "read-tces-max": 1 << 20,
    "put-tces-max": 1 << 19,
}


def test_host_windows_are_the_limits_enforced(vm: Pseries) -> None:
    """host-windows (query-phbs, hw-info's PE facts) states exactly what create and read accept."""
    hwin = vm.phb()["host-windows"]
    assert hwin == HOST_WINDOWS
    assert vm.cmd("x-iommulab-query-hw-info", device="edu0")["spapr-pe"]["host-windows"] == hwin
    # every reported page shift creates a window (one TCE), no other shift does
    for shift in range(10, 40):
        if shift not in hwin["page-shifts"]:
            assert "page-shift" in err(
                vm, "x-iommulab-spapr-window-create", page_shift=shift, size=1 << shift
            )
            continue
        w = vm.cmd("x-iommulab-spapr-window-create", page_shift=shift, size=1 << shift)
        assert (w["page-shift"], w["entries"]) == (shift, 1)
        vm.cmd("x-iommulab-spapr-window-remove", liobn=LIOBN1)
    # the largest window: max-tces TCEs, and not one more
    big = hwin["max-tces"] << 12
    assert "TCEs" in err(vm, "x-iommulab-spapr-window-create", page_shift=12, size=big + 4096)
    assert len(vm.windows()) == 1
    w = vm.cmd("x-iommulab-spapr-window-create", page_shift=12, size=big)
    assert w["entries"] == hwin["max-tces"]
    # read-tces-max TCEs per read and not one more (a read of all 2^24 would be 180 MB
    # of JSON: the refusal names the bound)
    n = hwin["read-tces-max"]
    assert f"count must be 1..{n}" in err(
        vm, "x-iommulab-spapr-read-tces", liobn=LIOBN1, count=n + 1
    )
    assert vm.tces(LIOBN1, (1 << 24) - 4, 4) == [0] * 4


@pytest.mark.parametrize(
    "args,msg",
    [
        ({"page_shift": 13, "size": GiB}, "page-shift"),
        ({"page_shift": 12, "size": 0}, "size"),
        ({"page_shift": 16, "size": 0x1000}, "size"),
        ({"page_shift": 12, "size": 1 << 40}, "TCEs"),
        ({"page_shift": 12, "size": GiB, "bus_offset": 0x800}, "aligned"),
        ({"page_shift": 12, "size": GiB, "bus_offset": 0x20000000}, "overlaps"),
        ({"page_shift": 24, "size": 1 << 30, "bus_offset": 2**64 - (1 << 24)}, "2^64"),
        ({"page_shift": 12, "size": GiB, "phb": 3}, "no pseries PHB"),
    ],
)
def test_host_window_create_errors(vm: Pseries, args: dict[str, Any], msg: str) -> None:
    assert msg in err(vm, "x-iommulab-spapr-window-create", **args)
    assert len(vm.windows()) == 1


def test_host_reset_and_remove_errors(vm: Pseries) -> None:
    vm.cmd("x-iommulab-spapr-window-remove", liobn=LIOBN0)
    assert vm.windows() == []
    assert "no window" in err(vm, "x-iommulab-spapr-window-remove", liobn=VIO_LIOBN)
    vm.cmd("x-iommulab-spapr-set-ddw-policy", default_window_size=2 * GiB)
    ws = vm.cmd("x-iommulab-spapr-window-reset")
    assert [(w["liobn"], w["size"], w["default"]) for w in ws] == [(LIOBN0, 2 * GiB, True)]


@pytest.mark.parametrize(
    "args,msg",
    [
        ({"liobn": 0x7777}, "no TCE table"),
        ({"liobn": LIOBN1}, "not enabled"),
        ({"liobn": LIOBN0, "start": GiB >> 12}, "outside"),
        ({"liobn": LIOBN0, "start": (GiB >> 12) - 1, "count": 2}, "outside"),
        ({"liobn": LIOBN0, "count": 0}, "count"),
        ({"liobn": LIOBN0, "count": (1 << 20) + 1}, "count"),
    ],
)
def test_read_tces_errors(vm: Pseries, args: dict[str, Any], msg: str) -> None:
    assert msg in err(vm, "x-iommulab-spapr-read-tces", **args)


def test_read_tces_of_vio_window(vm: Pseries) -> None:
    assert vm.hcall(H_PUT_TCE, VIO_LIOBN, 0x1000, 0x6003)[0] == H_SUCCESS
    assert vm.tces(VIO_LIOBN, 0, 2) == [0, 0x6003]


# --- DMA through the window, and TCE faults ---


def tce_faults(vm: Pseries, clear: bool = False) -> list[dict[str, Any]]:
    """The TCE fault queue of PHB 0 (x-iommulab-query-faults on the PHB)."""
    r = vm.cmd("x-iommulab-query-faults", iommu=vm.phb()["path"], clear=clear)
    res: list[dict[str, Any]] = r["faults"]
    return res


def test_dma_through_tce_window_and_faults(vm: Pseries) -> None:
    bar = vm.edu_setup()
    data = bytes((i * 7 + 3) & 0xFF for i in range(4096))
    vm.qt.memwrite(DMA_PAGE, data)
    # IOBA 0x10000 -> DMA_PAGE (read only), IOBA 0x11000 -> DMA_PAGE + 4K (read/write)
    assert vm.hcall(H_PUT_TCE, LIOBN0, 0x10000, DMA_PAGE | TCE_R)[0] == H_SUCCESS
    assert vm.hcall(H_PUT_TCE, LIOBN0, 0x11000, (DMA_PAGE + 0x1000) | 3)[0] == H_SUCCESS
    vm.edu_dma(bar, 0x10000, EDU_BUF, 4096, to_memory=False)
    vm.edu_dma(bar, EDU_BUF, 0x11000, 4096, to_memory=True)
    assert vm.qt.memread(DMA_PAGE + 0x1000, 4096) == data
    assert tce_faults(vm) == []

    # a write to the read-only page and a read of an empty entry fault
    vm.qmp.events()
    vm.qt.memset(DMA_PAGE, 4096, 0x55)
    vm.edu_dma(bar, EDU_BUF, 0x10000, 64, to_memory=True)
    vm.edu_dma(bar, 0x12000, EDU_BUF, 64, to_memory=False)
    assert vm.qt.memread(DMA_PAGE, 4096) == b"\x55" * 4096
    path = vm.phb()["path"]
    # the machine's only lab queue with something in it: no iommu needed
    f = vm.cmd("x-iommulab-query-faults", clear=True)
    assert f["dropped"] == 0
    # one record per refused DMA (its pieces are merged)
    got = [(x["iova"], x["access"], x["tce"], x["reason"]) for x in f["faults"]]
    assert got == [
        (0x10000, "write", DMA_PAGE | TCE_R, "permission"),
        (0x12000, "read", 0, "not-present"),
    ]
    for x in f["faults"]:
        assert (x["stage"], x["liobn"], x["phb"]) == ("tce", LIOBN0, 0)
        assert x["iommu"] == x["device"] == path and "requester-id" not in x
    assert tce_faults(vm) == []
    assert vm.windows()[0]["faults"] >= 2
    ev = [e["data"] for e in vm.qmp.events("X_IOMMULAB_FAULT")]
    assert {(e["iova"], e["stage"], e["iommu"]) for e in ev} == {
        (0x10000, "tce", path),
        (0x12000, "tce", path),
    }


# --- Stage 2 beneath the TCE windows (iommulab-spapr-s2) ---

S2 = "s2"
OTHER_PAGE = 0x6000000  # where stage 2 sends DMA_PAGE


@pytest.fixture
def vm_s2() -> Iterator[Pseries]:
    p = Pseries(["-device", f"iommulab-spapr-s2,id={S2},addr=04.0"])
    try:
        yield p
    finally:
        p.close()


def s2_faults(vm: Pseries) -> list[dict[str, Any]]:
    res: list[dict[str, Any]] = vm.cmd("x-iommulab-query-faults", iommu=S2, clear=True)["faults"]
    return res


def test_stage2_composes_with_tce(vm_s2: Pseries) -> None:
    vm = vm_s2
    bar = vm.edu_setup()
    data = bytes((i * 13 + 1) & 0xFF for i in range(4096))
    vm.qt.memwrite(DMA_PAGE, data)
    vm.qt.memset(OTHER_PAGE, 0x2000, 0x11)
    # TCE: IOBA 0x10000 -> IPA DMA_PAGE, IOBA 0x11000 -> IPA DMA_PAGE + 4K
    assert vm.hcall(H_STUFF_TCE, LIOBN0, 0x10000, DMA_PAGE | 3, 1)[0] == H_SUCCESS
    assert vm.hcall(H_PUT_TCE, LIOBN0, 0x11000, (DMA_PAGE + 0x1000) | 3)[0] == H_SUCCESS

    # Blocked by default at stage 2: nothing lands, the fault names the IPA
    vm.edu_dma(bar, EDU_BUF, 0x11000, 64, to_memory=True)
    assert vm.qt.memread(DMA_PAGE + 0x1000, 64) == bytes(64)
    (f,) = s2_faults(vm)
    assert (f["iova"], f["access"], f["reason"]) == (DMA_PAGE + 0x1000, "write", "blocked")
    assert tce_faults(vm) == []  # one refused DMA, one queue

    # Domain 1: IPA DMA_PAGE..+8K -> OTHER_PAGE: bytes land at the stage-2 output
    vm.cmd("x-iommulab-domain-alloc", iommu=S2, domain=1, type="paging")
    vm.cmd(
        "x-iommulab-map",
        iommu=S2,
        domain=1,
        mappings=[
            {"iova": DMA_PAGE, "size": 0x2000, "addr": OTHER_PAGE, "read": True, "write": True}
        ],
    )
    vm.cmd("x-iommulab-attach", iommu=S2, device=S2, mode="domain", domain=1)
    vm.qt.memwrite(OTHER_PAGE, data)
    vm.edu_dma(bar, 0x10000, EDU_BUF, 4096, to_memory=False)  # reads OTHER_PAGE
    vm.edu_dma(bar, EDU_BUF, 0x11000, 4096, to_memory=True)  # writes OTHER_PAGE + 4K
    assert vm.qt.memread(OTHER_PAGE + 0x1000, 4096) == data
    assert vm.qt.memread(DMA_PAGE + 0x1000, 4096) == bytes(4096)
    assert s2_faults(vm) == []

    # Unmap at stage 2: the TCE still allows it, stage 2 refuses
    vm.cmd(
        "x-iommulab-unmap", iommu=S2, domain=1, ranges=[{"iova": DMA_PAGE + 0x1000, "size": 0x1000}]
    )
    vm.qt.memset(OTHER_PAGE + 0x1000, 0x1000, 0x22)
    vm.edu_dma(bar, EDU_BUF, 0x11000, 64, to_memory=True)
    assert vm.qt.memread(OTHER_PAGE + 0x1000, 64) == b"\x22" * 64
    (f,) = s2_faults(vm)
    assert (f["iova"], f["access"], f["stage"], f["reason"]) == (
        DMA_PAGE + 0x1000,
        "write",
        "stage2",
        "not-present",
    )

    # No TCE: a TCE fault, stage 2 is never asked
    vm.edu_dma(bar, EDU_BUF, 0x13000, 64, to_memory=True)
    tf = vm.cmd("x-iommulab-query-faults", clear=True)["faults"]  # every queue
    assert [(x["iova"], x["access"], x["stage"]) for x in tf] == [(0x13000, "write", "tce")]
    assert s2_faults(vm) == []

    # Remap: I/O works again
    vm.cmd(
        "x-iommulab-map",
        iommu=S2,
        domain=1,
        mappings=[
            {
                "iova": DMA_PAGE + 0x1000,
                "size": 0x1000,
                "addr": OTHER_PAGE + 0x1000,
                "read": True,
                "write": True,
            }
        ],
    )
    vm.edu_dma(bar, EDU_BUF, 0x11000, 4096, to_memory=True)
    assert vm.qt.memread(OTHER_PAGE + 0x1000, 4096) == data


def attach_s2(vm: Pseries, **args: Any) -> None:
    """Attach the PHB's stage-2 requester: the s2 device, named as the device."""
    vm.cmd("x-iommulab-attach", iommu=S2, device=S2, **args)


def test_stage2_attach_errors(vm_s2: Pseries) -> None:
    vm = vm_s2
    before = vm.cmd("x-iommulab-query", iommu=S2)
    assert "'nope' is not an iommulab-viommu" in err(
        vm, "x-iommulab-attach", iommu="nope", device="nope", mode="bypass"
    )
    assert "needs 'domain'" in err(vm, "x-iommulab-attach", iommu=S2, device=S2, mode="domain")
    assert "only valid" in err(
        vm, "x-iommulab-attach", iommu=S2, device=S2, mode="bypass", domain=1
    )
    assert "does not exist" in err(
        vm, "x-iommulab-attach", iommu=S2, device=S2, mode="domain", domain=9
    )
    assert vm.cmd("x-iommulab-query", iommu=S2) == before
    # an attached domain cannot be freed
    vm.cmd("x-iommulab-domain-alloc", iommu=S2, domain=2, type="paging")
    attach_s2(vm, mode="domain", domain=2)
    assert "in use" in err(vm, "x-iommulab-domain-free", iommu=S2, domain=2)
    attach_s2(vm, mode="bypass")
    vm.cmd("x-iommulab-domain-free", iommu=S2, domain=2)


def test_stage2_bypass(vm_s2: Pseries) -> None:
    vm = vm_s2
    bar = vm.edu_setup()
    attach_s2(vm, mode="bypass")
    data = bytes(range(256)) * 16
    assert vm.hcall(H_PUT_TCE, LIOBN0, 0x11000, DMA_PAGE | 3)[0] == H_SUCCESS
    vm.qt.memwrite(DMA_PAGE, data)
    vm.edu_dma(bar, 0x11000, EDU_BUF, 4096, to_memory=False)
    vm.qt.memset(DMA_PAGE, 4096, 0)
    vm.edu_dma(bar, EDU_BUF, 0x11000, 4096, to_memory=True)
    assert vm.qt.memread(DMA_PAGE, 4096) == data


def test_stage2_requester_is_a_device_of_the_engine(vm_s2: Pseries) -> None:
    """The PHB's requester is listed as the s2 device and attached by naming it,
    so the iommufd model (x-iommulab-query / x-iommulab-attach) can bind it."""
    vm = vm_s2
    (dev,) = vm.cmd("x-iommulab-query", iommu=S2)["devices"]
    assert (dev["device"], dev["id"], dev["mode"]) == (f"/machine/peripheral/{S2}", S2, "blocked")
    vm.cmd("x-iommulab-domain-alloc", iommu=S2, domain=3, type="paging")
    vm.cmd("x-iommulab-attach", iommu=S2, device=S2, mode="domain", domain=3)
    (dev,) = vm.cmd("x-iommulab-query", iommu=S2)["devices"]
    assert (dev["mode"], dev["domain"]) == ("domain", 3)
    # one requester: a second attach replaces the same attachment
    attach_s2(vm, mode="bypass")
    (dev,) = vm.cmd("x-iommulab-query", iommu=S2)["devices"]
    assert dev["mode"] == "bypass" and "domain" not in dev
    # the DMA follows: bypass lets edu's write through the TCE land
    bar = vm.edu_setup()
    assert vm.hcall(H_PUT_TCE, LIOBN0, 0x11000, DMA_PAGE | 3)[0] == H_SUCCESS
    vm.qt.memwrite(DMA_PAGE, b"\x5a" * 64)
    vm.edu_dma(bar, 0x11000, EDU_BUF, 64, to_memory=False)  # into edu's buffer
    vm.qt.memset(DMA_PAGE, 64, 0)
    vm.edu_dma(bar, EDU_BUF, 0x11000, 64, to_memory=True)  # and back
    assert vm.qt.memread(DMA_PAGE, 64) == b"\x5a" * 64
    assert s2_faults(vm) == []
    vm.cmd("x-iommulab-attach", iommu=S2, device=S2, mode="blocked")
    vm.qt.memset(DMA_PAGE, 64, 0)
    vm.edu_dma(bar, EDU_BUF, 0x11000, 64, to_memory=True)
    assert vm.qt.memread(DMA_PAGE, 64) == bytes(64)
    (f,) = s2_faults(vm)
    assert (f["device"], f["reason"]) == (f"/machine/peripheral/{S2}", "blocked")
    # an unknown domain is refused and changes nothing
    assert "does not exist" in err(
        vm, "x-iommulab-attach", iommu=S2, device=S2, mode="domain", domain=99
    )
    assert vm.cmd("x-iommulab-query", iommu=S2)["devices"][0]["mode"] == "blocked"


# --- Several PHBs, one stage 2 each (phb=) ---


def test_two_stage2_devices_on_two_phbs() -> None:
    """Without bus=, QEMU puts both devices on the newest PHB's bus; phb= (an
    index or the PHB's id) says which PHB each one is beneath."""
    vm = Pseries(
        [
            "-device", "spapr-pci-host-bridge,index=1,id=phb1",
            "-device", "iommulab-spapr-s2,id=s2a,phb=0",
            "-device", "iommulab-spapr-s2,id=s2b,phb=phb1",
        ]
    )  # fmt: skip
    try:
        phbs = {p["phb"]: p for p in vm.cmd("x-iommulab-spapr-query-phbs")}
        for dev, index in (("s2a", 0), ("s2b", 1)):
            pe = vm.cmd("x-iommulab-query-hw-info", device=dev)["spapr-pe"]
            assert (pe["phb"], pe["path"]) == (index, phbs[index]["path"])
            assert pe["stage2"] == f"/machine/peripheral/{dev}"
        # edu0 is on PHB 0: its DMA goes through s2a (blocked), not s2b
        bar = vm.edu_setup()
        assert vm.hcall(H_PUT_TCE, LIOBN0, 0x11000, DMA_PAGE | 3)[0] == H_SUCCESS
        vm.qt.memset(DMA_PAGE, 64, 0x33)
        vm.edu_dma(bar, EDU_BUF, 0x11000, 64, to_memory=True)
        assert vm.qt.memread(DMA_PAGE, 64) == b"\x33" * 64
        fa = vm.cmd("x-iommulab-query-faults", iommu="s2a", clear=True)["faults"]
        assert [(f["device"], f["reason"]) for f in fa] == [("/machine/peripheral/s2a", "blocked")]
        assert vm.cmd("x-iommulab-query-faults", iommu="s2b")["faults"] == []
        vm.cmd("x-iommulab-attach", iommu="s2a", device="s2a", mode="bypass")
        vm.edu_dma(bar, 0x11000, EDU_BUF, 64, to_memory=False)
        vm.qt.memset(DMA_PAGE, 64, 0)
        vm.edu_dma(bar, EDU_BUF, 0x11000, 64, to_memory=True)
        assert vm.qt.memread(DMA_PAGE, 64) == b"\x33" * 64
    finally:
        vm.close()


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        (
            ["iommulab-spapr-s2,id=a", "iommulab-spapr-s2,id=b"],
            "PHB 1 already has a stage 2 (/machine/peripheral/a); give each "
            "iommulab-spapr-s2 its PHB with phb=INDEX",
        ),
        (["iommulab-spapr-s2,id=a,phb=7"], "there is no pseries PHB with index 7"),
        (["iommulab-spapr-s2,id=a,phb=nosuch"], "'nosuch' is not a PHB (phb=)"),
        (
            ["iommulab-spapr-s2,id=a,phb=1", "iommulab-spapr-s2,id=b,phb=phb1"],
            "PHB 1 already has a stage 2",
        ),
    ],
)
def test_stage2_placement_errors(devices: list[str], message: str) -> None:
    args = [str(qemu_binary("ppc64")), "-M", "pseries", "-accel", "qtest", "-S"]
    args += ["-nodefaults", "-display", "none", "-m", "256"]
    args += ["-device", "spapr-pci-host-bridge,index=1,id=phb1"]
    for d in devices:
        args += ["-device", d]
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and message in r.stderr, r.stderr
