"""All guest RAM at IOVA = GPA, following memory hotplug (q35 with pc-dimm slots)."""

from __future__ import annotations

from typing import Any

import pytest
from testvm import ViommuVm, needs_viommu

from pyctl.iommufd import InMemoryBackend, IommufdContext, IommufdError, x86_device
from pyctl.iommufd.guestmap import GuestRamMap
from pyctl.iommufd.qmp_backend import QmpBackend
from pyctl.qemu.guestram import RamRange

MIB = 1 << 20
GIB = 1 << 30

needs_qemu = needs_viommu


def _covered(mappings: list[tuple[int, int, int]], r: RamRange) -> bool:
    """Is [r.start, r.last] mapped at IOVA = address by the (iova, size, addr) runs?"""
    cur = r.start
    for iova, size, addr in sorted(mappings):
        if iova <= cur <= iova + size - 1:
            if addr - iova != 0:
                return False
            cur = iova + size
    return cur > r.last


@needs_qemu
def test_all_ram_mapped_and_hotplugged_dimm_followed() -> None:
    with (
        ViommuVm(devices=1, mem_mib=1024, mem_opts="slots=2,maxmem=2G") as vm,
        QmpBackend(str(vm.qmp_path)) as hw,
    ):
        ctx = IommufdContext(hw)
        ioas = ctx.ioas_alloc()
        dev = ctx.bind("edu0")
        hwpt = ctx.attach(dev, ioas)
        seen: list[tuple[int, int]] = []
        ram = GuestRamMap(ctx, ioas, hw, batch=128 * MIB, progress=lambda d, t: seen.append((d, t)))
        first = ram.map_all()
        total = sum(r.size for r in first)
        assert total > 1000 * MIB and all(r.last < 4 * GIB for r in first)
        # progress after each batch, ending at the total
        assert len(seen) == sum(-(-r.size // (128 * MIB)) for r in first) and len(seen) > 8
        assert seen[-1] == (total, total)
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)
        assert ram.follow(hw) is None  # nothing happened
        dom = next(d for d in hw.query().domains if d.domain == hwpt)
        runs = [(m.iova, m.size, m.addr) for m in dom.mappings]
        assert all(_covered(runs, r) for r in first)
        name = ctx.get_hw_info(dev).device
        assert hw.translate(name, 4 * GIB, "write").reason == "not-present"

        # hotplug through the helper: the DIMM's range is mapped at once
        res = ram.hotplug_dimm("dimm0", 256 * MIB)
        assert res.removed == [] and len(res.added) == 1
        dimm = res.added[0]
        assert dimm.size == 256 * MIB and dimm.start >= 4 * GIB
        t = hw.translate(name, dimm.start + 0x1234, "write")
        assert t.allowed and t.addr == dimm.start + 0x1234
        assert any(a.iova == dimm.start for a in ctx.areas(ioas))

        # hotplug by someone else over QMP: found by re-reading the flat view
        hw.cmd("object-add", **{"qom-type": "memory-backend-ram", "id": "m1", "size": 128 * MIB})
        hw.cmd("device_add", driver="pc-dimm", id="dimm1", memdev="m1")
        res = ram.sync()
        assert [r.size for r in res.added] == [128 * MIB] and res.removed == []
        dom = next(d for d in hw.query().domains if d.domain == hwpt)
        runs = [(m.iova, m.size, m.addr) for m in dom.mappings]
        assert _covered(runs, res.added[0]) and _covered(runs, dimm)
        assert ctx.check_hardware() == []
        assert ram.sync().added == []  # idempotent

        # a failed plug (no free slot left for a too large DIMM) changes nothing
        before = hw.query()
        with pytest.raises(Exception, match=r"device_add|object-add"):
            ram.hotplug_dimm("dimm2", 4 * GIB)
        assert hw.query() == before


class _FakeQmp:
    """`info mtree -f` output that changes between calls (no QEMU needed)."""

    def __init__(self, ranges: list[tuple[int, int, str]]) -> None:
        self.ranges = ranges

    def cmd(self, cmd: str, **args: Any) -> Any:
        assert cmd == "human-monitor-command"
        lines = ["FlatView #0", ' AS "memory", root: system', " Root memory region: system"]
        for start, size, name in self.ranges:
            lines.append(f"  {start:016x}-{start + size - 1:016x} (prio 0, ram): {name}")
        return "\n".join(lines) + "\n"


def _ctx(limit_pages: int | None = None) -> tuple[IommufdContext, int]:
    ctx = IommufdContext(InMemoryBackend([x86_device("d0")]), limit_pages=limit_pages)
    ioas = ctx.ioas_alloc()
    ctx.attach(ctx.bind("d0"), ioas)
    return ctx, ioas


def test_unplugged_range_is_unmapped() -> None:
    ctx, ioas = _ctx()
    qmp = _FakeQmp([(0, 64 * MIB, "pc.ram"), (4 * GIB, 16 * MIB, "m0")])
    ram = GuestRamMap(ctx, ioas, qmp)
    assert len(ram.map_all()) == 2
    qmp.ranges = qmp.ranges[:1]
    res = ram.sync()
    assert res.added == [] and [r.name for r in res.removed] == ["m0"]
    assert [(a.iova, a.length) for a in ctx.areas(ioas)] == [(0, 64 * MIB)]
    assert ctx.check_hardware() == []


def test_failed_batch_unmaps_its_range_only() -> None:
    # room for the first range and half of the second
    ctx, ioas = _ctx(limit_pages=(64 * MIB + 8 * MIB) // 4096)
    qmp = _FakeQmp([(0, 64 * MIB, "pc.ram"), (4 * GIB, 16 * MIB, "m0")])
    ram = GuestRamMap(ctx, ioas, qmp, batch=4 * MIB)
    with pytest.raises(IommufdError) as ei:
        ram.map_all()
    assert ei.value.errno == "ENOMEM"
    assert sum(a.length for a in ctx.areas(ioas)) == 64 * MIB
    assert list(ram.mapped) == [0]
    assert ctx.check_hardware() == []


def test_bad_batch_refused() -> None:
    ctx, ioas = _ctx()
    with pytest.raises(ValueError, match="multiple of 4096"):
        GuestRamMap(ctx, ioas, _FakeQmp([]), batch=1000)


class _Events:
    def __init__(self) -> None:
        self.pending: list[dict[str, Any]] = []

    def events(self) -> list[dict[str, Any]]:
        out, self.pending = self.pending, []
        return out


def test_follow_syncs_only_after_an_event() -> None:
    ctx, ioas = _ctx()
    qmp = _FakeQmp([(0, 64 * MIB, "pc.ram"), (4 * GIB, 16 * MIB, "m0")])
    ram = GuestRamMap(ctx, ioas, qmp)
    ram.map_all()
    src = _Events()
    qmp.ranges = qmp.ranges[:1]  # the DIMM went away ...
    assert ram.follow(src) is None  # ... but nothing said so yet
    assert len(ctx.areas(ioas)) == 2
    src.pending = [{"event": "DEVICE_DELETED", "data": {"device": "dimm0"}}]
    res = ram.follow(src)
    assert res is not None and [r.name for r in res.removed] == ["m0"]
    assert [(a.iova, a.length) for a in ctx.areas(ioas)] == [(0, 64 * MIB)]
