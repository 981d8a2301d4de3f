"""The device-wide page-table memory limit of iommulab-viommu (and of
iommulab-spapr-s2, its subclass): property ``table-memory-limit`` (default
1 GiB), reported by x-iommulab-query-hw-info's ``limits``.  Each paging
domain may hold 256 MiB and 4,096 domains are allowed; together they stop at
the limit with a clear error, nothing changed, and freeing a domain gives
the room back."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import IOMMU, Lab, qemu_binary
from qemu.qmp import ExecuteError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PAGE = 4096
TABLE = 4096  # bytes of one page table
LIMIT_MSG = "page-table memory limit shared by all domains"


def limits(lab: Lab) -> dict[str, Any]:
    res: dict[str, Any] = lab.qmp.cmd("x-iommulab-query-hw-info", device=IOMMU)["limits"]
    return res


def rss(lab: Lab) -> int:
    assert lab.proc is not None
    for line in Path(f"/proc/{lab.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * KiB
    raise AssertionError("no VmRSS")


def leaves(iova: int, n: int) -> dict[str, Any]:
    """4 KiB mappings over n * 2 MiB (addr not 2 MiB aligned): n leaf tables."""
    return {"iova": iova, "size": n * (2 * MiB), "addr": PAGE, "read": True, "write": False}


def test_default_and_property_reported(lab_factory: Any) -> None:
    lab = lab_factory([])
    lim = limits(lab)
    assert (lim["table-memory-limit"], lim["table-memory"]) == (1 * GiB, 0)
    lab.cmd("x-iommulab-domain-alloc", domain=1, type="paging", ias=39)
    assert limits(lab)["table-memory"] == TABLE  # its root table
    # rounded down to whole 4 KiB tables
    lab = lab_factory([",table-memory-limit=12289"])
    assert limits(lab)["table-memory-limit"] == 3 * TABLE


@pytest.mark.parametrize(
    "device", ["iommulab-viommu", "iommulab-spapr-s2"], ids=["viommu", "spapr-s2"]
)
def test_below_one_table_refused_at_start(device: str) -> None:
    arch, machine = ("x86_64", "q35") if device == "iommulab-viommu" else ("ppc64", "pseries")
    r = subprocess.run(
        [
            str(qemu_binary(arch)), "-M", machine, "-accel", "qtest", "-display", "none",
            "-nodefaults", "-device", f"{device},id=v,table-memory-limit=4095",
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode != 0
    assert "table-memory-limit must be at least 4096 (one page table), not 4095" in r.stderr


def test_domains_stop_at_the_limit_and_a_free_gives_room(lab_factory: Any) -> None:
    lab = lab_factory([",table-memory-limit=16K"])  # four tables
    for d in range(1, 5):
        lab.cmd("x-iommulab-domain-alloc", domain=d, type="paging", ias=39)
    before = lab.cmd("x-iommulab-query")
    with pytest.raises(ExecuteError, match=f"domain 5: .*{LIMIT_MSG}"):
        lab.cmd("x-iommulab-domain-alloc", domain=5, type="paging", ias=39)
    # a map needs tables too: refused, nothing mapped
    with pytest.raises(ExecuteError, match=f"{LIMIT_MSG}; nothing was mapped"):
        lab.cmd("x-iommulab-map", domain=1, mappings=[leaves(0, 1)])
    # nested domains hold no tables: still allowed
    lab.cmd("x-iommulab-domain-alloc", domain=6, type="nested", parent=1, s1_root=0)
    lab.cmd("x-iommulab-domain-free", domain=6)
    after = lab.cmd("x-iommulab-query")
    assert after["generation"] == before["generation"] + 2  # the nested alloc and free
    assert {**after, "generation": 0} == {**before, "generation": 0}
    assert limits(lab)["table-memory"] == 4 * TABLE
    lab.cmd("x-iommulab-domain-free", domain=4)
    lab.cmd("x-iommulab-domain-alloc", domain=5, type="paging", ias=39)
    assert limits(lab)["table-memory"] == 4 * TABLE


def test_filling_the_limit_keeps_rss_bounded(lab_factory: Any) -> None:
    """64 MiB shared by domains that could hold 256 MiB each."""
    lab = lab_factory([",table-memory-limit=64M"])
    start = rss(lab)
    per_domain = 4096  # leaf tables: 16 MiB, plus a few upper tables
    done = 0
    for d in range(1, 9):
        lab.cmd("x-iommulab-domain-alloc", domain=d, type="paging", ias=48)
        before = lab.cmd("x-iommulab-query")
        try:
            lab.cmd("x-iommulab-map", domain=d, mappings=[leaves(0, per_domain)])
        except ExecuteError as e:
            assert LIMIT_MSG in str(e) and "nothing was mapped" in str(e)
            assert lab.cmd("x-iommulab-query") == before
            break
        done += 1
    assert done == 3  # 3 x (4096 + 4) tables fit in 16,384; a fourth does not
    held = limits(lab)["table-memory"]
    assert 3 * per_domain * TABLE < held <= 64 * MiB
    grown = rss(lab) - start
    # tables are what the device allocates; far from 4 x 16 MiB + overhead
    assert grown < held + 32 * MiB, (grown, held)
    # freeing a domain gives the room to the next one
    lab.cmd("x-iommulab-domain-free", domain=1)
    lab.cmd("x-iommulab-map", domain=done + 1, mappings=[leaves(0, per_domain)])
    # domain 4's root table was already held: one table less than domain 1's
    assert limits(lab)["table-memory"] == held - TABLE
    # translation works in the last one
    lab.cmd("x-iommulab-attach", device="edu0", mode="domain", domain=done + 1)
    tr = lab.cmd("x-iommulab-translate", device="edu0", iova=3 * MiB + 8, access="read")
    assert tr["allowed"] and tr["addr"] == PAGE + 3 * MiB + 8
