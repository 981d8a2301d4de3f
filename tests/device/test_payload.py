"""Bulk payloads of x-iommulab-map / -unmap / -invalidate / -query (docs/qmp.md "Bulk
payloads"): the same ranges inline, as base64 ``data`` and as a memfd passed with getfd
give the same state and the same DMA; bad payloads are refused with an error naming
the argument, change nothing, and leave no file descriptor behind in QEMU."""

from __future__ import annotations

import base64
import os
import struct
from typing import Any

import pytest
from conftest import IOMMU, Lab
from test_viommu import DST, PAGE, attach, load_src, paging, pattern

from pyctl.qemu.qmp import ExecuteError, memfd_from

MAPPING = struct.Struct("<4Q")
RANGE = struct.Struct("<2Q")


def packed_maps(*maps: tuple[int, int, int, int]) -> bytes:
    """(iova, size, addr, flags) records: flags 1 read, 2 write."""
    return b"".join(MAPPING.pack(*m) for m in maps)


def packed_ranges(*ranges: tuple[int, int]) -> bytes:
    return b"".join(RANGE.pack(*r) for r in ranges)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def qemu_fds(lab: Lab) -> set[str]:
    """What QEMU's open file descriptors are (their /proc targets)."""
    assert lab.proc is not None
    d = f"/proc/{lab.proc.pid}/fd"
    out = set()
    for name in os.listdir(d):
        try:
            out.add(f"{name}:{os.readlink(f'{d}/{name}')}")
        except FileNotFoundError:
            continue  # closed while listed
    return out


def with_fd(lab: Lab, fd: int, cmd: str, **args: Any) -> Any:
    """Pass ``fd`` with getfd as 'p0' and run ``cmd`` naming it."""
    full = {"iommu": IOMMU, "fd": "p0", **{k.replace("_", "-"): v for k, v in args.items()}}
    return lab.qmp.execute_with_fd(cmd, full, fd, "p0")


def test_the_three_forms_give_the_same_mappings_and_dma(lab: Lab) -> None:
    paging(lab, 1)
    attach(lab, "domain", 1)
    maps = [(0x100000 + i * 0x3000, PAGE, DST, 3) for i in range(3)]
    lab.cmd(
        "x-iommulab-map",
        domain=1,
        mappings=[
            {"iova": i, "size": s, "addr": a, "read": True, "write": True} for i, s, a, _ in maps
        ],
    )
    inline = lab.cmd("x-iommulab-query", domain=1)["domains"][0]["mappings"]
    lab.cmd("x-iommulab-unmap", domain=1, data=b64(packed_ranges(*[(m[0], m[1]) for m in maps])))
    assert lab.cmd("x-iommulab-query", domain=1)["domains"][0]["mappings"] == []
    lab.cmd("x-iommulab-map", domain=1, data=b64(packed_maps(*maps)), count=3)
    assert lab.cmd("x-iommulab-query", domain=1)["domains"][0]["mappings"] == inline
    fd = memfd_from(packed_ranges(*[(m[0], m[1]) for m in maps]))
    try:
        r = with_fd(lab, fd, "x-iommulab-unmap", domain=1, count=3)
    finally:
        os.close(fd)
    assert r["unmapped"] == 3 * PAGE
    fd = memfd_from(packed_maps(*maps))
    try:
        with_fd(lab, fd, "x-iommulab-map", domain=1, count=3)
    finally:
        os.close(fd)
    assert lab.cmd("x-iommulab-query", domain=1)["domains"][0]["mappings"] == inline
    # the packed answer holds the same records
    [d] = lab.cmd("x-iommulab-query", domain=1, packed=True)["domains"]
    assert d["mappings"] == [] and d["count"] == 3
    assert base64.b64decode(d["data"]) == packed_maps(*maps)
    # and DMA goes where the fd said
    load_src(lab, pattern(3))
    lab.dma_from_edu(maps[2][0])
    assert lab.qt.memread(DST, PAGE) == pattern(3)
    # invalidate by packed ranges: accepted, the mapping still translates
    lab.cmd("x-iommulab-invalidate", domain=1, data=b64(packed_ranges((maps[0][0], PAGE))))
    lab.dma_from_edu(maps[0][0])


def test_hw_info_reports_the_batch_maximum(lab: Lab) -> None:
    limits = lab.qmp.cmd("x-iommulab-query-hw-info", device=IOMMU)["limits"]
    assert limits["max-batch"] == 1 << 20


BAD_DATA: list[tuple[str, dict[str, Any], str]] = [
    ("x-iommulab-map", {"data": "AAAA" * 3 + "A"}, "'data' is not base64: its length"),
    ("x-iommulab-map", {"data": "AAA*"}, "'data' is not base64: character 3"),
    ("x-iommulab-map", {"data": b64(b"\0" * 31)}, "not a whole number of mappings"),
    ("x-iommulab-map", {"data": b64(packed_maps((0x100000, PAGE, 0, 3))), "count": 2}, "'count'"),
    ("x-iommulab-map", {"data": b64(packed_maps((0x100000, PAGE, 0, 7)))}, "flags 0x7"),
    ("x-iommulab-map", {"data": b64(packed_maps((0x100800, PAGE, 0, 3)))}, "aligned"),
    ("x-iommulab-map", {"data": ""}, "'data' is empty"),
    ("x-iommulab-map", {}, "none was given"),
    (
        "x-iommulab-map",
        {"data": b64(packed_maps((0x100000, PAGE, 0, 3))), "mappings": []},
        "several were given",
    ),
    ("x-iommulab-map", {"mappings": [], "count": 1}, "'count' goes with"),
    ("x-iommulab-unmap", {"data": b64(b"\0" * 24)}, "not a whole number of ranges"),
    ("x-iommulab-unmap", {"data": b64(packed_ranges((0x800, PAGE)))}, "aligned"),
    ("x-iommulab-invalidate", {"iova": 0, "size": PAGE, "ranges": []}, "not both"),
    ("x-iommulab-invalidate", {"data": b64(packed_ranges((0x1000, 0x10)))}, r"ranges\[0\]"),
    ("x-iommulab-query", {"domain": 1, "packed": True, "max-mappings": 1 << 19}, "262144"),
]


