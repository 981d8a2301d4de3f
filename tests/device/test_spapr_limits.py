"""What a pseries guest can make QEMU allocate for its TCE tables (patch 0016).

Tables are a directory (one pointer per 4096 TCEs, allocated with the
window) and 32 KiB leaves allocated on the first TCE other than 0 written
into them, all charged to the PHB's ``table-memory-limit`` (DDW policy,
default 256 MiB).  A window whose directory does not fit is refused with
-1 (hardware error), a TCE write needing a leaf beyond the limit fails with
H_HARDWARE; both change nothing (read back).  qtest, no guest.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import qemu_binary
from qemu.qmp import ExecuteError

from pyctl.qemu.pseries_qtest import (
    DMA_PAGE,
    EDU_BUF,
    H_PARAMETER,
    H_PUT_TCE,
    H_PUT_TCE_INDIRECT,
    H_STUFF_TCE,
    H_SUCCESS,
    LIOBN0,
    LIOBN1,
    RTAS_HW_ERROR,
    RTAS_SUCCESS,
    TCE_LIST,
    PseriesQtest,
)

H_HARDWARE = -1
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
LEAF = 4096  # TCEs per leaf
LEAF_BYTES = LEAF * 8
DEFAULT_DIR = (GiB >> 12) // LEAF * 8  # the default 1 GiB window's directory: 512
DDW_BASE = 1 << 59


@pytest.fixture
def vm() -> Iterator[PseriesQtest]:
    p = PseriesQtest(qemu_binary("ppc64"), ram=512 * MiB)
    try:
        yield p
    finally:
        p.close()


def rss(vm: PseriesQtest) -> int:
    """QEMU's resident set, in bytes."""
    assert vm.proc is not None
    for line in Path(f"/proc/{vm.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * KiB
    raise AssertionError("no VmRSS")


def window(vm: PseriesQtest, liobn: int) -> dict[str, Any]:
    return next(w for w in vm.windows() if w["liobn"] == liobn)


def used(vm: PseriesQtest) -> int:
    n: int = vm.phb()["policy"]["table-memory"]
    return n


def test_default_limit_and_policy_checks(vm: PseriesQtest) -> None:
    pol = vm.phb()["policy"]
    assert (pol["table-memory-limit"], pol["table-memory"]) == (256 * MiB, DEFAULT_DIR)
    info = vm.cmd("x-iommulab-query-hw-info", device="edu0")["spapr-pe"]
    assert (info["levels"], info["table-memory-limit"]) == (2, 256 * MiB)
    # all-or-nothing: a bad limit with a good member changes neither
    for bad in (0, 64 * KiB - 1):
        with pytest.raises(ExecuteError, match="table-memory-limit must be at least 65536"):
            vm.cmd("x-iommulab-spapr-set-ddw-policy", table_memory_limit=bad, windows=1)
    assert vm.phb()["policy"] == pol
    # not below what the tables hold now
    assert vm.hcall(H_PUT_TCE, LIOBN0, 0, DMA_PAGE | 3)[0] == H_SUCCESS
    assert used(vm) == DEFAULT_DIR + LEAF_BYTES
    with pytest.raises(ExecuteError, match=f"hold now \\({DEFAULT_DIR + LEAF_BYTES} bytes\\)"):
        vm.cmd("x-iommulab-spapr-set-ddw-policy", table_memory_limit=DEFAULT_DIR)
    r = vm.cmd("x-iommulab-spapr-set-ddw-policy", table_memory_limit=64 * KiB)
    assert r["table-memory-limit"] == 64 * KiB
    info = vm.cmd("x-iommulab-query-hw-info", device="edu0")["spapr-pe"]
    assert info["table-memory-limit"] == 64 * KiB


def test_huge_window_costs_only_its_directory(vm: PseriesQtest) -> None:
    """2^43 bytes of 4 KiB pages: 2^31 TCEs, 16 GiB as a flat table."""
    before = rss(vm)
    st, liobn, hi, lo = vm.create(12, 43)
    assert (st, liobn) == (RTAS_SUCCESS, LIOBN1)
    base = (hi << 32) | lo
    w = window(vm, liobn)
    assert (w["entries"], w["levels"]) == (1 << 31, 2)
    assert w["table-bytes"] == (1 << 31) // LEAF * 8 == 4 * MiB
    # H_STUFF_TCE of 0 over all of it: nothing to allocate, nothing written
    assert vm.hcall(H_STUFF_TCE, liobn, base, 0, 1 << 31)[0] == H_SUCCESS
    # of a valid TCE over all of it: 16 GiB of leaves, refused, nothing written
    assert vm.hcall(H_STUFF_TCE, liobn, base, DMA_PAGE | 3, 1 << 31)[0] == H_HARDWARE
    assert window(vm, liobn)["table-bytes"] == 4 * MiB
    assert window(vm, liobn)["entries-in-use"] == 0
    # a TCE at each end works and costs one leaf each
    last = base + ((1 << 31) - 1) * 4096
    assert vm.hcall(H_PUT_TCE, liobn, base, DMA_PAGE | 3)[0] == H_SUCCESS
    assert vm.hcall(H_PUT_TCE, liobn, last, (DMA_PAGE + 4096) | 1)[0] == H_SUCCESS
    w = window(vm, liobn)
    assert (w["entries-in-use"], w["table-bytes"]) == (2, 4 * MiB + 2 * LEAF_BYTES)
    assert vm.tces(liobn, 0, 2) == [DMA_PAGE | 3, 0]
    assert vm.tces(liobn, (1 << 31) - 2, 2) == [0, (DMA_PAGE + 4096) | 1]
    # QEMU's memory grew by about the directory, far from 16 GiB
    grown = rss(vm) - before
    assert grown < 64 * MiB, grown
    # removing the window gives it all back
    assert vm.remove(liobn) == RTAS_SUCCESS
    assert used(vm) == DEFAULT_DIR


def test_window_beyond_the_limit_is_refused(vm: PseriesQtest) -> None:
    vm.cmd("x-iommulab-spapr-set-ddw-policy", table_memory_limit=1 * MiB)
    vm.qmp.events()
    windows = vm.windows()
    # 2^31 TCEs need a 4 MiB directory: -1 (hardware error), nothing created
    assert vm.create(12, 43)[0] == RTAS_HW_ERROR
    assert vm.windows() == windows and used(vm) == DEFAULT_DIR
    assert not vm.events("X_IOMMULAB_SPAPR_WINDOW")
    # the host's window-create is held to the same limit: 2^24 TCEs need
    # 32 KiB of directory, a leaf of the default window holds 32 KiB of 64
    vm.cmd("x-iommulab-spapr-set-ddw-policy", table_memory_limit=64 * KiB)
    assert vm.hcall(H_PUT_TCE, LIOBN0, 0, DMA_PAGE | 3)[0] == H_SUCCESS
    windows = vm.windows()
    with pytest.raises(ExecuteError, match="does not fit in the table-memory-limit of PHB 0"):
        vm.cmd("x-iommulab-spapr-window-create", page_shift=16, size=1 << 40)
    assert vm.windows() == windows
    assert vm.tces(LIOBN0, 0, 1) == [DMA_PAGE | 3]
    # a reset frees the leaf (clearing a TCE keeps its leaf, as KVM does)
    vm.cmd("x-iommulab-spapr-window-reset")
    # one within it works
    st, liobn, hi, lo = vm.create(16, 40)  # 2^24 TCEs: 32 KiB directory
    assert (st, liobn, (hi << 32) | lo) == (RTAS_SUCCESS, LIOBN1, DDW_BASE)
    assert window(vm, liobn)["table-bytes"] == 32 * KiB
    assert used(vm) == DEFAULT_DIR + 32 * KiB


def test_tce_writes_beyond_the_limit_fail_and_change_nothing(vm: PseriesQtest) -> None:
    # room for the default window's directory and exactly 3 leaves
    vm.cmd("x-iommulab-spapr-set-ddw-policy", table_memory_limit=DEFAULT_DIR + 3 * LEAF_BYTES)
    leaf = LEAF * 4096  # bytes of IOBA per leaf (4 KiB pages)
    for i in range(3):
        assert vm.hcall(H_PUT_TCE, LIOBN0, i * leaf, (DMA_PAGE + i * 4096) | 3)[0] == H_SUCCESS
    assert used(vm) == DEFAULT_DIR + 3 * LEAF_BYTES
    before = vm.tces(LIOBN0)
    # a fourth leaf: H_PUT_TCE, H_PUT_TCE_INDIRECT (two TCEs, one per leaf)
    # and H_STUFF_TCE over leaves 2 and 3 all fail, nothing written
    assert vm.hcall(H_PUT_TCE, LIOBN0, 3 * leaf, DMA_PAGE | 3)[0] == H_HARDWARE
    vm.qt.memwrite(TCE_LIST, (DMA_PAGE | 3).to_bytes(8, "big") * 2)
    ioba = 3 * leaf - 4096
    assert vm.hcall(H_PUT_TCE_INDIRECT, LIOBN0, ioba, TCE_LIST, 2)[0] == H_HARDWARE
    assert vm.hcall(H_STUFF_TCE, LIOBN0, 2 * leaf, DMA_PAGE | 1, 2 * LEAF)[0] == H_HARDWARE
    assert vm.tces(LIOBN0) == before
    assert used(vm) == DEFAULT_DIR + 3 * LEAF_BYTES
    # bad arguments are still H_PARAMETER, checked first
    assert vm.hcall(H_PUT_TCE, LIOBN0, 3 * leaf + 1, DMA_PAGE | 3)[0] == H_PARAMETER
    # inside the leaves there are, everything works; 0 never needs a leaf
    assert vm.hcall(H_PUT_TCE_INDIRECT, LIOBN0, 4096, TCE_LIST, 2)[0] == H_SUCCESS
    assert vm.hcall(H_STUFF_TCE, LIOBN0, 2 * leaf, DMA_PAGE | 1, LEAF)[0] == H_SUCCESS
    assert vm.hcall(H_PUT_TCE, LIOBN0, 3 * leaf, 0)[0] == H_SUCCESS
    assert vm.hcall(H_STUFF_TCE, LIOBN0, 3 * leaf, 0, 4 * LEAF)[0] == H_SUCCESS
    t = vm.tces(LIOBN0)
    assert t[1:3] == [DMA_PAGE | 3] * 2 and t[2 * LEAF : 3 * LEAF] == [DMA_PAGE | 1] * LEAF
    assert not any(t[3 * LEAF :])
    # raising the limit gives room; a reset frees every leaf
    vm.cmd("x-iommulab-spapr-set-ddw-policy", table_memory_limit=256 * MiB)
    assert vm.hcall(H_PUT_TCE, LIOBN0, 3 * leaf, DMA_PAGE | 3)[0] == H_SUCCESS
    assert used(vm) == DEFAULT_DIR + 4 * LEAF_BYTES
    vm.cmd("x-iommulab-spapr-window-reset")
    assert used(vm) == DEFAULT_DIR and not any(vm.tces(LIOBN0))


def test_dma_within_the_limit(vm: PseriesQtest) -> None:
    vm.cmd("x-iommulab-spapr-set-ddw-policy", table_memory_limit=64 * KiB)
    bar = vm.edu_setup()
    data = bytes((i * 5 + 1) & 0xFF for i in range(4096))
    vm.qt.memwrite(DMA_PAGE, data)
    # a TCE at the far end of the default window: its leaf is the only one
    ioba = GiB - 4096
    assert vm.hcall(H_PUT_TCE, LIOBN0, ioba, DMA_PAGE | 3)[0] == H_SUCCESS
    assert used(vm) == DEFAULT_DIR + LEAF_BYTES
    vm.edu_dma(bar, ioba, EDU_BUF, 4096, to_memory=False)
    vm.qt.memset(DMA_PAGE, 4096, 0)
    vm.edu_dma(bar, EDU_BUF, ioba, 4096, to_memory=True)
    assert vm.qt.memread(DMA_PAGE, 4096) == data
    # a second leaf does not fit: the DMA there stays refused (TCE fault)
    assert vm.hcall(H_PUT_TCE, LIOBN0, 0, DMA_PAGE | 3)[0] == H_HARDWARE
    vm.qt.memset(DMA_PAGE, 4096, 0x77)
    vm.edu_dma(bar, EDU_BUF, 0, 64, to_memory=True)
    assert vm.qt.memread(DMA_PAGE, 4096) == b"\x77" * 4096
    f = vm.cmd("x-iommulab-query-faults", iommu=vm.phb()["path"])["faults"]
    assert [(x["iova"], x["reason"]) for x in f] == [(0, "not-present")]


def wait_migration(vm: PseriesQtest) -> str:
    for _ in range(600):
        status: str = vm.cmd("query-migrate").get("status", "")
        if status in ("completed", "failed"):
            return status
        time.sleep(0.05)
    raise AssertionError("migration did not end")


def peak_rss(vm: PseriesQtest) -> int:
    assert vm.proc is not None
    for line in Path(f"/proc/{vm.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * KiB
    raise AssertionError("no VmHWM")


def test_migration_keeps_tces_without_a_flat_table(tmp_path: Path) -> None:
    """2^24 TCEs (a 128 MiB flat table): the stream has them all, neither side
    allocates them; the incoming side has leaves only where TCEs are not 0."""
    stream = tmp_path / "vm.mig"
    src = PseriesQtest(qemu_binary("ppc64"), ram=512 * MiB)
    try:
        st, liobn, hi, lo = src.create(12, 36)
        assert st == RTAS_SUCCESS
        base = (hi << 32) | lo
        last = (1 << 24) - 1
        assert src.hcall(H_PUT_TCE, liobn, base, DMA_PAGE | 3)[0] == H_SUCCESS
        assert src.hcall(H_PUT_TCE, liobn, base + last * 4096, DMA_PAGE | 1)[0] == H_SUCCESS
        assert src.hcall(H_PUT_TCE, LIOBN0, 0x5000, DMA_PAGE | 2)[0] == H_SUCCESS
        windows = src.windows()
        src.cmd("stop")
        src.cmd("migrate", uri=f"file:{stream}")
        assert wait_migration(src) == "completed"
        assert stream.stat().st_size > (1 << 24) * 8  # the flat format
        assert peak_rss(src) < 100 * MiB, peak_rss(src)
    finally:
        src.close()
    dst = PseriesQtest(qemu_binary("ppc64"), ["-incoming", "defer"], ram=512 * MiB)
    try:
        dst.cmd("migrate-incoming", uri=f"file:{stream}")
        assert wait_migration(dst) == "completed"
        # table-bytes: the same leaves.  Who made a window is the lab's record, not
        # migrated (docs/spapr.md): the guest's window arrives as the platform's
        assert [w.pop("owner") for w in windows] == ["host", "guest"]
        got = dst.windows()
        assert [w.pop("owner") for w in got] == ["host", "host"]
        assert got == windows
        assert dst.tces(liobn, 0, 2) == [DMA_PAGE | 3, 0]
        assert dst.tces(liobn, last - 1, 2) == [0, DMA_PAGE | 1]
        assert dst.tces(LIOBN0, 5, 1) == [DMA_PAGE | 2]
        assert peak_rss(dst) < 100 * MiB, peak_rss(dst)
    finally:
        dst.close()
