"""Reconnect: a new context rebuilt from the real device's state (x-iommulab-query)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from testvm import ViommuVm, needs_viommu

from pyctl.iommufd import (
    NEST_PARENT,
    U64_MAX,
    HwState,
    InMemoryBackend,
    IommufdContext,
    IommulabHwptData,
    RebuildError,
    x86_device,
)
from pyctl.iommufd.objects import Device, HwptNested, HwptPaging, Ioas
from pyctl.iommufd.qmp_backend import QmpBackend
from pyctl.iommufd.uapi import HwptDataType

RW = 6
MIB = 1 << 20

needs_qemu = needs_viommu


@pytest.fixture
def vm() -> Iterator[ViommuVm]:
    with ViommuVm(devices=3) as v:
        yield v


def _shape(ctx: IommufdContext) -> list[tuple[object, ...]]:
    """Objects and relations with IOAS/DEVICE ids replaced by stable names."""
    objs = ctx.objects()
    dev_name = {o.id: o.name for o in objs.values() if isinstance(o, Device)}
    ioas_key = {
        o.id: tuple((a.iova, a.length, a.phys, a.read, a.write) for a in o.areas)
        for o in objs.values()
        if isinstance(o, Ioas)
    }
    out: list[tuple[object, ...]] = []
    for o in objs.values():
        if isinstance(o, HwptPaging):
            out.append(
                (
                    "paging",
                    o.id,
                    ioas_key[o.ioas_id],
                    o.nest_parent,
                    o.auto,
                    sorted(dev_name[d] for d in o.devices),
                    sorted(o.children),
                )
            )
        elif isinstance(o, HwptNested):
            out.append(
                ("nested", o.id, o.parent_id, o.s1_root, sorted(dev_name[d] for d in o.devices))
            )
        elif isinstance(o, Device):
            out.append(("device", o.name, o.hwpt_id))
        else:
            out.append(("ioas", ioas_key[o.id], sorted(o.hwpts)))
    return sorted(out, key=repr)


def _program(ctx: IommufdContext) -> dict[str, int]:
    a = ctx.ioas_alloc()
    b = ctx.ioas_alloc()
    d0, d1, d2 = ctx.bind("edu0"), ctx.bind("edu1"), ctx.bind("edu2")
    ctx.ioas_map(a, 0x100000, 2 * MIB, RW | 1, iova=0x200000)
    ctx.ioas_map(a, 0x800000, MIB, 4 | 1, iova=0x10000000)  # read-only
    auto = ctx.attach(d0, a)
    explicit = ctx.hwpt_alloc(d0, a)  # a second, device-less domain of IOAS a
    parent = ctx.hwpt_alloc(d1, b, flags=NEST_PARENT)
    ctx.ioas_map(b, 0x400000, 4 * MIB, RW)
    nested = ctx.hwpt_alloc(
        d1, parent, data_type=HwptDataType.IOMMU_HWPT_DATA_IOMMULAB, data=IommulabHwptData(0x9000)
    )
    ctx.attach(d1, nested)
    del d2  # bound, left blocked
    return {"a": a, "b": b, "auto": auto, "explicit": explicit, "parent": parent, "nested": nested}


@needs_qemu
def test_rebuild_reproduces_programmed_state(vm: ViommuVm) -> None:
    with QmpBackend(str(vm.qmp_path)) as hw:
        ctx = IommufdContext(hw)
        ids = _program(ctx)
        want = _shape(ctx)
        before = hw.query()
        pinned = ctx.pinned_pages()
        del ctx
    # a new control plane connects to the same QEMU
    with QmpBackend(str(vm.qmp_path)) as hw:
        ctx = IommufdContext.from_hardware(
            hw, shared=[[ids["auto"], ids["explicit"]]], blocked=["edu2"]
        )
        assert _shape(ctx) == want
        assert hw.query() == before  # rebuilding sent nothing that changes state
        assert ctx.check_hardware() == []
        assert ctx.pinned_pages() == pinned
        objs = ctx.objects()
        assert isinstance(objs[ids["parent"]], HwptPaging)
        assert objs[ids["parent"]].nest_parent  # type: ignore[union-attr]
        # the rebuilt model keeps working: map into the shared IOAS, it reaches both domains
        ioas_a = objs[ids["auto"]].ioas_id  # type: ignore[union-attr]
        iova = ctx.ioas_map(ioas_a, 0x2000000, MIB, RW)
        assert ctx.check_hardware() == []
        t = hw.translate(hw.device_info("edu0").device, iova + 0x10, "write")
        assert t.allowed and t.addr == 0x2000010
        # and tears everything down
        for d in [o for o in objs.values() if isinstance(o, Device)]:
            if d.hwpt_id is not None:
                ctx.detach(d.id)
        ctx.destroy(ids["nested"])
        ctx.destroy(ids["parent"])
        ctx.destroy(ids["explicit"])
        assert ctx.ioas_unmap(ioas_a, 0, U64_MAX) == 4 * MIB
        assert hw.query().domains == ()
        assert ctx.pinned_pages() == 0


@needs_qemu
def test_childless_nest_parent_must_be_named(vm: ViommuVm) -> None:
    with QmpBackend(str(vm.qmp_path)) as hw:
        ctx = IommufdContext(hw)
        ioas = ctx.ioas_alloc()
        dev = ctx.bind("edu0")
        parent = ctx.hwpt_alloc(dev, ioas, flags=NEST_PARENT)
        ctx.attach(dev, parent)
        # the device does not know the flag: unnamed, it looks like an automatic HWPT
        guess = IommufdContext.from_hardware(hw).objects()[parent]
        assert isinstance(guess, HwptPaging) and guess.auto and not guess.nest_parent
        again = IommufdContext.from_hardware(hw, nest_parents=[parent])
        assert _shape(again) == _shape(ctx)
        nested = again.hwpt_alloc(
            next(o.id for o in again.objects().values() if isinstance(o, Device)),
            parent,
            data_type=HwptDataType.IOMMU_HWPT_DATA_IOMMULAB,
            data=IommulabHwptData(0x5000),
        )
        assert again.check_hardware() == [] and nested not in ctx.objects()
        with pytest.raises(RebuildError, match="NEST_PARENT 99 is not a paging domain"):
            IommufdContext.from_hardware(hw, nest_parents=[99])


@needs_qemu
def test_rebuild_without_groups_gives_each_domain_its_ioas(vm: ViommuVm) -> None:
    with QmpBackend(str(vm.qmp_path)) as hw:
        ids = _program(IommufdContext(hw))
        ctx = IommufdContext.from_hardware(hw)
        objs = ctx.objects()
        assert objs[ids["auto"]].ioas_id != objs[ids["explicit"]].ioas_id  # type: ignore[union-attr]
        assert ctx.check_hardware() == []


@needs_qemu
def test_rebuild_mismatch_reported_not_guessed(vm: ViommuVm) -> None:
    with QmpBackend(str(vm.qmp_path)) as hw:
        ids = _program(IommufdContext(hw))
        # the two domains of IOAS b's and a's differ: they cannot share one IOAS
        with pytest.raises(RebuildError) as ei:
            IommufdContext.from_hardware(hw, shared=[[ids["auto"], ids["parent"]]])
        assert any("mappings differ" in p for p in ei.value.problems)
        # a nested domain cannot be grouped as a paging domain
        with pytest.raises(RebuildError) as ei:
            IommufdContext.from_hardware(hw, shared=[[ids["nested"]]])
        assert any("not a paging domain" in p for p in ei.value.problems)
        # edu0 is attached, not blocked
        with pytest.raises(RebuildError) as ei:
            IommufdContext.from_hardware(hw, blocked=["edu0"])
        assert any(
            "edu0 is to be bound blocked but is in mode domain" in p for p in ei.value.problems
        )
        # someone with the owner's token mapped the MSI window of edu0's domain behind
        # the model's back
        before = hw.query()
        hw.execute(
            "x-iommulab-map",
            {
                "iommu": "viommu0",
                "owner": hw.owner,
                "domain": ids["auto"],
                "mappings": [
                    {"iova": 0xFEE00000, "size": 0x1000, "addr": 0, "read": True, "write": True}
                ],
            },
        )
        with pytest.raises(RebuildError) as ei:
            IommufdContext.from_hardware(hw)
        assert any("0xfee00000" in p and "reserved region" in p for p in ei.value.problems)
        hw.unmap(ids["auto"], [(0xFEE00000, 0x1000)])
        assert hw.query() == before


class _Orphaned(InMemoryBackend):
    """A device state with a nested domain whose parent is gone (the real one refuses this)."""

    def query(self) -> HwState:
        s = super().query()
        return HwState(tuple(d for d in s.domains if d.type == "nested"), s.devices)


def test_rebuild_nested_without_parent_is_an_error() -> None:
    hw = _Orphaned([x86_device("d0")])
    ctx = IommufdContext(hw)
    dev = ctx.bind("d0")
    ioas = ctx.ioas_alloc()
    parent = ctx.hwpt_alloc(dev, ioas, flags=NEST_PARENT)
    nested = ctx.hwpt_alloc(
        dev, parent, data_type=HwptDataType.IOMMU_HWPT_DATA_IOMMULAB, data=IommulabHwptData(0x1000)
    )
    with pytest.raises(RebuildError) as ei:
        IommufdContext.from_hardware(hw)
    assert ei.value.errno == "EINVAL"
    assert ei.value.problems == [f"nested domain {nested}: its parent domain {parent} is missing"]