def state(lab: Lab) -> Any:
    return lab.cmd("x-iommulab-query")


@pytest.mark.parametrize(("cmd", "args", "message"), BAD_DATA)
def test_bad_base64_payloads_change_nothing(
    lab: Lab, cmd: str, args: dict[str, Any], message: str
) -> None:
    paging(lab, 1, (0x20000000, PAGE, DST, True, True))
    before = state(lab)
    with pytest.raises(ExecuteError, match=message):
        lab.qmp.execute(cmd, {"iommu": IOMMU, "domain": 1, **args})
    assert state(lab) == before


def _pipe_fd() -> tuple[int, int]:
    r, w = os.pipe()
    os.write(w, packed_maps((0x100000, PAGE, 0, 3)))
    return r, w


BAD_FD: list[tuple[str, bytes | None, dict[str, Any], str]] = [
    ("x-iommulab-map", None, {"count": 1}, "not a regular file or memfd"),
    ("x-iommulab-map", packed_maps((0x100000, PAGE, 0, 3)), {"count": 2}, "too short"),
    ("x-iommulab-map", packed_maps((0x100000, PAGE, 0, 3)), {}, "needs 'count'"),
    ("x-iommulab-map", packed_maps((0x100000, PAGE, 0, 3)), {"count": 0}, "'count' must be"),
    (
        "x-iommulab-map",
        packed_maps((0x100000, PAGE, 0, 3)),
        {"count": (1 << 20) + 1},
        "'count' must be 1 to 1048576",
    ),
    (
        "x-iommulab-map",
        packed_maps((0x100000, PAGE, 0, 3), (0x200000, PAGE, 0, 1 << 40)),
        {"count": 2},
        r"mappings\[1\] of 'fd': flags",
    ),
    (
        "x-iommulab-map",
        packed_maps((0x100000, PAGE, 0, 3), (0x20000000, PAGE, 0, 3)),
        {"count": 2},
        r"mappings\[1\].*existing",
    ),
    (
        "x-iommulab-map",
        packed_maps((0x100000, PAGE, 0, 3)),
        {"count": 1, "mappings": []},
        "several were given",
    ),
    (
        "x-iommulab-map",
        packed_maps((0x100000, PAGE, 0, 3)),
        {"count": 1, "domain": 9},
        "domain 9 does",
    ),
    (
        "x-iommulab-map",
        packed_maps((0x100000, PAGE, 0, 3)),
        {"count": 1, "iommu": "x"},
        "'x' is not",
    ),
    ("x-iommulab-unmap", packed_ranges((0x800, PAGE)), {"count": 1}, "aligned"),
    ("x-iommulab-invalidate", packed_ranges((0, PAGE)), {"count": 1, "iova": 0}, "together"),
]


@pytest.mark.parametrize(("cmd", "payload", "args", "message"), BAD_FD)
def test_bad_fd_payloads_change_nothing_and_close_the_fd(
    lab: Lab, cmd: str, payload: bytes | None, args: dict[str, Any], message: str
) -> None:
    paging(lab, 1, (0x20000000, PAGE, DST, True, True))
    attach(lab, "domain", 1)
    before = state(lab)
    fds_before = qemu_fds(lab)
    w = -1
    if payload is None:
        fd, w = _pipe_fd()
    else:
        fd = memfd_from(payload)
    try:
        full = {"domain": 1, **args}
        with pytest.raises(ExecuteError, match=message):
            with_fd(lab, fd, cmd, **full)
    finally:
        os.close(fd)
        if w >= 0:
            os.close(w)
    assert state(lab) == before
    # the fd is closed in QEMU and gone from the monitor
    assert qemu_fds(lab) == fds_before
    with pytest.raises(ExecuteError, match="File descriptor named 'p0'"):
        lab.qmp.cmd("closefd", fdname="p0")
    # the device works as before
    load_src(lab, pattern(5))
    lab.dma_from_edu(0x20000000)
    assert lab.qt.memread(DST, PAGE) == pattern(5)


def test_a_good_fd_is_closed_too(lab: Lab) -> None:
    paging(lab, 1)
    fds_before = qemu_fds(lab)
    for i in range(20):
        fd = memfd_from(packed_maps((0x100000 + i * PAGE, PAGE, DST, 3)))
        try:
            with_fd(lab, fd, "x-iommulab-map", domain=1, count=1)
        finally:
            os.close(fd)
    assert qemu_fds(lab) == fds_before
    [d] = lab.cmd("x-iommulab-query", domain=1)["domains"]
    assert [m["iova"] for m in d["mappings"]] == [0x100000 + i * PAGE for i in range(20)]


def test_a_huge_name_is_refused_without_being_echoed(lab: Lab) -> None:
    name = "v" * (1 << 16)
    for cmd, args in [
        ("x-iommulab-query", {"iommu": name}),
        ("x-iommulab-attach", {"iommu": IOMMU, "device": name, "mode": "bypass"}),
        ("x-iommulab-query-hw-info", {"device": name}),
    ]:
        with pytest.raises(ExecuteError, match="longer than 255 bytes") as e:
            lab.qmp.execute(cmd, args)
        assert len(str(e.value)) < 300
