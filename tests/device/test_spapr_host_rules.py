"""What x-iommulab-spapr-put-tces refuses, and the window owner rule.  qtest, no guest.

Every refusal must name the argument (and the entry, for a bad TCE), and change
nothing: the whole window read back, the table memory and the windows as before; QEMU
answers afterwards.  Guest-made windows (RTAS) are read-only to the host side.
"""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import ExecuteError
from test_spapr_host_tces import DST, RAM, SRC, VIO_LIOBN, GiB, TwoPhbs

from pyctl.qemu.pseries_qtest import LIOBN0, LIOBN1, RTAS_SUCCESS
from pyctl.qemu.qmp import memfd_from

PUT = "x-iommulab-spapr-put-tces"
LEAF = 4096  # TCEs per table leaf (patch 0016)


@pytest.fixture
def vm() -> Iterator[TwoPhbs]:
    p = TwoPhbs()
    try:
        # something to keep: a 64 KiB-page host window with TCEs, and TCEs in the default one
        w = p.cmd("x-iommulab-spapr-window-create", page_shift=16, size=GiB)
        assert w["liobn"] == LIOBN1 and w["owner"] == "host"
        p.put(LIOBN0, 0, [SRC | 3, DST | 1])
        p.put(LIOBN1, 2, [SRC | 2])
        yield p
    finally:
        p.close()


def state(vm: TwoPhbs) -> tuple[Any, ...]:
    """All a refused put must leave alone: the PHBs, every enabled window's TCEs."""
    phbs = vm.cmd("x-iommulab-spapr-query-phbs")
    return phbs, [vm.tces(w["liobn"]) for p in phbs for w in p["windows"]]


def refused(vm: TwoPhbs, call: Callable[[], Any], *needles: str) -> None:
    before = state(vm)
    with pytest.raises(ExecuteError) as e:
        call()
    msg = str(e.value)
    for n in needles:
        assert n in msg, msg
    assert state(vm) == before
    vm.cmd("query-status")  # alive


def b64(*tces: int) -> str:
    return base64.b64encode(struct.pack(f"<{len(tces)}Q", *tces)).decode()


OK = SRC | 3
MAX = 1 << 19  # put-tces-max, checked against the device's report below


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        ({"liobn": 0x7777, "tces": [OK]}, ["'liobn'", "no TCE table"]),
        ({"liobn": VIO_LIOBN, "tces": [OK]}, ["'liobn'", "not a window of a PHB"]),
        ({"liobn": 0x80000101, "tces": [OK]}, ["'liobn'", "not enabled"]),
        ({"start": GiB >> 12, "tces": [OK]}, ["'start'", "outside"]),
        ({"start": (GiB >> 12) - 1, "tces": [OK, OK]}, ["'start'", "262143..262144"]),
        ({"start": 2**64 - 1, "tces": [OK]}, ["'start'", "outside"]),
        ({"tces": [OK, OK, SRC | 0x10 | 1]}, ["tces[2]", "reserved bits"]),
        ({"tces": [OK, SRC]}, ["tces[1]", "neither read nor write"]),
        ({"tces": [OK, RAM | 3]}, ["tces[1]", "not guest RAM"]),
        ({"tces": [(1 << 62) | 1]}, ["tces[0]", "not guest RAM"]),
        ({"tces": [(2**64 - 4096) | 3]}, ["tces[0]", "not guest RAM"]),
        ({"liobn": LIOBN1, "tces": [OK, (SRC + 4096) | 3]}, ["tces[1]", "not aligned", "0x10000"]),
        ({"data": b64(OK, OK, OK, 7)}, ["data[3]", "reserved bits"]),
        ({"data": "!!!!"}, ["'data'", "not base64"]),
        ({"data": "AAA"}, ["'data'", "multiple of 4"]),
        ({"data": "AAAA"}, ["'data'", "not a whole number"]),
        ({"data": ""}, ["'data'", "empty"]),
        ({"data": b64(OK), "count": 2}, ["'count'"]),
        ({"tces": []}, ["'tces'", "empty"]),
        ({"tces": [OK], "data": b64(OK)}, ["exactly one", "several"]),
        ({"tces": [OK], "count": 1}, ["'count'"]),
        ({}, ["exactly one", "none"]),
        ({"fd": "nosuch", "count": 1}, ["'fd'", "nosuch"]),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    vm: TwoPhbs, args: dict[str, Any], needles: list[str]
) -> None:
    full = {"liobn": LIOBN0, "start": 0, **args}
    refused(vm, lambda: vm.cmd(PUT, **full), *needles)


def test_count_over_the_maximum(vm: TwoPhbs) -> None:
    n = vm.phb()["host-windows"]["put-tces-max"]
    vm.cmd("x-iommulab-spapr-window-remove", liobn=LIOBN1)
    w = vm.cmd("x-iommulab-spapr-window-create", page_shift=12, size=4 * GiB)  # 2^20 TCEs
    assert n == MAX
    assert (
        vm.cmd("x-iommulab-query-hw-info", device="edu0")["spapr-pe"]["host-windows"][
            "put-tces-max"
        ]
        == n
    )
    # one over, in every form (inline and base64: ~6 MB of JSON each)
    over = [0] * (n + 1)
    refused(vm, lambda: vm.put(w["liobn"], 0, over, "fd"), "'count'", str(n))
    refused(vm, lambda: vm.put(w["liobn"], 0, over), "'tces'", "put-tces-max")
    refused(vm, lambda: vm.put(w["liobn"], 0, over, "data"), "'data'", "longer")
    # n itself is accepted in every form, each run one entry further
    v = [(SRC + i * 4096) | 3 for i in range(3)]
    for i, form in enumerate(("fd", "data", "inline")):
        assert vm.put(w["liobn"], i, [v[i]] * n, form)["count"] == n
    assert vm.tces(w["liobn"], 0, 3) == v and vm.tces(w["liobn"], n + 1, 2) == [v[2], 0]


