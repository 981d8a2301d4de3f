"""Resource limits of iommulab-viommu: a QMP client cannot make QEMU allocate
without bound.  Over a limit the command fails with a clear error, the device
is unchanged, and it keeps working."""

from __future__ import annotations

import pytest
from conftest import Lab
from qemu.qmp import ExecuteError

PAGE = 4096
MAX_DOMAINS = 4096  # IL_MAX_DOMAINS
MAX_TABLES = 1 << 16  # IL_S2_MAX_TABLES, 4 KiB each


def test_map_over_the_table_budget_is_refused_and_changes_nothing(lab: Lab) -> None:
    lab.cmd("x-iommulab-domain-alloc", domain=1, type="paging")
    keep = {"iova": 0x1000, "size": PAGE, "addr": 0x2000, "read": True, "write": True}
    lab.cmd("x-iommulab-map", domain=1, mappings=[keep])
    before = lab.cmd("x-iommulab-query")
    # 4 KiB leaves (addr not 2 MiB aligned) over 2 MiB * MAX_TABLES: one leaf
    # table per 2 MiB, more than the budget allows.
    huge = {
        "iova": 1 << 40,
        "size": (2 << 20) * MAX_TABLES,
        "addr": PAGE,
        "read": True,
        "write": False,
    }
    with pytest.raises(ExecuteError, match="page-table budget"):
        lab.cmd(
            "x-iommulab-map",
            domain=1,
            mappings=[
                {"iova": 1 << 39, "size": PAGE, "addr": 0, "read": True, "write": True},
                huge,
            ],
        )
    assert lab.cmd("x-iommulab-query") == before
    # the domain still maps and translates
    lab.cmd(
        "x-iommulab-map",
        domain=1,
        mappings=[{"iova": 1 << 39, "size": PAGE, "addr": 0x5000, "read": True, "write": True}],
    )
    lab.cmd("x-iommulab-attach", device="edu0", mode="domain", domain=1)
    tr = lab.cmd("x-iommulab-translate", device="edu0", iova=(1 << 39) + 8, access="write")
    assert tr["allowed"] and tr["addr"] == 0x5008


def test_domain_limit_refuses_the_next_and_a_free_makes_room(lab: Lab) -> None:
    for d in range(1, MAX_DOMAINS + 1):
        lab.cmd("x-iommulab-domain-alloc", domain=d, type="paging", ias=39)
    before = lab.cmd("x-iommulab-query")
    assert len(before["domains"]) == MAX_DOMAINS
    with pytest.raises(ExecuteError, match="too many domains"):
        lab.cmd("x-iommulab-domain-alloc", domain=0, type="paging")
    with pytest.raises(ExecuteError, match="too many domains"):
        lab.cmd("x-iommulab-domain-alloc", domain=0, type="nested", parent=1, s1_root=0)
    assert lab.cmd("x-iommulab-query") == before
    lab.cmd("x-iommulab-domain-free", domain=MAX_DOMAINS)
    lab.cmd("x-iommulab-domain-alloc", domain=0, type="nested", parent=1, s1_root=0)
    assert {d["domain"] for d in lab.cmd("x-iommulab-query")["domains"]} == (
        set(range(MAX_DOMAINS))
    )
