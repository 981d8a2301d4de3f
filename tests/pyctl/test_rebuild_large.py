"""Rebuild of a domain with more runs than one query answer carries: ``QmpBackend.query``
pages each domain's mappings (x-iommulab-query ``domain``/``start``, docs/qmp.md), so
``IommufdContext.from_hardware`` works whatever a domain holds.

The default run rebuilds 200,000 unmergeable 4 KiB mappings (above the ~130,000 at which one
unpaged answer used to overflow the client's buffer); ``IOMMULAB_REBUILD_MAPPINGS=1000000``
runs the million.  Times are printed (``-s``), not asserted."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from testvm import ViommuVm, needs_viommu

from pyctl.iommufd import IommufdContext, MapEntry
from pyctl.iommufd.objects import HwptPaging, Ioas
from pyctl.iommufd.qmp_backend import QmpBackend

PAGE = 4096
BATCH = 8192  # mappings per x-iommulab-map
RAM_PAGES = 1 << 16  # 256 MiB of guest RAM
N = int(os.environ.get("IOMMULAB_REBUILD_MAPPINGS", "200000"))

pytestmark = needs_viommu


@pytest.fixture
def vm() -> Iterator[ViommuVm]:
    with ViommuVm(devices=1) as v:
        yield v


def _entry(i: int) -> MapEntry:
    """Page i: outputs in guest RAM, permissions alternating, so no two neighbours merge."""
    return MapEntry(i * PAGE, PAGE, (i % RAM_PAGES) * PAGE, True, bool(i % 2))


def test_rebuild_of_a_domain_with_many_runs(vm: ViommuVm) -> None:
    with QmpBackend(str(vm.qmp_path)) as hw:
        hw.execute("x-iommulab-domain-alloc", {"iommu": "viommu0", "domain": 1, "type": "paging"})
        t0 = time.perf_counter()
        for b in range(0, N, BATCH):
            hw.execute(
                "x-iommulab-map",
                {
                    "iommu": "viommu0",
                    "domain": 1,
                    "mappings": [
                        {"iova": e.iova, "size": e.size, "addr": e.addr, "read": e.read,
                         "write": e.write}
                        for e in map(_entry, range(b, min(b + BATCH, N)))
                    ],
                },
            )  # fmt: skip
        t_map = time.perf_counter() - t0
        # one unpaged answer is refused (it would be more than the bound), not sent
        with pytest.raises(Exception, match="page them"):
            hw.execute("x-iommulab-query", {"iommu": "viommu0"})
        sent = hw.commands_sent
        t0 = time.perf_counter()
        state = hw.query()
        t_query = time.perf_counter() - t0
        pages = hw.commands_sent - sent - 1
        [dom] = state.domains
        assert dom.mappings == tuple(map(_entry, range(N)))
        t0 = time.perf_counter()
        ctx = IommufdContext.from_hardware(hw)
        t_rebuild = time.perf_counter() - t0
        objs = ctx.objects()
        [paging] = [o for o in objs.values() if isinstance(o, HwptPaging)]
        [ioas] = [o for o in objs.values() if isinstance(o, Ioas)]
        assert paging.id == 1 and paging.ioas_id == ioas.id
        got = [(a.iova, a.length, a.phys, a.read, a.write) for a in ioas.areas]
        assert got == [(e.iova, e.size, e.addr, e.read, e.write) for e in dom.mappings]
        print(
            f"{N} mappings: mapped in {t_map:.1f} s, query() in {t_query:.1f} s "
            f"({pages} pages), from_hardware in {t_rebuild:.1f} s"
        )