def qemu_fds(vm: TwoPhbs) -> list[str]:
    """What QEMU's file descriptors point to."""
    assert vm.proc is not None
    d = Path(f"/proc/{vm.proc.pid}/fd")
    return sorted(os.readlink(f) for f in d.iterdir() if f.exists())


def test_fd_errors(vm: TwoPhbs) -> None:
    held = qemu_fds(vm)
    r, w = os.pipe()
    os.write(w, struct.pack("<Q", OK))
    os.close(w)
    refused(vm, lambda: vm.put_fd(r, LIOBN0, 0, 1), "'fd'", "not a regular file")
    short = memfd_from(struct.pack("<3Q", OK, OK, OK))
    refused(vm, lambda: vm.put_fd(short, LIOBN0, 0, 4), "'fd'", "too short")
    nocount = memfd_from(struct.pack("<Q", OK))
    refused(vm, lambda: vm.put_fd(nocount, LIOBN0, 0, None), "'fd'", "'count'")
    bad = memfd_from(struct.pack("<2Q", OK, DST | 0x800 | 1))
    refused(vm, lambda: vm.put_fd(bad, LIOBN0, 0, 2), "fd[1]", "reserved bits")
    guest = memfd_from(struct.pack("<Q", OK))
    refused(vm, lambda: vm.put_fd(guest, 0x7777, 0, 1), "'liobn'")
    good = memfd_from(struct.pack("<2Q", 0, DST | 3))
    assert vm.put_fd(good, LIOBN0, 0, 2)["count"] == 2
    assert vm.tces(LIOBN0, 0, 2) == [0, DST | 3]
    # QEMU closed every fd it was passed, refused or not
    assert qemu_fds(vm) == held
    # (the check sees an fd QEMU holds: one passed to a command that does not take it)
    kept = memfd_from(b"x")
    try:
        vm.qmp.execute_with_fd("query-status", {}, kept, "kept")
    finally:
        os.close(kept)
    assert qemu_fds(vm) != held
    vm.cmd("closefd", fdname="kept")
    assert qemu_fds(vm) == held


def test_table_memory_limit_refuses_the_whole_put(vm: TwoPhbs) -> None:
    pol = vm.phb()["policy"]
    # room for one more leaf (32 KiB), not two
    limit = pol["table-memory"] + 32 * 1024 + 16
    vm.cmd("x-iommulab-spapr-set-ddw-policy", table_memory_limit=max(limit, 64 * 1024))
    free = vm.phb()["policy"]["table-memory-limit"] - vm.phb()["policy"]["table-memory"]
    leaves = free // (32 * 1024)
    assert leaves >= 1
    # TCEs in leaves+1 new leaves (the window's first leaf exists already)
    run = [OK] * (LEAF * (leaves + 1))
    refused(vm, lambda: vm.put(LIOBN0, LEAF, run, "data"), "table-memory-limit", "nothing")
    # zeros need no leaf, whatever the range; one leaf less fits
    vm.put(LIOBN0, LEAF, [0] * len(run), "data")
    assert vm.phb()["policy"]["table-memory"] == pol["table-memory"]
    vm.put(LIOBN0, LEAF, run[LEAF:], "data")
    assert vm.tces(LIOBN0, LEAF, 1) == [OK] and vm.tces(LIOBN0, LEAF * (leaves + 1), 1) == [0]


def test_guest_windows_are_read_only_to_the_host(vm: TwoPhbs) -> None:
    vm.cmd("x-iommulab-spapr-window-remove", liobn=LIOBN1)
    assert [w["owner"] for w in vm.windows()] == ["host"]
    st, liobn, _, _ = vm.create(16, 32)
    assert (st, liobn) == (RTAS_SUCCESS, LIOBN1)
    assert [w["owner"] for w in vm.windows()] == ["host", "guest"]
    refused(vm, lambda: vm.put(liobn, 0, [OK]), "'liobn'", "made by the guest", "read-only")
    refused(
        vm,
        lambda: vm.cmd("x-iommulab-spapr-window-remove", liobn=liobn),
        "'liobn'",
        "made by the guest",
    )
    # the guest's reset re-makes the default window as the guest's
    assert vm.reset() == RTAS_SUCCESS
    assert [w["owner"] for w in vm.windows()] == ["guest"]
    refused(vm, lambda: vm.put(LIOBN0, 0, [OK]), "made by the guest")
    # the host's window-reset takes the PE back
    ws = vm.cmd("x-iommulab-spapr-window-reset")
    assert [w["owner"] for w in ws] == ["host"]
    vm.put(LIOBN0, 0, [OK])
    # a guest-made window again, then machine reset: the platform's default window
    assert vm.create(16, 32)[0] == RTAS_SUCCESS
    vm.cmd("system_reset")
    assert [(w["liobn"], w["owner"]) for w in vm.windows()] == [(LIOBN0, "host")]
    # the other PHB was never the guest's
    assert [w["owner"] for w in vm.phb(1)["windows"]] == ["host"]


def test_x86_refuses_the_new_commands() -> None:
    from conftest import qemu_binary

    from pyctl.qemu.process import QemuProcess

    with QemuProcess([str(qemu_binary("x86_64")), "-M", "none", "-display", "none"]) as q:
        for name, args in ((PUT, {"liobn": LIOBN0, "start": 0, "tces": [0]}),
                           ("x-iommulab-spapr-set-blocked", {"blocked": True})):  # fmt: skip
            with pytest.raises(ExecuteError, match="pseries"):
                q.qmp.cmd(name, **args)
